//! Criterion benchmarks of the per-event hot path, in pipeline order: decode, feature
//! extraction, batching, cache, inference, drift, the label join, encoding of the scored record.
//!
//! Every benchmark reports throughput in elements, one element being one event (one row), so
//! criterion prints events/s. Inputs come from the seeded synthetic generator (`synth`), framed
//! exactly as the pipeline receives them (Confluent header, local schema id 1 →
//! `schemas/transaction.avsc`), so the numbers are reproducible run to run.
//!
//! Run: `make bench` (sets `ORT_DYLIB_PATH`, so `model/infer/*` runs too), or
//! `cargo bench --bench hot_path [-- FILTER]`. See `benches/README.md`.
//!
//! Without `--bench` on the command line (that is, under `cargo test --all-targets`) this binary
//! does not hand its arguments to criterion: it runs every case once as a smoke test and ignores
//! libtest's flags (`make test` passes `--test-threads=N`, which criterion would reject).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};

use streamscore::batcher::{Batch, Entry, EntryKind};
use streamscore::cache::{Lookup, PredictionCache};
use streamscore::codec::{
    encode_scored, parse_schema, write_frame_header, Decoder, LastPlan, SchemaStore, ScoredRecord,
};
use streamscore::config::{CacheAdmission, Config};
use streamscore::drift::DriftAccumulator;
use streamscore::features::{FeatureExtractor, IdArena, RowIdentity};
use streamscore::model::manifest::Manifest;
use streamscore::model::{Model, ModelInfo};
use streamscore::quality::{JoinLimits, QualityTracker};
use streamscore::synth::{encode_transaction, Generator};

use apache_avro::types::Value;

/// Distinct synthetic events pre-generated for the per-event benchmarks.
const EVENTS: usize = 1024;
/// Rows per batch for `drift/observe` and `batcher/fill_256`.
const BATCH_ROWS: usize = 256;
/// Batch sizes for `model/infer`.
const INFER_SIZES: [usize; 4] = [1, 64, 256, 1024];
/// Generator seed and clock, fixed so every run sees the same events.
const SEED: u64 = 0x5EED_2024;
const NOW_MS: i64 = 1_700_000_000_000;

/// Default measurement settings for every group: modest, so `make bench` finishes in a couple of
/// minutes on a 2-core machine. Set before `configure_from_args`, so command-line flags override.
const WARM_UP: Duration = Duration::from_secs(1);
const MEASUREMENT: Duration = Duration::from_secs(3);
const SAMPLES: usize = 20;

/// One benchmark: `run` processes `events` events per call.
struct Case {
    /// Benchmark id within its group (`decode`, `infer/64`, ...).
    id: BenchmarkId,
    /// The full name, `group/id`, for the smoke-test output and filter.
    name: String,
    events: u64,
    run: Box<dyn FnMut()>,
}

impl Case {
    fn new(group: &str, function: &str, param: Option<usize>, events: usize, run: impl FnMut() + 'static) -> Case {
        let (id, name) = match param {
            Some(p) => (BenchmarkId::new(function, p), format!("{group}/{function}/{p}")),
            None => (BenchmarkId::from_parameter(function), format!("{group}/{function}")),
        };
        Case { id, name, events: events as u64, run: Box::new(run) }
    }
}

/// Everything the cases share, built once: configuration, schemas, manifest, synthetic events.
struct Fixture {
    config: Config,
    decoder: Arc<Decoder>,
    /// The same store, decoding straight to feature rows (`Decoder::decode_features`).
    fast_decoder: Arc<Decoder>,
    extractor: Arc<FeatureExtractor>,
    manifest: Manifest,
    model_dir: PathBuf,
    /// Framed payloads (header + Avro body), as read from the input topic.
    payloads: Arc<Vec<Vec<u8>>>,
    /// The payloads decoded to the reader schema.
    records: Arc<Vec<Value>>,
    /// Identities and feature rows extracted from `records`.
    identities: Arc<Vec<RowIdentity>>,
    /// `EVENTS * F` row-major, as the batcher lays them out.
    rows: Arc<Vec<f32>>,
    missing: Arc<Vec<bool>>,
    width: usize,
}

/// `path` under the crate root when relative (the defaults are relative to it).
fn in_crate(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }
}

