//! The passthrough limit for the end-to-end benchmark (`benches/e2e/run.py`): the same client
//! library as streamscore (rdkafka 0.39, bundled librdkafka) doing only the Kafka part of its job.
//!
//! A `BaseConsumer` in a consumer group reads batches of up to 256 messages the way streamscore's
//! source does (each assigned partition routed to a fetch queue that is read in batches,
//! `streamscore::source::fetch`; the consumer queue polled for the group protocol) and hands
//! them to a `ThreadedProducer`, which produces the raw bytes (same key, same headers) to an output topic
//! the way streamscore's sink produces (`streamscore::sink::OutputTopic`: a topic handle taken
//! once; records without headers in runs of `rd_kafka_produce_batch` calls, one per output
//! partition, keyed records given the partition librdkafka's partitioner would pick; a record
//! with headers alone with the batch's one timestamp): no decode, no features, no inference, no encode. Delivery callbacks settle each batch; every
//! second the contiguous prefix of settled batches is committed with explicit offsets (as
//! streamscore's offset tracker does). The librdkafka settings are streamscore's
//! (`source::consumer_config`, `sink::producer_config`): `fetch.queue.backoff.ms=10`,
//! `enable.idempotence=true`, `linger.ms=5`, `queue.buffering.max.messages=1000000`,
//! cooperative-sticky assignment, no auto-commit, no auto offset store.
//!
//! ```text
//! cargo build --release --example passthrough
//! target/release/examples/passthrough --bootstrap 127.0.0.1:9092 --input transactions \
//!     --output transactions.copy --group passthrough --count 300000
//! ```
//!
//! It exits 0 once `--count` outputs are delivered and their offsets committed. While running it
//! prints `progress <consumed> <delivered> <unix-seconds>` lines about every 50 ms (read by the
//! harness), `ready` once the group has given it partitions, and at the end one line
//! `done {json}` with its own figures.
//!
//! `--latency` also measures each input's latency as streamscore's histograms do, for the
//! harness's half-load comparison (the latency a consumer that does no work has on the same
//! broker and machine): end to end from the input's Kafka timestamp, and processing from the
//! moment it was read, both to its batch's last acknowledgement (one clock reading per batch,
//! as streamscore settles a batch), in streamscore's own two histograms
//! (`streamscore::telemetry::EventLatency`: `streamscore_end_to_end_latency_seconds` and
//! `streamscore_processing_latency_seconds`), which the `done` line carries in the Prometheus
//! text format (`"metrics"`). Off by default: the throughput runs do not pay for it.
//!
//! Extra librdkafka properties: `-X key=value` (both clients), e.g. `-X session.timeout.ms=6000`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use streamscore::sink::{now_ms, OutgoingRecord, OutputTopic, RecordRun};
use streamscore::source::fetch::{FetchedMessage, Routing};
use streamscore::telemetry::EventLatency;

const BATCH: usize = 256;

#[derive(Parser)]
#[command(about = "Kafka passthrough (consume -> produce raw bytes -> commit), the benchmark's upper limit")]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    group: String,
    /// Exit after this many outputs are delivered and committed.
    #[arg(long)]
    count: u64,
    /// Measure each input's end-to-end and processing latency (see the module's doc).
    #[arg(long)]
    latency: bool,
    /// Extra librdkafka property for both clients, KEY=VALUE.
    #[arg(short = 'X', value_parser = parse_property)]
    property: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// One batch in flight: how many of its records still await a delivery report.
struct BatchAck {
    seq: u64,
    remaining: AtomicUsize,
    /// With `--latency`: when the batch was read and its inputs' Kafka timestamps (ms).
    times: Option<(Instant, Vec<i64>)>,
}

/// One batch in the tracker: (seq, next offset to commit per partition once it is settled, settled?).
type Pending = (u64, Vec<(i32, i64)>, bool);

/// Batches in consumption order; a prefix of settled ones can be committed.
#[derive(Default)]
struct Tracker {
    pending: VecDeque<Pending>,
    failed: bool,
}

impl Tracker {
    fn settle(&mut self, seq: u64) {
        if let Some(front) = self.pending.front() {
            let idx = (seq - front.0) as usize;
            if let Some(entry) = self.pending.get_mut(idx) {
                entry.2 = true;
            }
        }
    }

