//! Producing through a librdkafka topic handle taken once per topic: every record streamscore
//! produces (scored, dead-letter, shadow, drift and quality reports) goes this way.
//!
//! rdkafka's `BaseRecord` names its topic, so every record it sends costs a `CString` of the
//! name (an allocation and a free) and librdkafka's lookup of the topic by name under the
//! client-wide write lock: together ~15% of the sink thread in `perf`, at one record per input.
//! [`OutputTopic`] holds an `rd_kafka_topic_t` for the producer's lifetime and produces with
//! `rd_kafka_produceva` and that handle; everything else is what `BaseRecord` does (librdkafka
//! copies key, value and headers; the delivery opaque is an `Arc<Ack>` that the producer's
//! delivery callback gets back, exactly as for records sent through rdkafka). Records without
//! headers can go in runs ([`RecordRun`], [`OutputTopic::produce_run`]): one
//! `rd_kafka_produce_batch` call per output partition of a run instead of a
//! `rd_kafka_produceva` per record. Keyed records are given their partition, computed as
//! librdkafka's partitioner would ([`super::partition`]).

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;

use super::partition::{self, KeyPartitioner, PARTITION_UA};
use super::{Ack, SinkContext};
use crate::pipeline::PipelineError;

/// One record for [`OutputTopic::send`]; librdkafka copies all of it before `send` returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutgoingRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<&'a OwnedHeaders>,
    /// The record's timestamp (CreateTime), in ms since the epoch; `None`: librdkafka stamps
    /// the time of the call (a wall-clock read per record, which the sink spares by passing the
    /// batch's one reading).
    pub timestamp_ms: Option<i64>,
}

/// A producer's handle on one topic. Holds the producer, so the handle is released before the
/// producer can be dropped. Generic over the producer's context for the passthrough benchmark
/// (`examples/passthrough.rs`), which produces the way the sink does.
pub struct OutputTopic<C: ProducerContext + 'static = SinkContext> {
    producer: Arc<ThreadedProducer<C>>,
    rkt: NonNull<rd::rd_kafka_topic_t>,
    name: String,
    /// `None`: librdkafka partitions every record (see [`partition::topic_conf`]).
    keys: Option<KeyPartitioner>,
}

// SAFETY: librdkafka's topic handles are thread-safe (reference counted, used from any thread
// of the client); the handle is only passed to librdkafka calls. The producer is shared only
// when its context may be.
unsafe impl<C: ProducerContext + Send + Sync + 'static> Send for OutputTopic<C> {}
unsafe impl<C: ProducerContext + Send + Sync + 'static> Sync for OutputTopic<C> {}