impl Fixture {
    fn build() -> Fixture {
        let mut config = Config::from_toml_str("", "bench", &[]).expect("the default configuration is valid");
        config.model.dir = in_crate(&config.model.dir);
        let model_dir = config.model.dir.clone();

        let reader_path = in_crate(&config.schemas.reader_schema);
        let reader_json = std::fs::read_to_string(&reader_path)
            .unwrap_or_else(|e| panic!("cannot read the reader schema {}: {e}", reader_path.display()));
        let reader = parse_schema(&reader_json).expect("the reader schema parses");
        let local: BTreeMap<u32, PathBuf> = config.schemas.local.iter().map(|(&id, p)| (id, in_crate(p))).collect();
        assert!(local.contains_key(&1), "the default configuration maps local schema id 1");
        let store = SchemaStore::new(reader, &local, None, None).expect("schema store with local schemas");
        let decoder = Decoder::new(Arc::new(store), config.schemas.max_message_bytes);

        let manifest = Manifest::from_dir(&model_dir)
            .unwrap_or_else(|e| panic!("cannot read the model manifest in {}: {e}", model_dir.display()));
        let extractor =
            FeatureExtractor::new(&manifest, decoder.store().reader()).expect("manifest fits the reader schema");
        let width = extractor.num_columns();
        let fast_decoder = Decoder::with_features(
            decoder.store().clone(),
            config.schemas.max_message_bytes,
            &manifest,
            Arc::new(
                FeatureExtractor::new(&manifest, decoder.store().reader()).expect("manifest fits the reader schema"),
            ),
        );

        let mut generator = Generator::new(SEED, NOW_MS);
        let payloads: Vec<Vec<u8>> = (0..EVENTS)
            .map(|_| {
                let tx = generator.next_transaction();
                let mut out = Vec::with_capacity(256);
                write_frame_header(&mut out, 1);
                encode_transaction(&tx, &mut out);
                out
            })
            .collect();
        let records: Vec<Value> = payloads
            .iter()
            .map(|p| decoder.decode(p).unwrap_or_else(|r| panic!("a synthetic event does not decode: {r:?}")))
            .collect();
        let mut rows = vec![0.0f32; EVENTS * width];
        let mut missing = vec![false; EVENTS * width];
        let identities: Vec<RowIdentity> = records
            .iter()
            .zip(rows.chunks_exact_mut(width).zip(missing.chunks_exact_mut(width)))
            .map(|(rec, (row, miss))| {
                extractor
                    .extract(rec, row, miss)
                    .unwrap_or_else(|r| panic!("a synthetic event is rejected by the feature stage: {r:?}"))
            })
            .collect();

        Fixture {
            config,
            decoder: Arc::new(decoder),
            fast_decoder: Arc::new(fast_decoder),
            extractor: Arc::new(extractor),
            manifest,
            model_dir,
            payloads: Arc::new(payloads),
            records: Arc::new(records),
            identities: Arc::new(identities),
            rows: Arc::new(rows),
            missing: Arc::new(missing),
            width,
        }
    }
}