    /// Pops the settled prefix into `commit` (partition -> next offset).
    fn drain_settled(&mut self, commit: &mut BTreeMap<i32, i64>) -> bool {
        let mut moved = false;
        while self.pending.front().is_some_and(|b| b.2) {
            let (_, offsets, _) = self.pending.pop_front().expect("front exists");
            for (p, o) in offsets {
                let e = commit.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
            moved = true;
        }
        moved
    }
}

struct Ctx {
    tracker: Arc<Mutex<Tracker>>,
    delivered: Arc<AtomicU64>,
    latency: Option<Arc<EventLatency>>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Arc<BatchAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<BatchAck>) {
        if let Err((e, _)) = result {
            eprintln!("passthrough: delivery failed: {e}");
            self.tracker.lock().unwrap_or_else(|e| e.into_inner()).failed = true;
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if ack.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let (Some(latency), Some((read_at, timestamps))) = (&self.latency, &ack.times) {
                // As the sink settles a batch: one clock reading for all of its inputs.
                let (acked, now) = (Instant::now(), now_ms());
                let processing = acked.saturating_duration_since(*read_at).as_secs_f64();
                latency.end_to_end.record_batch(timestamps.iter().map(|t| (now - t).max(0) as f64 / 1000.0));
                latency.processing.record_batch(timestamps.iter().map(|_| processing));
            }
            self.tracker.lock().unwrap_or_else(|e| e.into_inner()).settle(ack.seq);
        }
    }
}

/// CPU seconds (utime + stime) of each thread of this process, summed by thread name with
/// trailing digits and dashes dropped (librdkafka names its broker threads after the broker).
fn thread_cpu_s() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_string();
        *out.entry(name).or_insert(0.0) += stat_cpu_s(&stat);
    }
    out
}

