//! The pipeline's inference stage in isolation, swept over batch sizes: what one
//! `Scorer::score` call costs on CPU or on a GPU execution provider (`benches/gpu.sh` runs it
//! next to ONNX Runtime alone from Python and prints both in one table).
//!
//! It builds the stage exactly as `pipeline::run` does (the default configuration, `Model::load`,
//! `Scorer::new`) with the prediction cache disabled, so every row of every call goes to ONNX
//! Runtime, and fills each `Batch` through `Batch::push_row` as the feature stage does. The rows
//! are random but plausible (one category per one-hot group, about 10% missing values, numbers
//! inside the manifest's reference histogram), drawn once per batch size with a fixed seed: the
//! same rows are scored on every call, which does not matter to a dense model.
//!
//! ```text
//! cargo build --release --example infer_sweep
//! ORT_DYLIB_PATH=.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \
//!     target/release/examples/infer_sweep --provider cpu --sizes 1,64,1024 --seconds-per-size 1
//! ```
//!
//! Per batch size: a warm-up (the first calls at a new size are slow, on a GPU much more so),
//! then calls until `--seconds-per-size` have passed and at least `--min-calls` were made. Each
//! call is timed on its own: mean, p50 and p99 µs per call, rows/s and ns per row. The provider
//! reported is the one ONNX Runtime actually runs (`ModelInfo::execution_provider`), which is
//! `cpu` when a GPU provider could not be registered (streamscore then logs a warning and falls
//! back). On a GPU provider, every batch size is also scored once on a CPU session of the same
//! model and the largest score difference is reported (`max_abs_diff_vs_cpu`).
//!
//! Output: a markdown table on stdout, or with `--json` one JSON object per batch size.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use streamscore::batcher::Batch;
use streamscore::cache::PredictionCache;
use streamscore::config::{Config, ExecutionProvider};
use streamscore::model::manifest::Manifest;
use streamscore::model::{init_onnxruntime, Model, Scorer};