/// `codec/decode`, `codec/decode_features_fast` and `codec/encode_scored`.
fn codec_cases(fx: &Fixture) -> Vec<Case> {
    let decoder = fx.decoder.clone();
    let payloads = fx.payloads.clone();
    let decode = Case::new("codec", "decode", None, EVENTS, move || {
        for p in payloads.iter() {
            let value = decoder.decode(black_box(p)).expect("synthetic events decode");
            black_box(value);
        }
    });

    // Payload → feature row in one step (compare with `codec/decode` + `features/extract`);
    // the rows must equal the generic path's.
    let fast_decoder = fx.fast_decoder.clone();
    let payloads = fx.payloads.clone();
    let (rows, width) = (fx.rows.clone(), fx.width);
    let mut row = vec![0.0f32; width];
    let mut missing = vec![false; width];
    for (p, expected) in payloads.iter().zip(rows.chunks_exact(width)) {
        fast_decoder.decode_features(p, &mut row, &mut missing).expect("synthetic events decode");
        assert_eq!(row, expected, "the fast path's row differs from decode + extract");
    }
    assert_eq!(fast_decoder.is_fast(1), Some(true), "the synthetic events' schema takes the fast path");
    let decode_features = Case::new("codec", "decode_features_fast", None, EVENTS, move || {
        for p in payloads.iter() {
            let identity =
                fast_decoder.decode_features(black_box(p), &mut row, &mut missing).expect("synthetic events decode");
            black_box((&identity, row.as_slice()));
        }
    });

    // As the source decodes: the plan of the last schema id kept, the ids stored in a batch's
    // arena (cleared every 256 records, as batches are).
    let into_decoder = fx.fast_decoder.clone();
    let payloads = fx.payloads.clone();
    let mut row = vec![0.0f32; width];
    let mut missing = vec![false; width];
    let mut last = LastPlan::default();
    let mut ids = IdArena::default();
    let decode_into = Case::new("codec", "decode_features_into", None, EVENTS, move || {
        for (i, p) in payloads.iter().enumerate() {
            if i % 256 == 0 {
                ids.clear();
            }
            let spans = into_decoder
                .decode_features_into(&mut last, black_box(p), &mut row, &mut missing, &mut ids)
                .expect("synthetic events decode");
            black_box((&spans, row.as_slice()));
        }
    });

    // One reused output buffer, cleared per record, as the sink does.
    let identities = fx.identities.clone();
    let model_name = fx.manifest.name.clone();
    let model_version = fx.manifest.version.clone();
    let threshold = fx.manifest.threshold;
    let schema_id = fx.config.schemas.scored_schema_id;
    let mut out = Vec::with_capacity(512);
    let encode = Case::new("codec", "encode_scored", None, EVENTS, move || {
        for (i, id) in identities.iter().enumerate() {
            let score = (i % 100) as f32 / 100.0;
            let rec = ScoredRecord {
                event_id: &id.event_id,
                transaction_id: &id.transaction_id,
                model_name: &model_name,
                model_version: &model_version,
                score,
                label: score >= threshold,
                threshold,
                cache_hit: i % 4 == 0,
                source_topic: "transactions",
                source_partition: (i % 12) as i32,
                source_offset: i as i64,
                event_time_ms: id.event_time_ms,
                scored_at_ms: NOW_MS,
            };
            out.clear();
            encode_scored(&mut out, schema_id, black_box(&rec));
            black_box(out.as_slice());
        }
    });
    vec![decode, decode_features, decode_into, encode]
}

/// `features/extract`: decoded records into one reused row buffer.
fn features_cases(fx: &Fixture) -> Vec<Case> {
    let extractor = fx.extractor.clone();
    let records = fx.records.clone();
    let mut row = vec![0.0f32; fx.width];
    let mut missing = vec![false; fx.width];
    vec![Case::new("features", "extract", None, EVENTS, move || {
        for rec in records.iter() {
            let identity = extractor.extract(black_box(rec), &mut row, &mut missing).expect("synthetic events extract");
            black_box((&identity, row.as_slice()));
        }
    })]
}

/// `cache/key_and_lookup/{always,seen_twice}`: key + lookup per row, insert when admitted (as
/// `Scorer::score` does); half the rows hit (seen and inserted beforehand), half are rows never
/// seen before (inserted under `always`, only remembered under `seen_twice`).
fn cache_cases(fx: &Fixture) -> Vec<Case> {
    [CacheAdmission::Always, CacheAdmission::SeenTwice]
        .into_iter()
        .map(|admission| {
            let mut cfg = fx.config.cache.clone();
            cfg.admission = admission;
            let mut cache = PredictionCache::new(&cfg);
            assert!(cache.enabled(), "the default configuration enables the cache");
            let version_id = 0x00C0_FFEE_u64;
            let width = fx.width;
            let rows = fx.rows.clone();
            let hot = EVENTS / 2;
            for (i, row) in rows.chunks_exact(width).take(hot).enumerate() {
                let key = cache.key(version_id, row);
                while cache.lookup(&key, row) != (Lookup::Miss { admit: true }) {}
                cache.insert(key, row, i as f32 / hot as f32);
            }
            let mut fresh = rows[..width].to_vec();
            let mut counter: u64 = 0;
            let name = match admission {
                CacheAdmission::Always => "key_and_lookup/always",
                CacheAdmission::SeenTwice => "key_and_lookup/seen_twice",
            };
            Case::new("cache", name, None, EVENTS, move || {
                for i in 0..EVENTS {
                    let row: &[f32] = if i % 2 == 0 {
                        let j = i / 2;
                        &rows[j * width..(j + 1) * width]
                    } else {
                        // A row never seen before: two columns carry a counter (exact in f32 below 2^24).
                        counter += 1;
                        fresh[width - 2] = (counter >> 20) as f32;
                        fresh[width - 1] = (counter & 0xF_FFFF) as f32;
                        &fresh
                    };
                    let key = cache.key(version_id, black_box(row));
                    match cache.lookup(&key, row) {
                        Lookup::Hit(score) => {
                            black_box(score);
                        }
                        Lookup::Miss { admit: true } => cache.insert(key, row, 0.5),
                        Lookup::Miss { admit: false } => {}
                    }
                }
            })
        })
        .collect()
}