/// utime + stime of a `/proc/.../stat` line, in seconds; 0 where it does not parse.
fn stat_cpu_s(stat: &str) -> f64 {
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted after the command name; clock ticks are 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// utime + stime of this process (all threads), from /proc/self/stat; 0 where unavailable.
fn process_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0.0, |stat| stat_cpu_s(&stat))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passthrough: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &args.bootstrap)
        .set("group.id", &args.group)
        .set("client.id", "passthrough")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", "10");
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "passthrough")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &args.property {
        // Consumer-only properties would make the producer warn; route the usual ones.
        if k.starts_with("session.") || k.starts_with("heartbeat.") || k.starts_with("fetch.") {
            cc.set(k, v);
        } else {
            cc.set(k, v);
            pc.set(k, v);
        }
    }
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = args.latency.then(|| Arc::new(EventLatency::new()));
    let producer: Arc<ThreadedProducer<Ctx>> = Arc::new(
        pc.create_with_context(Ctx {
            tracker: tracker.clone(),
            delivered: delivered.clone(),
            latency: latency.clone(),
        })
        .context("creating the producer")?,
    );
    let output = OutputTopic::new(producer.clone(), &args.output).context("opening the output topic")?;
    let consumer: BaseConsumer<Routing> =
        cc.create_with_context(Routing::default()).context("creating the consumer")?;
    // Takes the fetch queue out before the consumer is dropped (librdkafka's destroy can hang
    // otherwise), on every way out of here.
    let _routed = consumer.context().installed(&consumer);
    consumer.subscribe(&[&args.input]).context("subscribing")?;

    let started = Instant::now();
    let mut first: Option<(Instant, f64, f64)> = None;
    let mut threads_first = BTreeMap::new();
    let mut consumed: u64 = 0;
    let mut seq: u64 = 0;
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut to_commit: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut last_progress = Instant::now();
    let mut ready = false;
    let stdout = std::io::stdout();

    loop {
        // The consumer queue: the group protocol (and a message of a partition not routed yet).
        let polled = consumer.poll(Duration::ZERO);
        if let Some(Err(e)) = &polled {
            eprintln!("passthrough: consumer error: {e}");
        }
        // A batch: wait briefly for a first message, then take what is already fetched.
        let mut fetch = consumer.context().queue();
        let wait = if matches!(polled, Some(Ok(_))) { Duration::ZERO } else { Duration::from_millis(10) };
        let fetched = fetch.as_mut().context("the fetch queue is gone")?.read(wait, BATCH);
        let mut batch: Vec<FetchedMessage<'_>> = Vec::with_capacity(fetched.len() + 1);
        if let Some(Ok(m)) = &polled {
            batch.push(FetchedMessage::from(m));
        }
        for m in fetched.iter() {
            match m.error() {
                None => batch.push(m),
                Some(e) => eprintln!("passthrough: consumer error: {e}"),
            }
        }
        if !batch.is_empty() {
            if first.is_none() {
                first = Some((Instant::now(), unix_now(), process_cpu_s()));
                threads_first = thread_cpu_s();
            }
            consumed += batch.len() as u64;
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for m in &batch {
                let e = next.entry(m.partition()).or_insert(m.offset() + 1);
                *e = (*e).max(m.offset() + 1);
            }
            let times = args.latency.then(|| {
                let stamps = batch.iter().filter_map(|m| m.timestamp().to_millis()).collect();
                (Instant::now(), stamps)
            });
            let ack = Arc::new(BatchAck { seq, remaining: AtomicUsize::new(batch.len()), times });
            tracker.lock().unwrap_or_else(|e| e.into_inner()).pending.push_back((
                seq,
                next.into_iter().collect(),
                false,
            ));
            seq += 1;
            // As the sink produces: records without headers in runs of one `rd_kafka_produce_batch`
            // call, a record with headers alone after the run so far, stamped with the batch's
            // one clock reading.
            let produced_at = now_ms();
            let mut run = RecordRun::with_capacity(batch.len());
            for m in &batch {
                match m.headers() {
                    None => run.push(m.key().into(), m.payload().into(), ack.clone()),
                    Some(headers) => {
                        if let Err((code, _)) = output.produce_run(&mut run, &[]) {
                            bail!("produce failed: {code}");
                        }
                        let record = OutgoingRecord {
                            key: m.key(),
                            payload: m.payload(),
                            headers: Some(&headers),
                            timestamp_ms: Some(produced_at),
                        };
                        if let Err((code, _)) = output.produce(record, ack.clone()) {
                            bail!("produce failed: {code}");
                        }
                    }
                }
            }
            if let Err((code, _)) = output.produce_run(&mut run, &[]) {
                bail!("produce failed: {code}");
            }
        }
        drop(fetched);
        drop(fetch);
        drop(polled);

        let done = delivered.load(Ordering::Relaxed) >= args.count;
        if done || last_commit.elapsed() >= Duration::from_secs(1) {
            let failed = {
                let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                t.drain_settled(&mut to_commit);
                t.failed
            };
            if failed {
                bail!("a delivery failed; not committing past it");
            }
            let changed: Vec<(i32, i64)> =
                to_commit.iter().filter(|(p, o)| committed.get(p) != Some(o)).map(|(p, o)| (*p, *o)).collect();
            if !changed.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &changed {
                    tpl.add_partition_offset(&args.input, *p, Offset::Offset(*o)).context("building the commit")?;
                }
                let mode = if done { CommitMode::Sync } else { CommitMode::Async };
                consumer.commit(&tpl, mode).context("committing offsets")?;
                committed.extend(changed);
            }
            last_commit = Instant::now();
            if done {
                let all_settled = tracker.lock().unwrap_or_else(|e| e.into_inner()).pending.is_empty();
                if all_settled {
                    break;
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(50) {
            last_progress = Instant::now();
            let mut out = stdout.lock();
            if !ready && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                ready = true;
                let _ = writeln!(out, "ready");
            }
            let _ = writeln!(out, "progress {consumed} {} {:.6}", delivered.load(Ordering::Relaxed), unix_now());
            let _ = out.flush();
        }
    }
    let t_done = unix_now();
    let delivered = delivered.load(Ordering::Relaxed);
    let (first_instant, t_first, cpu_first) = first.unwrap_or((started, t_done, 0.0));
    let secs = first_instant.elapsed().as_secs_f64().max(1e-9);
    // Each thread's CPU from the first message on (the harness reports it per event).
    let threads: BTreeMap<String, f64> = thread_cpu_s()
        .into_iter()
        .map(|(name, cpu)| {
            let since = cpu - threads_first.get(&name).copied().unwrap_or(0.0);
            (name, (since * 1000.0).round() / 1000.0)
        })
        .collect();
    let threads = serde_json::to_string(&threads).unwrap_or_else(|_| "{}".into());
    let latency = latency.map_or_else(String::new, |l| {
        let mut text = String::new();
        l.render(&mut text);
        format!(", \"metrics\": {}", serde_json::Value::String(text))
    });
    let mut out = stdout.lock();
    let _ = writeln!(out, "progress {consumed} {delivered} {t_done:.6}");
    let _ = writeln!(
        out,
        "done {{\"consumed\": {consumed}, \"delivered\": {delivered}, \"t_first\": {t_first:.6}, \"t_done\": {t_done:.6}, \"cpu_first\": {cpu_first:.3}, \"threads\": {threads}, \"events_per_s\": {:.1}{latency}}}",
        delivered as f64 / secs
    );
    let _ = out.flush();
    eprintln!(
        "passthrough: {delivered} delivered and committed in {secs:.2} s from the first message: {:.0} events/s",
        delivered as f64 / secs
    );
    producer.flush(Duration::from_secs(10)).ok();
    Ok(())
}