impl<C: ProducerContext + 'static> OutputTopic<C> {
    /// Takes `producer`'s handle on topic `name` (its topic settings are the producer's
    /// defaults, as for records sent by name, with a partitioner callback that notes the
    /// partition count: [`partition::topic_conf`]).
    pub fn new(producer: Arc<ThreadedProducer<C>>, name: &str) -> Result<Self, PipelineError> {
        let c_name =
            CString::new(name).map_err(|_| PipelineError::Kafka(format!("topic name {name:?} contains a NUL byte")))?;
        let rk = producer.client().native_ptr();
        // SAFETY: a live client. The topic conf is handed to `rd_kafka_topic_new`, which takes
        // it over (also when it fails, or when this client already has a handle on `name`,
        // whose settings then stay: its partitioner never notes a count here, so `keys` never
        // learns one and librdkafka partitions every record, as before).
        let (conf, keys) = unsafe { partition::topic_conf(rk) };
        // SAFETY: a live client, a NUL-terminated name and a conf librdkafka takes over.
        let rkt = unsafe { rd::rd_kafka_topic_new(rk, c_name.as_ptr(), conf) };
        let rkt = NonNull::new(rkt).ok_or_else(|| {
            // SAFETY: reads this thread's last librdkafka error, set by the failed call above.
            let code = RDKafkaErrorCode::from(unsafe { rd::rd_kafka_last_error() });
            PipelineError::Kafka(format!("cannot open topic {name} for producing: {code}"))
        })?;
        Ok(OutputTopic { producer, rkt, name: name.to_owned(), keys })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enqueues one record, waiting while librdkafka's queue is full (backpressure from the
    /// broker). Any other refusal is returned with the opaque (no delivery report will come).
    pub fn produce(
        &self,
        record: OutgoingRecord<'_>,
        opaque: C::DeliveryOpaque,
    ) -> Result<(), (RDKafkaErrorCode, C::DeliveryOpaque)> {
        let mut opaque = opaque;
        let mut partition = self.partition_of(record.key);
        loop {
            match self.enqueue(&record, partition, opaque) {
                Err((RDKafkaErrorCode::QueueFull, back)) => {
                    opaque = back;
                    // The producer's own thread polls; give it time to drain deliveries.
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The topic has fewer partitions than last seen: librdkafka decides.
                Err((RDKafkaErrorCode::UnknownPartition, back)) if partition != PARTITION_UA => {
                    opaque = back;
                    partition = PARTITION_UA;
                }
                other => return other,
            }
        }
    }

    /// Test hook: the topic's partition count as librdkafka last used it; 0 while not known
    /// (or when librdkafka partitions every record of this topic).
    #[cfg(test)]
    pub fn known_partitions(&self) -> i32 {
        self.keys.map_or(0, |k| k.count())
    }

    /// The partition a record with `key` goes to, or [`PARTITION_UA`].
    fn partition_of(&self, key: Option<&[u8]>) -> i32 {
        self.keys.map_or(PARTITION_UA, |k| k.partition(self.rkt.as_ptr(), key))
    }
}

impl OutputTopic<SinkContext> {
    /// [`produce`](Self::produce) for the sink: a refused record, having no delivery report to
    /// come, marks its batch's ack failed.
    pub fn send(&self, record: OutgoingRecord<'_>, opaque: Arc<Ack>) -> Result<(), PipelineError> {
        self.produce(record, opaque).map_err(|(code, back)| {
            if let Ack::Batch(b) = &*back {
                b.failed.store(true, Ordering::Release);
            }
            PipelineError::Delivery(format!("cannot enqueue a record for topic {}: {code}", self.name))
        })
    }

    /// [`produce_run`](Self::produce_run) for the sink: records it refuses, having no delivery
    /// report to come, mark their batch's ack failed.
    pub fn send_run(&self, run: &mut RecordRun<'_, Arc<Ack>>, buffer: &[u8]) -> Result<(), PipelineError> {
        self.produce_run(run, buffer).map_err(|(code, refused)| {
            for back in &refused {
                if let Ack::Batch(b) = &**back {
                    b.failed.store(true, Ordering::Release);
                }
            }
            PipelineError::Delivery(format!(
                "cannot enqueue {} record(s) for topic {}: {code}",
                refused.len(),
                self.name
            ))
        })
    }

    /// Produces one drift report, drift alert or quality report of `model` `version`, keyed
    /// `model/version` (shadow results, keyed by their input's key, go through `send`).
    pub fn send_report(&self, model: &str, version: &str, payload: &[u8]) -> Result<(), PipelineError> {
        let key = format!("{model}/{version}");
        let record =
            OutgoingRecord { key: Some(key.as_bytes()), payload: Some(payload), headers: None, timestamp_ms: None };
        self.send(record, Arc::new(Ack::Monitoring))
    }
}

impl<C: ProducerContext + 'static> OutputTopic<C> {
    /// One `rd_kafka_produceva` call. On success librdkafka owns the opaque until the record's
    /// delivery report; on failure it is handed back.
    fn enqueue(
        &self,
        record: &OutgoingRecord<'_>,
        partition: i32,
        opaque: C::DeliveryOpaque,
    ) -> Result<(), (RDKafkaErrorCode, C::DeliveryOpaque)> {
        use rd::rd_kafka_vtype_t as V;
        let headers = record.headers.map_or(ptr::null_mut(), native_headers);
        let mem = |bytes: Option<&[u8]>| {
            let (ptr, size) = raw(bytes);
            rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 { ptr, size }
        };
        let opaque_ptr = opaque.into_ptr();
        let vus = [
            vu(V::RD_KAFKA_VTYPE_RKT, rd::rd_kafka_vu_s__bindgen_ty_1 { rkt: self.rkt.as_ptr() }),
            vu(V::RD_KAFKA_VTYPE_PARTITION, rd::rd_kafka_vu_s__bindgen_ty_1 { i32_: partition }),
            vu(V::RD_KAFKA_VTYPE_MSGFLAGS, rd::rd_kafka_vu_s__bindgen_ty_1 { i: rd::RD_KAFKA_MSG_F_COPY }),
            vu(V::RD_KAFKA_VTYPE_VALUE, rd::rd_kafka_vu_s__bindgen_ty_1 { mem: mem(record.payload) }),
            vu(V::RD_KAFKA_VTYPE_KEY, rd::rd_kafka_vu_s__bindgen_ty_1 { mem: mem(record.key) }),
            vu(V::RD_KAFKA_VTYPE_OPAQUE, rd::rd_kafka_vu_s__bindgen_ty_1 { ptr: opaque_ptr }),
            // 0: librdkafka takes the current time.
            vu(V::RD_KAFKA_VTYPE_TIMESTAMP, rd::rd_kafka_vu_s__bindgen_ty_1 { i64_: record.timestamp_ms.unwrap_or(0) }),
            // A null list: no headers (what rdkafka's own send passes for a record without).
            vu(V::RD_KAFKA_VTYPE_HEADERS, rd::rd_kafka_vu_s__bindgen_ty_1 { headers }),
        ];
        // SAFETY: a live client (held in `self`) and topic handle; key and value outlive the
        // call and are copied (MSG_F_COPY); `headers` is ours until the call succeeds.
        let error = unsafe { rd::rd_kafka_produceva(self.producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: `error` is the call's error object, destroyed once read; on failure the
        // headers list stays the caller's (librdkafka's contract for producev/produceva), and
        // the opaque was not taken.
        let code = unsafe {
            let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
            rd::rd_kafka_error_destroy(error);
            if !headers.is_null() {
                rd::rd_kafka_headers_destroy(headers);
            }
            code
        };
        // SAFETY: `opaque_ptr` came from `into_ptr` above and librdkafka did not keep it.
        Err((code, unsafe { C::DeliveryOpaque::from_ptr(opaque_ptr) }))
    }
}

/// Where a record's key or value lies for [`OutputTopic::produce_run`].
#[derive(Debug, Clone)]
pub enum RunBytes<'a> {
    /// No key / a null value.
    Absent,
    /// Borrowed bytes (the run must not outlive them).
    Slice(&'a [u8]),
    /// A range of the buffer handed to `produce_run` (bytes encoded into it while the run grew).
    InBuffer(std::ops::Range<usize>),
}

impl RunBytes<'_> {
    /// The bytes, the [`InBuffer`](RunBytes::InBuffer) ones taken from `buffer`.
    fn resolve<'b>(&'b self, buffer: &'b [u8]) -> Option<&'b [u8]> {
        match self {
            RunBytes::Absent => None,
            RunBytes::Slice(s) => Some(s),
            RunBytes::InBuffer(r) => Some(&buffer[r.clone()]),
        }
    }
}

/// A key or value as librdkafka takes it: pointer and length, null for none.
fn raw(bytes: Option<&[u8]>) -> (*mut c_void, usize) {
    bytes.map_or((ptr::null_mut(), 0), |b| (b.as_ptr() as *mut c_void, b.len()))
}

impl<'a> From<Option<&'a [u8]>> for RunBytes<'a> {
    fn from(bytes: Option<&'a [u8]>) -> Self {
        bytes.map_or(RunBytes::Absent, RunBytes::Slice)
    }
}

