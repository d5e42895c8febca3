//! A fuzz campaign over the per-message path (`Decoder::decode`, then `FeatureExtractor::extract`),
//! for when cargo-fuzz (nightly) is not available: mutates the seed corpus and random bytes, runs
//! every input under `catch_unwind`, and exits non-zero on the first panic, saving the input.
//!
//! ```text
//! cargo run --release --example fuzz_decode -- --iterations 5000000 --seed 1
//! ```
//!
//! The same seed replays the same inputs. Inputs whose outcome is new (its reason and the shape of
//! its detail) join the mutation pool: a cheap stand-in for coverage feedback. A stack overflow
//! aborts the process and cannot be caught: rerun the same seed with `--keep-last` to get the
//! input. See docs/fuzzing.md.

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use streamscore::codec::{parse_schema, write_frame_header, Decoder, SchemaStore, TRANSACTION_SCHEMA};
use streamscore::features::FeatureExtractor;
use streamscore::model::Manifest;

#[derive(Parser)]
#[command(about = "Fuzz the decode + features path with mutated corpus seeds")]
struct Args {
    /// Executions to run (seeds included).
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// RNG seed (default: from the clock); printed, so a run can be replayed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many seconds, even if iterations remain.
    #[arg(long)]
    seconds: Option<u64>,
    /// The seed corpus: raw message values, and writer schemas in `schemas/{id}.avsc`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/decode"))]
    corpus: PathBuf,
    /// The model whose manifest drives feature extraction.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fraud_mlp/1"))]
    model: PathBuf,
    /// Where crashing inputs are saved.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/fuzz-crashes"))]
    crashes: PathBuf,
    /// Write every input to `<crashes>/last-input.bin` before running it (slow): the way to
    /// capture an input that aborts the process.
    #[arg(long)]
    keep_last: bool,
}

/// Message size limit of the decoder (the configuration default).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Mutated inputs are cut to this length, so that executions stay fast.
const MAX_INPUT: usize = 64 * 1024;
/// Most inputs kept in the mutation pool.
const MAX_POOL: usize = 20_000;

const INTERESTING_BYTES: [u8; 9] = [0x00, 0x01, 0x02, 0x7e, 0x7f, 0x80, 0x81, 0xfe, 0xff];
const INTERESTING_LONGS: [i64; 16] = [
    0,
    1,
    -1,
    2,
    -2,
    63,
    64,
    i32::MAX as i64,
    i32::MIN as i64,
    1 << 31,
    1 << 62,
    -(1 << 62),
    i64::MAX,
    i64::MIN,
    MAX_MESSAGE_BYTES as i64,
    MAX_MESSAGE_BYTES as i64 + 1,
];

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let mut rng = SmallRng::seed_from_u64(seed);

    let (decoder, ids) = decoder(&args.corpus.join("schemas"))?;
    let manifest = Manifest::from_dir(&args.model).context("loading the model manifest")?;
    let features = FeatureExtractor::new(&manifest, decoder.store().reader())?;
    let seeds = seeds(&args.corpus)?;
    if seeds.is_empty() {
        bail!("no seeds in {}", args.corpus.display());
    }
    println!(
        "fuzz_decode: seed {seed}, {} seeds, schema ids {ids:?}, {} iterations{}",
        seeds.len(),
        args.iterations,
        args.seconds.map(|s| format!(" or {s} s")).unwrap_or_default()
    );

    // Panics are reported by the campaign, not printed by the default hook at every catch.
    let last_panic: Arc<Mutex<Option<String>>> = Arc::default();
    let hook_slot = last_panic.clone();
    std::panic::set_hook(Box::new(move |info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        *hook_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{info}{at}"));
    }));

    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let mut shapes: HashSet<String> = HashSet::new();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut row = vec![0f32; features.num_columns()];
    let mut missing = vec![false; features.num_columns()];
    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut last_report = started;
    let mut executions = 0u64;

    while executions < args.iterations && deadline.is_none_or(|d| Instant::now() < d) {
        let input = if (executions as usize) < seeds.len() {
            seeds[executions as usize].clone()
        } else {
            generate(&mut rng, &pool, &ids)
        };
        if args.keep_last {
            std::fs::create_dir_all(&args.crashes)?;
            std::fs::write(args.crashes.join("last-input.bin"), &input)?;
        }
        executions += 1;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let value = decoder.decode(&input)?;
            features.extract(&value, &mut row, &mut missing).map(|_| ())
        }));
        let (label, detail) = match result {
            Ok(Ok(())) => ("ok", String::new()),
            Ok(Err(rejection)) => (rejection.reason.as_str(), rejection.detail),
            Err(_) => {
                let message = last_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
                std::fs::create_dir_all(&args.crashes)?;
                let path = args.crashes.join(format!("crash-seed{seed}-exec{executions}.bin"));
                std::fs::write(&path, &input)?;
                println!("PANIC after {executions} executions: {message}");
                println!("input ({} bytes) saved to {}", input.len(), path.display());
                summary(executions, started.elapsed(), &counts, shapes.len(), pool.len(), seed);
                return Ok(ExitCode::FAILURE);
            }
        };
        *counts.entry(label).or_default() += 1;
        // Once the pool is full, stop collecting shapes too: their set must not grow without bound.
        if pool.len() < MAX_POOL && shapes.insert(shape(label, &detail)) {
            pool.push(input);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{executions} executions in {secs:.0} s ({:.0}/s), {} outcome shapes, pool {}",
                executions as f64 / secs,
                shapes.len(),
                pool.len()
            );
        }
    }
    summary(executions, started.elapsed(), &counts, shapes.len(), pool.len(), seed);
    Ok(ExitCode::SUCCESS)
}