/// The name this program's rows carry in the combined table.
const CONTENDER: &str = "streamscore inference stage";
const DEFAULT_SIZES: &str = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl Provider {
    fn execution_provider(self) -> ExecutionProvider {
        match self {
            Provider::Cpu => ExecutionProvider::Cpu,
            Provider::Cuda => ExecutionProvider::Cuda,
            Provider::Tensorrt => ExecutionProvider::TensorRt,
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Sweeps the inference stage (Scorer::score, cache off) over batch sizes on one execution provider")]
struct Args {
    /// Execution provider to ask for (`model.execution_provider`); the active one is reported.
    #[arg(long, value_enum, default_value = "cpu")]
    provider: Provider,
    /// GPU ordinal (`model.device_id`).
    #[arg(long, default_value_t = 0)]
    device_id: i32,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SIZES)]
    sizes: Vec<usize>,
    /// Measured time per batch size (after the warm-up).
    #[arg(long, default_value_t = 1.0)]
    seconds_per_size: f64,
    /// Warm-up time per batch size.
    #[arg(long, default_value_t = 0.2)]
    warmup_seconds: f64,
    /// At least this many measured calls per batch size, however long they take.
    #[arg(long, default_value_t = 20)]
    min_calls: usize,
    /// ONNX Runtime intra-op threads (`model.intra_op_threads`; streamscore's default is 1).
    #[arg(long, default_value_t = 1)]
    intra_op_threads: usize,
    /// CUDA: let ONNX Runtime use TF32 tensor cores (`model.cuda_tf32`; off by default).
    #[arg(long)]
    cuda_tf32: bool,
    /// Model directory (manifest.json + model file).
    #[arg(long, default_value = "models/fraud_mlp/1")]
    model_dir: PathBuf,
    /// Seed of the random rows.
    #[arg(long, default_value_t = 20_240_601)]
    seed: u64,
    /// One JSON object per batch size instead of a markdown table.
    #[arg(long)]
    json: bool,
}

/// What one batch size cost.
struct Point {
    batch: usize,
    calls: usize,
    measured: Duration,
    /// Per-call wall times, sorted.
    calls_ns: Vec<u64>,
    /// Time inside the ONNX Runtime call alone (`ScoreCounts::inference`), summed.
    ort: Duration,
    max_abs_diff_vs_cpu: Option<f32>,
}

impl Point {
    fn us_mean(&self) -> f64 {
        self.measured.as_secs_f64() * 1e6 / self.calls as f64
    }
    fn us_quantile(&self, q: f64) -> f64 {
        // Nearest rank.
        let rank = ((q * self.calls_ns.len() as f64).ceil() as usize).clamp(1, self.calls_ns.len());
        self.calls_ns[rank - 1] as f64 / 1e3
    }
    fn rows_per_s(&self) -> f64 {
        (self.batch * self.calls) as f64 / self.measured.as_secs_f64()
    }
    fn ns_per_row(&self) -> f64 {
        self.measured.as_secs_f64() * 1e9 / (self.batch * self.calls) as f64
    }
    fn ort_us_mean(&self) -> f64 {
        self.ort.as_secs_f64() * 1e6 / self.calls as f64
    }
}

fn main() -> ExitCode {
    // streamscore reports a GPU fallback through `tracing`: show warnings unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infer_sweep: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.sizes.is_empty() || args.sizes.contains(&0) {
        bail!("--sizes must list batch sizes of at least 1");
    }
    if !(args.seconds_per_size > 0.0 && args.warmup_seconds >= 0.0) {
        bail!("--seconds-per-size must be > 0 and --warmup-seconds >= 0");
    }
    let mut config = Config::from_toml_str("", "infer_sweep", &[]).context("the default configuration")?;
    config.model.dir = args.model_dir.clone();
    config.model.intra_op_threads = args.intra_op_threads;
    config.model.device_id = args.device_id;
    config.model.cuda_tf32 = args.cuda_tf32;
    config.model.execution_provider = args.provider.execution_provider();
    // Every row must reach ONNX Runtime: no cache.
    config.cache.enabled = false;

    // Fails with a message that names ORT_DYLIB_PATH when the library is missing.
    init_onnxruntime(config.model.onnxruntime_library.as_deref())?;
    let ort_library = std::env::var("ORT_DYLIB_PATH").unwrap_or_default();
    let loading = Instant::now();
    let model = Model::load(&config.model).with_context(|| format!("loading {}", args.model_dir.display()))?;
    let load_s = loading.elapsed().as_secs_f64();
    let active = model.info.execution_provider;
    let width = model.info.num_columns;
    let manifest = model.manifest.clone();
    let mut scorer = Scorer::new(model, PredictionCache::new(&config.cache));
    // A CPU session of the same model, to check a GPU's scores.
    let mut reference = if active == "cpu" {
        None
    } else {
        let mut cpu = config.model.clone();
        cpu.execution_provider = ExecutionProvider::Cpu;
        Some(Model::load(&cpu).context("loading the CPU reference session")?)
    };

    let per_size = args.warmup_seconds + args.seconds_per_size;
    eprintln!(
        "infer_sweep: model {} {} ({width} columns), provider requested {} active {active}, {} intra-op thread(s), \
         session ready in {load_s:.2} s; {} sizes × ≥ {per_size:.1} s ≈ {:.0} s",
        manifest.name,
        manifest.version,
        args.provider.execution_provider().as_str(),
        args.intra_op_threads,
        args.sizes.len(),
        per_size * args.sizes.len() as f64,
    );
    if !args.json {
        println!("| contender | provider (requested → active) | batch | calls | µs/call mean | p50 | p99 | rows/s | ns/row |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    }

    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut scratch = Vec::new();
    for &n in &args.sizes {
        let mut batch = Batch::new(width, n);
        for _ in 0..n {
            let (_, row, missing) = batch.push_row();
            fill_row(&manifest, &mut rng, row, missing);
        }
        let mut point = measure(&args, &mut scorer, &mut batch, n)?;
        if let Some(cpu) = reference.as_mut() {
            cpu.infer(&batch.features, n, &mut scratch)?;
            point.max_abs_diff_vs_cpu =
                Some(scratch.iter().zip(&batch.scores).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
        }
        if args.json {
            let line = json!({
                "contender": CONTENDER,
                "variant": "Scorer::score",
                "provider_requested": args.provider.execution_provider().as_str(),
                "provider_active": active,
                "device_id": args.device_id,
                "intra_op_threads": args.intra_op_threads,
                "cuda_tf32": args.cuda_tf32,
                "batch": n,
                "calls": point.calls,
                "seconds": point.measured.as_secs_f64(),
                "us_per_call_mean": point.us_mean(),
                "us_per_call_p50": point.us_quantile(0.50),
                "us_per_call_p99": point.us_quantile(0.99),
                "ort_call_us_mean": point.ort_us_mean(),
                "rows_per_s": point.rows_per_s(),
                "ns_per_row": point.ns_per_row(),
                "max_abs_diff_vs_cpu": point.max_abs_diff_vs_cpu,
                "model": format!("{} {}", manifest.name, manifest.version),
                "ort_library": ort_library,
                "session_load_s": load_s,
            });
            println!("{line}");
        } else {
            println!(
                "| {CONTENDER} | {} → {active} | {n} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
                args.provider.execution_provider().as_str(),
                point.calls,
                point.us_mean(),
                point.us_quantile(0.50),
                point.us_quantile(0.99),
                point.rows_per_s(),
                point.ns_per_row(),
            );
        }
    }
    Ok(())
}

/// Warm-up, then timed `Scorer::score` calls over the same batch.
fn measure(args: &Args, scorer: &mut Scorer, batch: &mut Batch, n: usize) -> anyhow::Result<Point> {
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let started = Instant::now();
    let mut warm_calls = 0;
    while warm_calls < 3 || started.elapsed() < warmup {
        scorer.score(batch)?;
        warm_calls += 1;
    }
    let window = Duration::from_secs_f64(args.seconds_per_size);
    let mut calls_ns = Vec::with_capacity(1024);
    let mut ort = Duration::ZERO;
    let started = Instant::now();
    while calls_ns.len() < args.min_calls.max(1) || started.elapsed() < window {
        let t = Instant::now();
        let counts = scorer.score(batch)?;
        calls_ns.push(t.elapsed().as_nanos() as u64);
        ort += counts.inference;
    }
    let measured = started.elapsed();
    if batch.scores.len() != n || batch.scores.iter().any(|s| !s.is_finite() || !(0.0..=1.0).contains(s)) {
        bail!("batch of {n}: scores are not {n} probabilities");
    }
    calls_ns.sort_unstable();
    Ok(Point { batch: n, calls: calls_ns.len(), measured, calls_ns, ort, max_abs_diff_vs_cpu: None })
}

/// A plausible feature row, from the manifest's columns: one category per one-hot group
/// (`name=value` columns), a `*_missing` flag set for about one row in ten (its value column
/// then holds 0, the default), binary columns 0 or 1, and other numbers uniform over the
/// range of the column's reference histogram.
fn fill_row(manifest: &Manifest, rng: &mut SmallRng, row: &mut [f32], missing: &mut [bool]) {
    let columns = &manifest.columns;
    let mut i = 0;
    while i < columns.len() {
        if let Some((group, _)) = columns[i].split_once('=') {
            let prefix = format!("{group}=");
            let len = columns[i..].iter().take_while(|c| c.starts_with(&prefix)).count();
            row[i..i + len].fill(0.0);
            row[i + rng.random_range(0..len)] = 1.0;
            i += len;
            continue;
        }
        let flag = columns.get(i + 1).is_some_and(|c| c.ends_with("_missing"));
        if flag && rng.random_bool(0.1) {
            row[i] = 0.0;
            missing[i] = true;
            row[i + 1] = 1.0;
            i += 2;
            continue;
        }
        let edges = manifest.reference.columns.iter().find(|h| h.name == columns[i]).map(|h| h.edges.as_slice());
        row[i] = match edges {
            Some([e]) if *e == 0.5 => rng.random_range(0..2) as f32,
            Some([lo, .., hi]) if hi > lo => rng.random_range(*lo..*hi) as f32,
            Some([e, ..]) => *e as f32,
            _ => rng.random::<f32>(),
        };
        if flag {
            row[i + 1] = 0.0;
            i += 1;
        }
        i += 1;
    }
}