/// Records without headers gathered for [`OutputTopic::produce_run`], in order: one
/// `rd_kafka_produce_batch` call per output partition. Producing them one `rd_kafka_produceva`
/// each took the topic's read lock, a clock reading and the argument list's parsing once per
/// record; a batch call takes the lock and the clock once. A record with headers (which that
/// call cannot carry) goes through [`produce`](OutputTopic::produce) after the run so far is
/// produced, so records leave in order. Records of a run carry no timestamp of their own:
/// librdkafka stamps them with its clock at the call.
pub struct RecordRun<'a, O> {
    records: Vec<(RunBytes<'a>, RunBytes<'a>, O)>,
    native: Vec<rd::rd_kafka_message_t>,
}

impl<'a, O: IntoOpaque> RecordRun<'a, O> {
    pub fn with_capacity(n: usize) -> Self {
        RecordRun { records: Vec::with_capacity(n), native: Vec::with_capacity(n) }
    }

    pub fn push(&mut self, key: RunBytes<'a>, value: RunBytes<'a>, opaque: O) {
        self.records.push((key, value, opaque));
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

impl<C: ProducerContext + 'static> OutputTopic<C> {
    /// Produces the records of `run` with `rd_kafka_produce_batch` (key and value copied,
    /// partitioned as [`produce`](Self::produce) partitions; each partition's records in run
    /// order) and empties it; `buffer` holds the bytes the run's [`RunBytes::InBuffer`] ranges
    /// name. Waits while librdkafka's queue is full, then goes on from the first record it did
    /// not take. Records it refuses for any other reason are handed back with the first such
    /// refusal's code (their opaques will get no delivery report); the records it took will.
    pub fn produce_run(
        &self,
        run: &mut RecordRun<'_, C::DeliveryOpaque>,
        buffer: &[u8],
    ) -> Result<(), (RDKafkaErrorCode, Vec<C::DeliveryOpaque>)> {
        if run.records.is_empty() {
            return Ok(());
        }
        run.native.clear();
        for (key, value, opaque) in run.records.drain(..) {
            let ((payload, len), (key, key_len)) = (raw(value.resolve(buffer)), raw(key.resolve(buffer)));
            run.native.push(rd::rd_kafka_message_t {
                err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                rkt: ptr::null_mut(),
                partition: PARTITION_UA,
                payload,
                len,
                key,
                key_len,
                offset: 0,
                _private: opaque.into_ptr(),
            });
        }
        let mut refused: Vec<C::DeliveryOpaque> = Vec::new();
        let mut first_refusal = None;
        // The run's first keyed record (and the records without a key before it) go first, left
        // to librdkafka's partitioner, which notes the topic's partition count as it places that
        // record; the rest are placed with that count.
        let probe_end = match self.keys {
            Some(_) => run.native.iter().position(|m| m.key_len > 0).map_or(run.native.len(), |i| i + 1),
            None => run.native.len(),
        };
        let (probe, rest) = run.native.split_at_mut(probe_end);
        self.enqueue_run(probe, &mut refused, &mut first_refusal);
        if let Some(keys) = self.keys {
            let count = keys.count();
            for m in rest.iter_mut() {
                // A key's bytes outlive the run (borrowed, or in `buffer`).
                m.partition = keys.partition_raw(self.rkt.as_ptr(), m.key, m.key_len, count);
            }
        }
        // Each stretch of records with a partition is grouped by partition (a stable sort: a
        // partition's records stay in run order), to go in one call per partition; records left
        // to librdkafka stay where they are, between the stretches. So every partition's
        // records are enqueued in run order, whoever picks the partition.
        for stretch in rest.split_mut(|m| m.partition == PARTITION_UA) {
            stretch.sort_by_key(|m| m.partition);
        }
        for records in rest.chunk_by_mut(|a, b| a.partition == b.partition) {
            self.enqueue_run(records, &mut refused, &mut first_refusal);
        }
        run.native.clear();
        match first_refusal {
            None => Ok(()),
            Some(code) => Err((code, refused)),
        }
    }

    /// Enqueues `records`, all of one partition or all left to librdkafka, with as many
    /// `rd_kafka_produce_batch` calls as a full queue takes. A call with a partition takes the
    /// partition once, enqueues without the partitioner and refuses all of its records if the
    /// partition is unknown (librdkafka's per-record partition flag would leak each such
    /// record).
    fn enqueue_run(
        &self,
        records: &mut [rd::rd_kafka_message_t],
        refused: &mut Vec<C::DeliveryOpaque>,
        first_refusal: &mut Option<RDKafkaErrorCode>,
    ) {
        let Some(first) = records.first() else { return };
        let mut partition = first.partition;
        let mut from = 0;
        while from < records.len() {
            let pending = &mut records[from..];
            // SAFETY: a live topic handle (held in `self`); every key and value points at bytes
            // that outlive the call (borrowed for the run's lifetime, or in the run's buffer)
            // and are copied (MSG_F_COPY); librdkafka takes each opaque of a record it enqueues.
            unsafe {
                rd::rd_kafka_produce_batch(
                    self.rkt.as_ptr(),
                    partition,
                    rd::RD_KAFKA_MSG_F_COPY,
                    pending.as_mut_ptr(),
                    pending.len() as i32,
                );
            }
            let mut resume_at = None;
            for (i, m) in pending.iter().enumerate() {
                match RDKafkaErrorCode::from(m.err) {
                    RDKafkaErrorCode::NoError => {}
                    // From the first full-queue refusal on, librdkafka took nothing more.
                    RDKafkaErrorCode::QueueFull => {
                        resume_at = Some(from + i);
                        // The producer's own thread polls; give it time to drain deliveries.
                        std::thread::sleep(Duration::from_millis(1));
                        break;
                    }
                    // The topic has fewer partitions than last seen (librdkafka took none of
                    // these records): they go to its partitioner.
                    RDKafkaErrorCode::UnknownPartition if partition != PARTITION_UA => {
                        resume_at = Some(from + i);
                        partition = PARTITION_UA;
                        break;
                    }
                    code => {
                        first_refusal.get_or_insert(code);
                        // SAFETY: from `into_ptr` in `produce_run`; librdkafka refused the
                        // record and did not keep its opaque.
                        refused.push(unsafe { C::DeliveryOpaque::from_ptr(m._private) });
                    }
                }
            }
            match resume_at {
                // The call sets every record's `err` again, so the rest is passed as it is.
                Some(at) => from = at,
                None => break,
            }
        }
    }
}

impl<C: ProducerContext + 'static> Drop for OutputTopic<C> {
    fn drop(&mut self) {
        // SAFETY: the handle was taken in `new` and is released once; records still in flight
        // hold their own references inside librdkafka.
        unsafe { rd::rd_kafka_topic_destroy(self.rkt.as_ptr()) }
    }
}