fn summary(
    executions: u64,
    elapsed: Duration,
    counts: &BTreeMap<&'static str, u64>,
    shapes: usize,
    pool: usize,
    seed: u64,
) {
    let secs = elapsed.as_secs_f64();
    println!(
        "done: {executions} executions in {secs:.1} s ({:.0}/s), seed {seed}, {shapes} outcome shapes, pool {pool}",
        executions as f64 / secs.max(1e-9)
    );
    for (label, n) in counts {
        println!("  {label:<22} {n:>12} ({:.2}%)", *n as f64 * 100.0 / executions.max(1) as f64);
    }
}

/// An outcome's reason and the first words of its detail, without numbers or quoted bytes: e.g.
/// "undecodable|body of bytes does not decode with writer schema id Unable to allocate bytes".
fn shape(label: &str, detail: &str) -> String {
    // Framing outcomes have one shape each, whatever byte or id they quote.
    if matches!(label, "bad_magic" | "truncated" | "unknown_schema") {
        return label.to_string();
    }
    let letters: String = detail.chars().map(|c| if c.is_ascii_alphabetic() { c } else { ' ' }).collect();
    let words: Vec<&str> = letters.split_whitespace().filter(|w| w.len() > 1).take(24).collect();
    format!("{label}|{}", words.join(" "))
}

/// A decoder over `schemas/{id}.avsc`, with the reader schema `TRANSACTION_SCHEMA`.
fn decoder(schemas: &Path) -> anyhow::Result<(Decoder, Vec<u32>)> {
    let mut local = BTreeMap::new();
    for entry in std::fs::read_dir(schemas).with_context(|| format!("reading {}", schemas.display()))? {
        let path = entry?.path();
        if let Some(id) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()) {
            local.insert(id, path);
        }
    }
    let ids = local.keys().copied().collect();
    let store = SchemaStore::new(parse_schema(TRANSACTION_SCHEMA)?, &local, None, None)?;
    Ok((Decoder::new(Arc::new(store), MAX_MESSAGE_BYTES), ids))
}

/// Every file in the corpus directory but `EXPECTED.txt`.
fn seeds(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "EXPECTED.txt"));
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display()))).collect()
}

fn long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::with_capacity(10);
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// A new input: mostly stacked mutations of a pool entry, sometimes random bytes.
fn generate(rng: &mut SmallRng, pool: &[Vec<u8>], ids: &[u32]) -> Vec<u8> {
    if rng.random_bool(0.03) {
        let mut out = Vec::new();
        if rng.random_bool(0.5) {
            write_frame_header(&mut out, ids[rng.random_range(0..ids.len())]);
        }
        let n = rng.random_range(0..512);
        out.extend((0..n).map(|_| rng.random::<u8>()));
        return out;
    }
    let mut input = pool[rng.random_range(0..pool.len())].clone();
    // Mostly leave a well-formed header alone: a broken one only ever meets the frame check.
    let keep_header = input.len() >= 5 && rng.random_bool(0.85);
    let mut body = if keep_header { input.split_off(5) } else { std::mem::take(&mut input) };
    // 1 mutation half the time, 2 a quarter, ... up to 8: few enough that some inputs stay valid.
    let mut n = 1;
    while n < 8 && rng.random_bool(0.5) {
        n += 1;
    }
    for _ in 0..n {
        mutate(rng, &mut body, pool, ids);
    }
    input.extend_from_slice(&body);
    input.truncate(MAX_INPUT);
    input
}

fn mutate(rng: &mut SmallRng, input: &mut Vec<u8>, pool: &[Vec<u8>], ids: &[u32]) {
    let len = input.len();
    let pos = |rng: &mut SmallRng| rng.random_range(0..=len);
    let interesting = |rng: &mut SmallRng| {
        if rng.random_bool(0.8) {
            INTERESTING_LONGS[rng.random_range(0..INTERESTING_LONGS.len())]
        } else {
            rng.random::<i64>() >> rng.random_range(0..63)
        }
    };
    match rng.random_range(0..12) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = rng.random();
        }
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
        }
        3 => {
            let at = pos(rng);
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(at..at, bytes);
        }
        4 => {
            let at = pos(rng);
            let v = interesting(rng);
            input.splice(at..at, long(v));
        }
        5 if len > 0 => {
            // Overwrite what is probably a varint (a length, count, index) with another.
            let at = rng.random_range(0..len);
            let end = (at + rng.random_range(1..=10)).min(len);
            let v = interesting(rng);
            input.splice(at..end, long(v));
        }
        6 if len > 0 => {
            let at = rng.random_range(0..len);
            let end = (at + rng.random_range(1..=32)).min(len);
            input.drain(at..end);
        }
        7 => input.truncate(pos(rng)),
        8 if len > 0 => {
            let from = rng.random_range(0..len);
            let end = (from + rng.random_range(1..=64)).min(len);
            let chunk = input[from..end].to_vec();
            let at = pos(rng);
            input.splice(at..at, chunk);
        }
        9 => {
            let other = &pool[rng.random_range(0..pool.len())];
            let cut = pos(rng);
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        10 if len >= 5 => {
            let id = if rng.random_bool(0.9) { ids[rng.random_range(0..ids.len())] } else { rng.random() };
            input[1..5].copy_from_slice(&id.to_be_bytes());
        }
        11 => {
            // A run of one byte: nesting (0x02 = one more item), long varints (0xff), zeros.
            let at = pos(rng);
            let byte = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
            let n = rng.random_range(1..=1024);
            input.splice(at..at, std::iter::repeat_n(byte, n));
        }
        _ => {}
    }
}