/// `drift/observe`: one 256-row scored batch into the accumulator.
fn drift_cases(fx: &Fixture) -> Vec<Case> {
    let mut acc = DriftAccumulator::new(&fx.manifest);
    assert_eq!(acc.num_columns(), fx.width, "drift columns = feature columns");
    let n = BATCH_ROWS * fx.width;
    let rows = fx.rows[..n].to_vec();
    let missing = fx.missing[..n].to_vec();
    let scores: Vec<f32> = (0..BATCH_ROWS).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
    vec![Case::new("drift", "observe", None, BATCH_ROWS, move || {
        acc.observe(black_box(&rows), black_box(&missing), black_box(&scores));
    })]
}

/// `quality/observe_256`: the label join's per-event cost on the inference thread
/// (`[quality]` on): one 256-row scored batch's predictions remembered (keyed hash of the event
/// id, one map insert each). The clock advances 1 ms per batch against a 1 s TTL, so slices
/// rotate and expire as in steady state.
fn quality_cases(fx: &Fixture) -> Vec<Case> {
    let info = Arc::new(ModelInfo {
        name: "fraud_mlp".into(),
        version: "1".into(),
        version_id: 1,
        threshold: 0.5,
        num_columns: fx.width,
        execution_provider: "cpu",
    });
    let limits =
        JoinLimits { prediction_ttl_ms: 1_000, max_predictions: 1_000_000, label_grace_ms: 0, max_waiting_labels: 0 };
    let mut tracker = QualityTracker::new(limits);
    let batches: Vec<Batch> = fx
        .identities
        .chunks(BATCH_ROWS)
        .filter(|c| c.len() == BATCH_ROWS)
        .map(|ids| {
            let mut batch = Batch::new(fx.width, BATCH_ROWS);
            for (i, identity) in ids.iter().enumerate() {
                let (row, _, _, ids) = batch.push_row_with_ids();
                let identity = ids.store(identity.borrowed());
                let topic = batch.topic_id(&Arc::from("transactions"));
                batch.push_entry(
                    Entry {
                        topic,
                        partition: 0,
                        offset: i as i64,
                        epoch: 0,
                        key: None,
                        headers: None,
                        timestamp_ms: None,
                        kind: EntryKind::Row { row, identity },
                    },
                    std::time::Instant::now(),
                );
                batch.scores.push(((i * 37) % 101) as f32 / 100.0);
                batch.row_version.push(0);
            }
            batch.versions = vec![info.clone()];
            batch
        })
        .collect();
    let mut now = NOW_MS;
    vec![Case::new("quality", "observe_256", None, BATCH_ROWS, move || {
        now += 1;
        tracker.observe_batch(black_box(&batches[(now as usize) % batches.len()]), now);
    })]
}

/// `batcher/fill_256`: 256 × (push_row, copy the row and its missing flags in), then clear.
fn batcher_cases(fx: &Fixture) -> Vec<Case> {
    let width = fx.width;
    let rows = fx.rows.clone();
    let missing = fx.missing.clone();
    let mut batch = Batch::new(width, BATCH_ROWS);
    vec![Case::new("batcher", "fill_256", None, BATCH_ROWS, move || {
        for i in 0..BATCH_ROWS {
            let (_, row, miss) = batch.push_row();
            row[..width].copy_from_slice(&rows[i * width..(i + 1) * width]);
            miss[..width].copy_from_slice(&missing[i * width..(i + 1) * width]);
        }
        black_box(batch.features.as_slice());
        batch.clear();
    })]
}