fn vu(vtype: rd::rd_kafka_vtype_t, u: rd::rd_kafka_vu_s__bindgen_ty_1) -> rd::rd_kafka_vu_t {
    rd::rd_kafka_vu_t { vtype, u }
}

/// A new librdkafka headers list with `headers`' entries (names and values copied), for a
/// record that takes ownership of it.
fn native_headers(headers: &OwnedHeaders) -> *mut rd::rd_kafka_headers_t {
    // SAFETY: a fresh list, filled with lengths given explicitly (names need no NUL).
    unsafe {
        let list = rd::rd_kafka_headers_new(headers.count());
        for h in headers.iter() {
            let (value, size) = match h.value {
                Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
                None => (ptr::null(), 0),
            };
            rd::rd_kafka_header_add(list, h.key.as_ptr().cast(), h.key.len() as isize, value, size);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    //! The wrapper against librdkafka's in-process mock cluster; the sink's records through it
    //! (keys, headers, dead letters, shadow results) are checked end to end on the test broker
    //! by the integration tests.
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::OnceLock;
    use std::time::Instant;

    use rdkafka::consumer::BaseConsumer;
    use rdkafka::message::Header;
    use rdkafka::producer::BaseProducer;
    use rdkafka::{Message, Timestamp};

    use super::*;
    use crate::batcher::BatchTiming;
    use crate::config::Config;
    use crate::outcome::DeadLetterReason;
    use crate::pipeline::Shared;
    use crate::sink::{create_producer, now_ms, BatchAck, OutputProducer};
    use crate::telemetry::RunStats;
    use crate::testing::{assigned_consumer, assigned_partitions, mock_cluster, mock_cluster_partitioned};

    /// A mock cluster with topic `out` (the owner must outlive its clients) and a producer
    /// made as the sink makes its own, with `extra` lines appended to the config.
    fn setup(extra: &str) -> (BaseProducer, String, Arc<OutputProducer>) {
        let (owner, bootstrap) = mock_cluster(&["out"]);
        let producer = sink_producer(&bootstrap, extra);
        (owner, bootstrap, producer)
    }

    /// A producer made as the sink makes its own, with `extra` lines appended to the config.
    fn sink_producer(bootstrap: &str, extra: &str) -> Arc<OutputProducer> {
        let cfg = Config::from_toml_str(&format!("[kafka]\nbootstrap_servers = \"{bootstrap}\"\n{extra}"), "test", &[])
            .expect("config");
        let producer =
            create_producer(&cfg, Shared::new(Arc::new(RunStats::default()), None), false).expect("producer");
        Arc::new(producer)
    }

    fn batch_ack() -> Arc<Ack> {
        Arc::new(Ack::Batch(BatchAck {
            seq: 1,
            remaining: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            scored: 1,
            dead_lettered: [0; DeadLetterReason::ALL.len()],
            timestamps: Vec::new(),
            received: vec![Instant::now()],
            inputs: 1,
            timing: BatchTiming::default(),
            produced: OnceLock::new(),
        }))
    }

    #[test]
    fn records_leave_with_their_key_value_and_headers_and_every_ack_comes_back() {
        let (_owner, bootstrap, producer) = setup("");
        let topic = OutputTopic::new(producer.clone(), "out").expect("handle");
        assert_eq!(topic.name(), "out");
        let ack = Arc::new(Ack::Monitoring);
        let headers = OwnedHeaders::new()
            .insert(Header { key: "trace", value: Some("abc") })
            .insert(Header { key: "null-valued", value: None::<&[u8]> })
            .insert(Header { key: "trace", value: Some(&[0u8, 1, 2][..]) });
        let records = [
            OutgoingRecord {
                key: Some(b"k1"),
                payload: Some(b"v1"),
                headers: Some(&headers),
                timestamp_ms: Some(1_700_000_000_123),
            },
            OutgoingRecord { key: None, payload: None, headers: None, timestamp_ms: None },
            OutgoingRecord {
                key: Some(b""),
                payload: Some(b"v3"),
                headers: Some(&OwnedHeaders::new()),
                timestamp_ms: Some(1),
            },
        ];
        let before_ms = now_ms();
        for r in records {
            topic.send(r, ack.clone()).expect("enqueued");
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        // Each record's opaque went to librdkafka and came back through the delivery callback.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&ack) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&ack), 1, "every delivery report released its ack");

        let consumer = assigned_consumer(&bootstrap, "topic-handle-test", &["out"]);
        let (mut got, mut stamps) = (Vec::new(), Vec::new());
        while got.len() < 3 && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let hs: Vec<(String, Option<Vec<u8>>)> = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
                        .unwrap_or_default();
                    got.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec), hs));
                    stamps.push(m.timestamp());
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None => {}
            }
        }
        let bytes = |b: &[u8]| Some(b.to_vec());
        assert_eq!(
            got,
            vec![
                (
                    bytes(b"k1"),
                    bytes(b"v1"),
                    vec![
                        ("trace".to_owned(), bytes(b"abc")),
                        ("null-valued".to_owned(), None),
                        ("trace".to_owned(), bytes(&[0, 1, 2])),
                    ]
                ),
                (None, None, vec![]),
                (bytes(b""), bytes(b"v3"), vec![]),
            ]
        );
        // A given timestamp is the record's CreateTime; without one librdkafka stamps the send.
        assert_eq!(stamps[0], Timestamp::CreateTime(1_700_000_000_123));
        assert_eq!(stamps[2], Timestamp::CreateTime(1));
        let Timestamp::CreateTime(t) = stamps[1] else { panic!("{:?}", stamps[1]) };
        assert!((before_ms..=now_ms()).contains(&t), "{t} is not the time of the send");
    }

    #[test]
    fn a_refused_record_fails_its_batch_and_hands_its_ack_back() {
        let (_owner, _bootstrap, producer) = setup("[kafka.producer]\n\"message.max.bytes\" = \"1000\"\n");
        let topic = OutputTopic::new(producer.clone(), "out").expect("handle");
        let ack = batch_ack();
        let headers = OwnedHeaders::new().insert(Header { key: "h", value: Some("v") });
        let big = vec![7u8; 5_000];
        let err = topic
            .send(
                OutgoingRecord { key: Some(b"k"), payload: Some(&big), headers: Some(&headers), timestamp_ms: None },
                ack.clone(),
            )
            .expect_err("over message.max.bytes");
        let text = err.to_string();
        assert!(text.contains("topic out") && text.to_lowercase().contains("too large"), "{text}");
        assert_eq!(Arc::strong_count(&ack), 1, "the opaque came back");
        let Ack::Batch(b) = &*ack else { unreachable!() };
        assert!(b.failed.load(Ordering::Acquire), "no delivery report will come: the batch is failed");
        // The handle still works after a refusal.
        topic
            .send(OutgoingRecord { key: None, payload: Some(b"small"), headers: None, timestamp_ms: None }, ack.clone())
            .expect("enqueued");
        producer.flush(Duration::from_secs(10)).expect("flushed");
    }

    /// Polls `consumer` until `n` records arrived (or 10 s passed): (key, value, timestamp).
    #[allow(clippy::type_complexity)]
    fn consume(consumer: &BaseConsumer, n: usize) -> Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Timestamp)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => got.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec), m.timestamp())),
                Some(Err(e)) => panic!("consume: {e}"),
                None => {}
            }
        }
        got
    }

    fn wait_released(ack: &Arc<Ack>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(ack) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(ack), 1, "every delivery report released its ack");
    }

    /// A run mixing values in the caller's buffer, borrowed values, absent keys and values: every
    /// record arrives once with its key and value, per key (one partition) in run order, stamped
    /// by librdkafka at the call; every opaque comes back through the delivery callback.
    #[test]
    fn a_run_leaves_in_order_with_its_keys_and_values_and_every_ack_comes_back() {
        let (_owner, bootstrap, producer) = setup("");
        let topic = OutputTopic::new(producer.clone(), "out").expect("handle");
        let ack = batch_ack();
        let n = 300;
        let keys: Vec<Vec<u8>> = (0..3).map(|k| format!("key-{k}").into_bytes()).collect();
        let borrowed: Vec<Vec<u8>> = (0..n).map(|i| format!("borrowed-{i}").into_bytes()).collect();
        let mut buffer = Vec::new();
        let mut run = RecordRun::with_capacity(n);
        let mut want = Vec::new();
        for i in 0..n {
            let key = if i % 10 == 9 { None } else { Some(&keys[i % 3][..]) };
            let value = match i % 3 {
                0 => {
                    let start = buffer.len();
                    buffer.extend_from_slice(format!("buffered-{i}").as_bytes());
                    (RunBytes::InBuffer(start..buffer.len()), Some(buffer[start..].to_vec()))
                }
                1 => (RunBytes::Slice(&borrowed[i][..]), Some(borrowed[i].clone())),
                _ => (RunBytes::Absent, None),
            };
            run.push(key.into(), value.0, ack.clone());
            want.push((key.map(<[u8]>::to_vec), value.1));
        }
        assert_eq!(run.len(), n);
        let before_ms = now_ms();
        topic.produce_run(&mut run, &buffer).map_err(|(code, _)| code).expect("all enqueued");
        let after_ms = now_ms();
        assert!(run.is_empty(), "the run is emptied");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        wait_released(&ack);

        let consumer = assigned_consumer(&bootstrap, "run-test", &["out"]);
        let got = consume(&consumer, n);
        assert_eq!(got.len(), n);
        for (_, _, t) in &got {
            let Timestamp::CreateTime(t) = *t else { panic!("{t:?}") };
            assert!((before_ms..=after_ms).contains(&t), "{t} is not the time of the call");
        }
        // Records of one key share a partition: there they arrive in run order.
        let got: Vec<_> = got.into_iter().map(|(k, v, _)| (k, v)).collect();
        for key in keys.iter().map(|k| Some(k.clone())) {
            let sent: Vec<_> = want.iter().filter(|(k, _)| *k == key).collect();
            let arrived: Vec<_> = got.iter().filter(|(k, _)| *k == key).collect();
            assert_eq!(arrived, sent, "records of {key:?}");
        }
        assert_every_record_once(got, want);
    }

    /// `got` holds the records of `sent`, each once, in any order.
    fn assert_every_record_once<T: Ord + std::fmt::Debug>(mut got: Vec<T>, mut sent: Vec<T>) {
        got.sort();
        sent.sort();
        assert_eq!(got, sent, "every record once");
    }

    /// A queue that holds 10 records: the run waits for room and goes on from the first record
    /// librdkafka did not take, so all arrive, once each, in order.
    #[test]
    fn a_run_waits_while_the_queue_is_full() {
        let (_owner, bootstrap, producer) = setup("[kafka.producer]\n\"queue.buffering.max.messages\" = \"10\"\n");
        let topic = OutputTopic::new(producer.clone(), "out").expect("handle");
        let ack = batch_ack();
        let values: Vec<Vec<u8>> = (0..200).map(|i| format!("{i:05}").into_bytes()).collect();
        let mut run = RecordRun::with_capacity(values.len());
        for v in &values {
            run.push(RunBytes::Slice(b"one-key"), RunBytes::Slice(v), ack.clone());
        }
        topic.produce_run(&mut run, &[]).map_err(|(code, _)| code).expect("all enqueued, after waiting");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        wait_released(&ack);
        let consumer = assigned_consumer(&bootstrap, "run-full-test", &["out"]);
        let got: Vec<Vec<u8>> = consume(&consumer, values.len()).into_iter().filter_map(|(_, v, _)| v).collect();
        assert_eq!(got, values);
    }

    /// A record librdkafka refuses is handed back (no delivery report will come for it) and its
    /// batch is failed; the run's other records, before and after it, are produced.
    #[test]
    fn a_refused_record_of_a_run_is_handed_back_and_fails_its_batch() {
        let (_owner, bootstrap, producer) = setup("[kafka.producer]\n\"message.max.bytes\" = \"1000\"\n");
        let topic = OutputTopic::new(producer.clone(), "out").expect("handle");
        let ack = batch_ack();
        let big = vec![7u8; 5_000];
        let mut run = RecordRun::with_capacity(3);
        run.push(RunBytes::Slice(b"k"), RunBytes::Slice(b"first"), ack.clone());
        run.push(RunBytes::Slice(b"k"), RunBytes::Slice(&big), ack.clone());
        run.push(RunBytes::Slice(b"k"), RunBytes::Slice(b"third"), ack.clone());
        let err = topic.send_run(&mut run, &[]).expect_err("over message.max.bytes");
        let text = err.to_string();
        assert!(text.contains("1 record(s) for topic out") && text.to_lowercase().contains("too large"), "{text}");
        let Ack::Batch(b) = &*ack else { unreachable!() };
        assert!(b.failed.load(Ordering::Acquire), "no delivery report will come: the batch is failed");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        wait_released(&ack);
        let consumer = assigned_consumer(&bootstrap, "run-refused-test", &["out"]);
        let got: Vec<Vec<u8>> = consume(&consumer, 2).into_iter().filter_map(|(_, v, _)| v).collect();
        assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()]);
    }

    /// A record as sent (key, value) and as consumed from `spread` (partition, key, value).
    type Sent = (Option<Vec<u8>>, Vec<u8>);
    type Got = (i32, Option<Vec<u8>>, Vec<u8>);

    /// Partitions of the topic `spread` in [`spread_setup`].
    const SPREAD: i32 = 7;

    /// A mock cluster with topic `spread` of [`SPREAD`] partitions and [`sink_producer`].
    fn spread_setup(extra: &str) -> (BaseProducer, String, Arc<OutputProducer>) {
        let (owner, bootstrap) = mock_cluster_partitioned(&[("spread", SPREAD)]);
        let producer = sink_producer(&bootstrap, extra);
        (owner, bootstrap, producer)
    }

    fn consume_spread(bootstrap: &str, n: usize) -> Vec<Got> {
        let consumer = assigned_partitions(bootstrap, "spread-test", &[("spread", SPREAD)]);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => got.push((
                    m.partition(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec).expect("a value"),
                )),
                Some(Err(e)) => panic!("consume: {e}"),
                None => {}
            }
        }
        got
    }

    /// CRC-32 (IEEE, as zlib computes it), bit by bit: librdkafka's `consistent` hash.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// The Java client's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), made positive
    /// as its partitioner does.
    fn java_murmur2(data: &[u8]) -> u32 {
        const M: u32 = 0x5bd1_e995;
        let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
        let mut chunks = data.chunks_exact(4);
        for c in &mut chunks {
            let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            k = k.wrapping_mul(M);
            k ^= k >> 24;
            k = k.wrapping_mul(M);
            h = h.wrapping_mul(M) ^ k;
        }
        let rest = chunks.remainder();
        if rest.len() >= 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        if !rest.is_empty() {
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        h ^= h >> 13;
        h = h.wrapping_mul(M);
        h ^= h >> 15;
        h & 0x7fff_ffff
    }

    /// Run `r`'s records: values `r*1000 + i`; keys `acct-*` (37 of them), and some null and
    /// some empty keys among them.
    fn spread_run(r: usize, n: usize) -> Vec<Sent> {
        (0..n)
            .map(|i| {
                let key = match i % 12 {
                    11 => None,
                    5 => Some(Vec::new()),
                    _ => Some(format!("acct-{}", i % 37).into_bytes()),
                };
                (key, format!("{:06}", r * 1000 + i).into_bytes())
            })
            .collect()
    }

    /// Produces `records` as one run and waits until librdkafka holds none of them.
    fn produce_spread(topic: &OutputTopic, producer: &OutputProducer, records: &[Sent]) {
        let ack = batch_ack();
        let mut run = RecordRun::with_capacity(records.len());
        for (k, v) in records {
            run.push(k.as_deref().into(), RunBytes::Slice(v), ack.clone());
        }
        topic.produce_run(&mut run, &[]).map_err(|(code, _)| code).expect("all enqueued");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        wait_released(&ack);
    }

    /// Every record with a non-empty key is in partition `hash(key) % SPREAD`.
    fn assert_placed(got: &[Got], hash: fn(&[u8]) -> u32) {
        for (p, k, v) in got {
            if let Some(k) = k.as_deref().filter(|k| !k.is_empty()) {
                let want = (hash(k) % SPREAD as u32) as i32;
                assert_eq!(*p, want, "record {} with key {}", String::from_utf8_lossy(v), String::from_utf8_lossy(k));
            }
        }
    }

    /// Per partition, records arrive in the order they were produced (values rise), and every
    /// record arrives once.
    fn assert_once_and_in_order(got: &[Got], sent: &[Sent]) {
        let mut last: std::collections::HashMap<i32, &[u8]> = std::collections::HashMap::new();
        for (p, _, v) in got {
            if let Some(prev) = last.insert(*p, v) {
                assert!(
                    prev < &v[..],
                    "partition {p}: {:?} after {:?}",
                    String::from_utf8_lossy(v),
                    String::from_utf8_lossy(prev)
                );
            }
        }
        assert_every_record_once(got.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect(), sent.to_vec());
    }

    /// Keyed records go to the partition librdkafka's default partitioner (`consistent_random`:
    /// CRC-32 of the key) picks, whether librdkafka partitions them (the first run, before it
    /// knows the topic; each run's first keyed record) or `produce_run` / `produce` does (once
    /// the partitioner callback has noted the count); records without a key or with an empty
    /// one are left to librdkafka; per partition, records arrive in produce order; librdkafka
    /// holds no record afterwards.
    #[test]
    fn keyed_records_go_where_librdkafkas_partitioner_puts_them() {
        let (_owner, bootstrap, producer) = spread_setup("");
        let topic = OutputTopic::new(producer.clone(), "spread").expect("handle");
        assert_eq!(topic.known_partitions(), 0, "nothing partitioned yet");
        let first = spread_run(0, 240);
        produce_spread(&topic, &producer, &first);
        assert_eq!(topic.known_partitions(), SPREAD, "the partitioner callback noted the count");
        let second = spread_run(1, 240);
        produce_spread(&topic, &producer, &second);
        // Records with headers, one `produceva` each, with their partition given.
        let headers = OwnedHeaders::new().insert(Header { key: "h", value: Some("v") });
        let mut singles = Vec::new();
        for i in 0..20 {
            let key = format!("acct-{i}").into_bytes();
            let value = format!("{:06}", 2000 + i).into_bytes();
            let record =
                OutgoingRecord { key: Some(&key), payload: Some(&value), headers: Some(&headers), timestamp_ms: None };
            topic.send(record, batch_ack()).expect("enqueued");
            singles.push((Some(key), value));
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        assert_eq!(producer.in_flight_count(), 0, "librdkafka holds no record");

        let sent: Vec<_> = first.into_iter().chain(second).chain(singles).collect();
        let got = consume_spread(&bootstrap, sent.len());
        assert_eq!(got.len(), sent.len());
        assert_placed(&got, crc32);
        assert_once_and_in_order(&got, &sent);
    }

    /// With `partitioner = "murmur2_random"` (the Java client's placement) keyed records go
    /// where the Java client's partitioner would put them; with a partitioner that maps records
    /// without a key to one partition, or spreads every record at random, librdkafka
    /// partitions every record.
    #[test]
    fn the_configured_partitioner_is_followed() {
        let (_owner, bootstrap, producer) = spread_setup("[kafka.producer]\npartitioner = \"murmur2_random\"\n");
        let topic = OutputTopic::new(producer.clone(), "spread").expect("handle");
        let runs: Vec<_> = (0..2).map(|r| spread_run(r, 120)).collect();
        for run in &runs {
            produce_spread(&topic, &producer, run);
        }
        assert_eq!(topic.known_partitions(), SPREAD);
        let sent: Vec<_> = runs.concat();
        let got = consume_spread(&bootstrap, sent.len());
        assert_placed(&got, java_murmur2);
        assert_once_and_in_order(&got, &sent);

        for setting in ["random", "consistent", "murmur2"] {
            let (_owner, _bootstrap, producer) =
                spread_setup(&format!("[kafka.producer]\npartitioner = \"{setting}\"\n"));
            let topic = OutputTopic::new(producer.clone(), "spread").expect("handle");
            produce_spread(&topic, &producer, &spread_run(0, 60));
            assert_eq!(topic.known_partitions(), 0, "{setting}: left to librdkafka");
        }
    }

    /// A partition count above the topic's (a topic made again with fewer partitions): a run
    /// places its records with the count librdkafka passes for its first keyed record, and
    /// records for partitions that no longer exist go to librdkafka's partitioner instead of
    /// being refused (a run's records given such a partition, and a record alone); librdkafka
    /// holds none of them afterwards.
    #[test]
    fn records_for_a_partition_that_is_gone_go_to_librdkafkas_partitioner() {
        let (_owner, bootstrap, producer) = spread_setup("");
        let topic = OutputTopic::new(producer.clone(), "spread").expect("handle");
        let first = spread_run(0, 60);
        produce_spread(&topic, &producer, &first);
        let keys = topic.keys.expect("default partitioner followed");
        let stale = 3 * SPREAD;
        let beyond = |k: &[u8]| crc32(k) % stale as u32 >= SPREAD as u32;

        keys.pretend_count(stale);
        let second = spread_run(1, 240);
        assert!(second.iter().filter(|(k, _)| k.as_deref().is_some_and(|k| !k.is_empty() && beyond(k))).count() > 20);
        produce_spread(&topic, &producer, &second);
        assert_eq!(topic.known_partitions(), SPREAD, "the run's first keyed record noted the real count");

        // Records given a partition the topic lacks, as a stale count would give them.
        let third: Vec<(Vec<u8>, Vec<u8>)> = (0..)
            .map(|i| format!("gone-{i}").into_bytes())
            .filter(|k| beyond(k))
            .take(30)
            .enumerate()
            .map(|(i, k)| (k, format!("{:06}", 2000 + i).into_bytes()))
            .collect();
        let ack = batch_ack();
        let mut native: Vec<rd::rd_kafka_message_t> = third
            .iter()
            .map(|(k, v)| rd::rd_kafka_message_t {
                err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                rkt: ptr::null_mut(),
                partition: (crc32(k) % stale as u32) as i32,
                payload: v.as_ptr() as *mut c_void,
                len: v.len(),
                key: k.as_ptr() as *mut c_void,
                key_len: k.len(),
                offset: 0,
                _private: ack.clone().into_ptr(),
            })
            .collect();
        let (mut refused, mut first_refusal) = (Vec::new(), None);
        for records in native.chunk_by_mut(|a, b| a.partition == b.partition) {
            topic.enqueue_run(records, &mut refused, &mut first_refusal);
        }
        assert!(refused.is_empty() && first_refusal.is_none(), "refused: {first_refusal:?}");

        keys.pretend_count(stale);
        let key = (0..).map(|i| format!("single-{i}").into_bytes()).find(|k| beyond(k)).expect("a key");
        let value = b"003000".to_vec();
        topic
            .send(
                OutgoingRecord { key: Some(&key), payload: Some(&value), headers: None, timestamp_ms: None },
                ack.clone(),
            )
            .expect("enqueued");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        wait_released(&ack);
        assert_eq!(producer.in_flight_count(), 0, "librdkafka holds no record");

        let sent: Vec<_> = first
            .into_iter()
            .chain(second)
            .chain(third.into_iter().map(|(k, v)| (Some(k), v)))
            .chain([(Some(key), value)])
            .collect();
        let got = consume_spread(&bootstrap, sent.len());
        assert_placed(&got, crc32);
        assert_once_and_in_order(&got, &sent);
    }
}