/// `model/infer/{1,64,256,1024}`: one ONNX Runtime call per batch. Needs ONNX Runtime
/// (`ORT_DYLIB_PATH`); without it the cases are skipped, with a line saying so.
fn model_cases(fx: &Fixture) -> Vec<Case> {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => {}
        _ => {
            println!(
                "model/infer: skipped: ORT_DYLIB_PATH is not set, so ONNX Runtime cannot be loaded \
                 (`make bench` sets it to the virtualenv's libonnxruntime)"
            );
            return Vec::new();
        }
    }
    let mut cfg = fx.config.model.clone();
    cfg.dir = fx.model_dir.clone();
    let model = Model::load(&cfg).unwrap_or_else(|e| panic!("cannot load the model in {}: {e}", cfg.dir.display()));
    assert_eq!(model.info.num_columns, fx.width, "model columns = feature columns");
    let model = Rc::new(RefCell::new(model));

    // Random rows drawn within each column's observed range (the MLP's cost does not depend
    // on the values, but this keeps them finite and plausible).
    let width = fx.width;
    let max_n = *INFER_SIZES.iter().max().unwrap();
    let mut state: u64 = SEED;
    let mut next = move || {
        // xorshift64*: deterministic, no extra dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    let (mut lo, mut hi) = (vec![f32::MAX; width], vec![f32::MIN; width]);
    for row in fx.rows.chunks_exact(width) {
        for c in 0..width {
            lo[c] = lo[c].min(row[c]);
            hi[c] = hi[c].max(row[c]);
        }
    }
    let rows: Rc<Vec<f32>> =
        Rc::new((0..max_n * width).map(|k| lo[k % width] + next() * (hi[k % width] - lo[k % width])).collect());

    INFER_SIZES
        .iter()
        .map(|&n| {
            let model = model.clone();
            let rows = rows.clone();
            let mut out = Vec::with_capacity(n);
            Case::new("model", "infer", Some(n), n, move || {
                model.borrow_mut().infer(black_box(&rows[..n * width]), n, &mut out).expect("inference succeeds");
                black_box(out.as_slice());
            })
        })
        .collect()
}

fn all_groups() -> Vec<(&'static str, Vec<Case>)> {
    let fx = Fixture::build();
    vec![
        ("codec", codec_cases(&fx)),
        ("features", features_cases(&fx)),
        ("cache", cache_cases(&fx)),
        ("drift", drift_cases(&fx)),
        ("quality", quality_cases(&fx)),
        ("batcher", batcher_cases(&fx)),
        ("model", model_cases(&fx)),
    ]
}

/// libtest flags that take a value (so the value is not a name filter).
const LIBTEST_VALUE_FLAGS: &[&str] =
    &["--test-threads", "--skip", "--format", "--color", "--logfile", "-Z", "--shuffle-seed"];

/// Test mode (`cargo test --all-targets`): every case once, honouring libtest-style name filters.
fn smoke_test(args: &[String]) {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut list = false;
    let mut exact = false;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--list" {
            list = true;
        } else if a == "--exact" {
            exact = true;
        } else if a == "--ignored" {
            // libtest: run only ignored tests. No case here is ignored.
            return;
        } else if a == "--skip" {
            skips.extend(it.next().cloned());
        } else if LIBTEST_VALUE_FLAGS.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let matches = |name: &str, pattern: &str| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    let selected = |name: &str| {
        (filters.is_empty() || filters.iter().any(|f| matches(name, f))) && !skips.iter().any(|s| matches(name, s))
    };
    let mut names: Vec<String> = [
        "codec/decode",
        "codec/decode_features_fast",
        "codec/decode_features_into",
        "codec/encode_scored",
        "features/extract",
        "cache/key_and_lookup",
        "drift/observe",
        "quality/observe_256",
        "batcher/fill_256",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend(INFER_SIZES.iter().map(|n| format!("model/infer/{n}")));
    names.retain(|n| selected(n));
    if list {
        // Listing needs neither ONNX Runtime nor the fixture.
        for name in &names {
            println!("{name}: benchmark");
        }
        return;
    }
    if names.is_empty() {
        // A filter meant for other test targets: nothing to set up.
        return;
    }
    for (_, cases) in all_groups() {
        for mut case in cases {
            if selected(&case.name) {
                (case.run)();
                println!("Testing {} ({} events)\nSuccess", case.name, case.events);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        smoke_test(&args);
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES)
        .configure_from_args();
    for (group_name, cases) in all_groups() {
        if cases.is_empty() {
            continue;
        }
        // The group inherits the defaults set above, so `--warm-up-time`, `--measurement-time`
        // and `--sample-size` on the command line still apply.
        let mut group = criterion.benchmark_group(group_name);
        for mut case in cases {
            group.throughput(Throughput::Elements(case.events));
            group.bench_function(case.id, |b| b.iter(|| (case.run)()));
        }
        group.finish();
    }
    criterion.final_summary();
}
