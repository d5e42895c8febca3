//! The model: manifest, ONNX Runtime session, and scoring of a batch.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from the library of the
//! pinned `onnxruntime` PyPI wheel: `model.onnxruntime_library` in the config or `ORT_DYLIB_PATH`.
//!
//! Loading verifies before it trusts ([`Model::load`]): the manifest's signature (when keys are
//! configured, see [`verify`]), the model file's sha256, and the graph's declared input and
//! output against the manifest. A refused model is an error for the caller, which keeps serving
//! whatever it served before, and is counted in [`verify::MODEL_LOAD_FAILURES`] by reason.

pub mod deploy;
pub mod manifest;
pub mod verify;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::TensorRef;

use crate::batcher::Batch;
use crate::cache::{BuildKeyHasher, CacheKey, CacheUse, Lookup, PredictionCache};
use crate::config::{ExecutionProvider, GraphOptimization, ModelConfig};
pub use manifest::Manifest;

/// What a user can get wrong about the model, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found: {0}. Set model.onnxruntime_library in the config or ORT_DYLIB_PATH to the \
         libonnxruntime.so.* of the onnxruntime wheel (`make setup` installs it into .venv/lib/python3*/site-packages/onnxruntime/capi/)"
    )]
    RuntimeMissing(String),
    #[error("cannot load ONNX Runtime from {path}: {detail}. Is it the libonnxruntime.so of onnxruntime 1.31 (the pinned wheel)?")]
    RuntimeLoad { path: PathBuf, detail: String },
    #[error("model manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("model signature: {0}")]
    Signature(#[from] verify::VerifyError),
    #[error("cannot load model {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("model {path} does not match its manifest: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("inference failed on a batch of {rows} rows: {detail}")]
    Inference { rows: usize, detail: String },
}

impl ModelError {
    /// Why a model was refused at load: the `reason` label of [`verify::MODEL_LOAD_FAILURES`]
    /// (`runtime`, `manifest`, `model_file`, `checksum`, `signature`, `load`, `mismatch`, `warmup`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RuntimeMissing(_) | Self::RuntimeLoad { .. } => "runtime",
            Self::Manifest(manifest::ManifestError::Checksum { .. }) => "checksum",
            Self::Manifest(manifest::ManifestError::ModelFile { .. }) => "model_file",
            Self::Manifest(_) => "manifest",
            Self::Signature(_) => "signature",
            Self::Load { .. } => "load",
            Self::Mismatch { .. } => "mismatch",
            // At load, inference runs only as the warm-up.
            Self::Inference { .. } => "warmup",
        }
    }
}

/// The ONNX Runtime library where `make setup` installs it: `ORT_DYLIB_PATH` when set, else the
/// `libonnxruntime.so.*` of the `onnxruntime` wheel in `<project>/.venv`. For tests, benches and
/// tools run from a checkout; the service itself takes the library from its configuration.
pub fn project_onnxruntime_library(project: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::fs::read_dir(project.join(".venv/lib")).ok()?.flatten().find_map(|d| {
        std::fs::read_dir(d.path().join("site-packages/onnxruntime/capi"))
            .ok()?
            .flatten()
            .map(|f| f.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
    })
}

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process. `ort` panics if it is used without a loadable library,
/// so the path is checked here first, and any panic inside the loader becomes an error.
pub fn init_onnxruntime(configured: Option<&Path>) -> Result<&'static ort::environment::Environment, ModelError> {
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(ModelError::RuntimeMissing(
                    "neither model.onnxruntime_library nor ORT_DYLIB_PATH is set".into(),
                ))
            }
        },
    };
    if !path.is_file() {
        return Err(ModelError::RuntimeMissing(format!("{} does not exist", path.display())));
    }
    let env = ORT_ENV.get_or_init(|| {
        let p = path.clone();
        let loaded = std::panic::catch_unwind(move || -> Result<ort::environment::Environment, String> {
            let builder = ort::init_from(&p).map_err(|e| e.to_string())?;
            builder.with_name("streamscore").build().map_err(|e| e.to_string())
        });
        match loaded {
            Ok(r) => r,
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the loader panicked".into())),
        }
    });
    env.as_ref().map_err(|detail| ModelError::RuntimeLoad { path, detail: detail.clone() })
}

/// Identity of a loaded model version, shared by every outcome it scores.
#[derive(Debug)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// Hash of (name, version, sha256): the cache key's version part, so that two versions (or
    /// a re-exported model under the same version string) never share cached scores.
    pub version_id: u64,
    pub threshold: f32,
    pub num_columns: usize,
    /// The execution provider actually in use (`cpu` after a GPU fallback).
    pub execution_provider: &'static str,
}

/// One ONNX Runtime session over one model version. `Session::run` needs `&mut self`, so each
/// inference worker owns its own `Model`.
pub struct Model {
    pub manifest: Manifest,
    pub info: Arc<ModelInfo>,
    /// What the signature check found at load.
    pub signature: verify::SignatureStatus,
    session: Session,
    /// Asks ONNX Runtime for the manifest's output only: a graph's other outputs (an exported
    /// classifier's `label` branch: ArgMax, Cast, ...) are neither computed nor copied back from
    /// a GPU.
    run_options: RunOptions<HasSelectedOutputs>,
    output_column: usize,
    output_width: usize,
}

impl Model {
    /// Loads and checks the model in `cfg.dir`: the manifest's signature (when trusted keys are
    /// configured), the manifest itself, the model file's sha256, the declared input and output,
    /// and a warm-up run (so the first real batch does not pay for lazy initialisation).
    ///
    /// The manifest and the model file are each read once: the signature is checked over the
    /// bytes that are parsed, and the checksum over the bytes ONNX Runtime loads (from memory,
    /// so a file swapped after the check is never run). A refusal is logged and counted in
    /// [`verify::MODEL_LOAD_FAILURES`] with its [`reason`](ModelError::reason).
    pub fn load(cfg: &ModelConfig) -> Result<Model, ModelError> {
        let loaded = Self::load_verified(cfg);
        if let Err(e) = &loaded {
            let reason = e.reason();
            metrics::counter!(verify::MODEL_LOAD_FAILURES, "reason" => reason).increment(1);
            tracing::error!(dir = %cfg.dir.display(), reason, error = %e, "model refused");
        }
        loaded
    }

    fn load_verified(cfg: &ModelConfig) -> Result<Model, ModelError> {
        // Artifacts first: they are cheaper to check than a runtime to load, and a refused
        // candidate should say why even where the runtime is missing.
        let keys = verify::load_trusted_keys(&cfg.trusted_public_keys)?;
        let manifest_path = cfg.dir.join(manifest::MANIFEST_FILE);
        let manifest_bytes = std::fs::read(&manifest_path)
            .map_err(|source| manifest::ManifestError::Read { path: manifest_path.clone(), source })?;
        let signature = verify::verify_manifest_signature(&cfg.dir, &manifest_bytes, &keys, cfg.require_signature)?;
        let manifest = Manifest::from_slice(&manifest_path, &manifest_bytes)?;
        let path = manifest.model_path(&cfg.dir);
        let model_bytes =
            std::fs::read(&path).map_err(|source| manifest::ManifestError::ModelFile { path: path.clone(), source })?;
        if cfg.verify_checksum {
            manifest.verify_model_bytes(&path, &model_bytes)?;
        }
        if let verify::SignatureStatus::Verified { key } = &signature {
            tracing::info!(manifest = %manifest_path.display(), key = %key.display(), "model manifest signature verified");
        }

        let env = init_onnxruntime(cfg.onnxruntime_library.as_deref())?;
        let (session, execution_provider) = build_session(env, cfg, &path, &model_bytes)?;
        drop(model_bytes);
        let f = manifest.num_columns();
        let output_width =
            check_io(&session, &manifest).map_err(|detail| ModelError::Mismatch { path: path.clone(), detail })?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&manifest.name, &manifest.version, &manifest.sha256).hash(&mut hasher);
        let info = Arc::new(ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            version_id: hasher.finish(),
            threshold: manifest.threshold,
            num_columns: f,
            execution_provider,
        });
        let run_options = RunOptions::new()
            .map_err(|e| ModelError::Load { path: path.clone(), detail: e.to_string() })?
            .with_outputs(OutputSelector::no_default().with(manifest.output.name.as_str()));
        let mut model = Model {
            output_column: manifest.output.column,
            manifest,
            info,
            signature,
            session,
            run_options,
            output_width,
        };
        // Warm-up: two rows of zeros exercise the whole graph and check the output shape for a
        // batch (a graph that only works for one row fails here, not on the first real batch).
        let mut scores = Vec::new();
        model.infer(&vec![0.0; 2 * f], 2, &mut scores)?;
        Ok(model)
    }

    /// Runs `runs` batches of `rows` zero rows: ONNX Runtime sizes its buffers (and a GPU
    /// provider compiles its kernels) for full batches before the version serves, so its first
    /// real batches are not slower than the rest. Used by the control plane before a switch.
    pub fn warm_up(&mut self, rows: usize, runs: usize) -> Result<(), ModelError> {
        let rows = rows.max(1);
        let input = vec![0.0; rows * self.info.num_columns];
        let mut scores = Vec::with_capacity(rows);
        for _ in 0..runs {
            self.infer(&input, rows, &mut scores)?;
        }
        Ok(())
    }

    /// Runs one batch: `rows` is `[n, F]` row-major; the scores are appended to `out` (cleared first).
    /// One ONNX Runtime call, no copy of the input.
    pub fn infer(&mut self, rows: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), ModelError> {
        out.clear();
        if n == 0 {
            return Ok(());
        }
        let f = self.info.num_columns;
        debug_assert_eq!(rows.len(), n * f);
        let err = |e: ort::Error| ModelError::Inference { rows: n, detail: e.to_string() };
        let input = TensorRef::from_array_view(([n, f], &rows[..n * f])).map_err(err)?;
        let outputs = self
            .session
            .run_with_options(ort::inputs![self.manifest.input.name.as_str() => input], &self.run_options)
            .map_err(err)?;
        let value = outputs.get(&self.manifest.output.name).ok_or_else(|| ModelError::Inference {
            rows: n,
            detail: format!("output `{}` missing", self.manifest.output.name),
        })?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(err)?;
        let width = match &shape[..] {
            [m] if *m as usize == n => 1,
            [m, w] if *m as usize == n => *w as usize,
            other => {
                return Err(ModelError::Inference {
                    rows: n,
                    detail: format!("unexpected output shape {other:?} for {n} rows"),
                });
            }
        };
        if self.output_width > 0 && width != self.output_width {
            return Err(ModelError::Inference {
                rows: n,
                detail: format!("output has {width} columns, the model declared {}", self.output_width),
            });
        }
        let col = if width == 1 { 0 } else { self.output_column };
        if col >= width {
            return Err(ModelError::Inference {
                rows: n,
                detail: format!("output has {width} columns, manifest reads column {col}"),
            });
        }
        out.extend((0..n).map(|i| data[i * width + col]));
        Ok(())
    }
}

/// Builds the session on the configured execution provider. A GPU provider that cannot be
/// registered (CPU-only ONNX Runtime library, no CUDA, no device) falls back to CPU with a
/// warning; the returned name says which one is active.
///
/// The session is built from `bytes` (the model file as read and checksummed), not from the
/// path; `path` only names the model in errors. Models with external data files are therefore
/// not supported (none of ours are).
fn build_session(
    env: &ort::environment::Environment,
    cfg: &ModelConfig,
    path: &Path,
    bytes: &[u8],
) -> Result<(Session, &'static str), ModelError> {
    use ort::ep::ExecutionProvider as _;
    let load_err = |e: ort::Error| ModelError::Load { path: path.to_path_buf(), detail: e.to_string() };
    let level = match cfg.graph_optimization_level {
        GraphOptimization::Disable => GraphOptimizationLevel::Disable,
        GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        GraphOptimization::Extended => GraphOptimizationLevel::Level2,
        GraphOptimization::All => GraphOptimizationLevel::All,
    };
    let builder = Session::builder(env)
        .map_err(load_err)?
        .with_optimization_level(level)
        .map_err(|e| load_err(e.into()))?
        .with_intra_threads(cfg.intra_op_threads)
        .map_err(|e| load_err(e.into()))?
        .with_inter_threads(cfg.inter_op_threads)
        .map_err(|e| load_err(e.into()))?
        .with_memory_pattern(cfg.memory_arena)
        .map_err(|e| load_err(e.into()))?;
    let gpu = match cfg.execution_provider {
        ExecutionProvider::Cpu => None,
        ExecutionProvider::Cuda => Some((
            "cuda",
            ort::ep::CUDA::is_available().unwrap_or(false),
            // ONNX Runtime's CUDA provider uses TF32 by default (`use_tf32` = 1): on an H200 that
            // moved this repository's MLP's scores by up to 4.8e-4 from the CPU's (benches/README.md,
            // "Figures on an NVIDIA H200"), so it is off unless `model.cuda_tf32` asks for it.
            ort::ep::CUDA::default().with_device_id(cfg.device_id).with_tf32(cfg.cuda_tf32).build().error_on_failure(),
        )),
        ExecutionProvider::TensorRt => Some((
            "tensorrt",
            ort::ep::TensorRT::is_available().unwrap_or(false),
            ort::ep::TensorRT::default().with_device_id(cfg.device_id).build().error_on_failure(),
        )),
    };
    let (mut builder, active) = match gpu {
        None => (builder, "cpu"),
        Some((name, false, _)) => {
            tracing::warn!(
                requested = name,
                "the ONNX Runtime library has no {name} execution provider (install onnxruntime-gpu and point \
                 ORT_DYLIB_PATH at its library); running on CPU"
            );
            (builder, "cpu")
        }
        Some((name, true, ep)) => match builder.with_execution_providers([ep]) {
            Ok(b) => (b, name),
            Err(e) => {
                tracing::warn!(requested = name, device = cfg.device_id, error = %e, "{name} execution provider did not start; running on CPU");
                (e.recover(), "cpu")
            }
        },
    };
    if active == "cpu" {
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(cfg.memory_arena).build()])
            .map_err(|e| load_err(e.into()))?;
    }
    let session = builder.commit_from_memory(bytes).map_err(load_err)?;
    tracing::info!(execution_provider = active, device = cfg.device_id, "ONNX Runtime session ready");
    Ok((session, active))
}

fn names(outlets: &[ort::value::Outlet]) -> String {
    outlets.iter().map(|o| o.name().to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks the graph's declared input and output against the manifest; returns the output's
/// static width (1 for `[N]`, 0 when the width is dynamic and is checked on the first run).
///
/// Input: exactly one, named `input.name`, float32 `[N, F]` with `N` dynamic and `F` the
/// manifest's column count (or dynamic). Output: named `output.name`, float32 `[N]` or `[N, C]`
/// with `N` dynamic and `output.column < C` when `C` is static.
fn check_io(session: &Session, manifest: &Manifest) -> Result<usize, String> {
    let f = manifest.num_columns() as i64;
    let input = session.inputs().iter().find(|i| i.name() == manifest.input.name).ok_or_else(|| {
        format!(
            "no input named `{}` (inputs: {}); fix input.name in the manifest",
            manifest.input.name,
            names(session.inputs())
        )
    })?;
    if session.inputs().len() != 1 {
        return Err(format!(
            "expected exactly one input, found {} ({}); streamscore feeds one float32 [N, F] tensor",
            session.inputs().len(),
            names(session.inputs())
        ));
    }
    let dims = float_tensor_dims(input.dtype()).map_err(|d| format!("input `{}`: {d}", input.name()))?;
    match dims.as_slice() {
        [n, _] if *n >= 0 => {
            return Err(format!(
                "input `{}` has a fixed batch dimension of {n}; streamscore scores batches of any size: export \
                 with a dynamic first dimension (e.g. skl2onnx FloatTensorType([None, {f}]))",
                input.name()
            ))
        }
        [_, w] if *w == f || *w < 0 => {}
        [_, w] => {
            return Err(format!(
                "input `{}` has {w} columns but the manifest lists {f} columns; the manifest's features do not \
                 belong to this model",
                input.name()
            ))
        }
        other => {
            return Err(format!(
                "input `{}` has shape {}; expected rank 2 [N, {f}] (N dynamic, {f} = manifest columns)",
                input.name(),
                shape(other)
            ))
        }
    }
    let output = session.outputs().iter().find(|o| o.name() == manifest.output.name).ok_or_else(|| {
        format!(
            "no output named `{}` (outputs: {}); fix output.name in the manifest",
            manifest.output.name,
            names(session.outputs())
        )
    })?;
    let dims = float_tensor_dims(output.dtype()).map_err(|d| format!("output `{}`: {d}", output.name()))?;
    let width = match dims.as_slice() {
        [n] | [n, _] if *n >= 0 => {
            return Err(format!(
                "output `{}` has a fixed batch dimension of {n}; export with a dynamic first dimension",
                output.name()
            ))
        }
        [_] => 1,
        [_, w] if *w > 0 => *w as usize,
        [_, _] => 0,
        other => return Err(format!("output `{}` has shape {}; expected [N] or [N, C]", output.name(), shape(other))),
    };
    // `column` is ignored for [N] outputs (the doc's rule); for [N, C] it must exist.
    if dims.len() == 2 && width > 0 && manifest.output.column >= width {
        return Err(format!(
            "output.column is {} but output `{}` has {width} columns (0..{})",
            manifest.output.column,
            output.name(),
            width - 1
        ));
    }
    Ok(width)
}

/// The dimensions of a declared float32 tensor (negative = dynamic).
fn float_tensor_dims(dtype: &ort::value::ValueType) -> Result<Vec<i64>, String> {
    match dtype {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            if *ty != ort::value::TensorElementType::Float32 {
                return Err(format!("element type is {ty:?}, expected float32"));
            }
            Ok(shape.iter().copied().collect())
        }
        other => Err(format!("is {other:?}, expected a float32 tensor (export with zipmap disabled)")),
    }
}

/// `[N, 36]` style text of declared dimensions.
fn shape(dims: &[i64]) -> String {
    let d: Vec<String> = dims.iter().map(|&d| if d < 0 { "N".to_string() } else { d.to_string() }).collect();
    format!("[{}]", d.join(", "))
}

/// Scores batches under a [`deploy::Deployment`]: cache lookups first, then one ONNX Runtime
/// call per version over its misses. One prediction cache serves every version (its key holds
/// the version id, so a version never gets another's score).
///
/// - Champion only: every row by the champion.
/// - Canary: rows whose routing key ([`deploy::canary_routes`] on the input's Kafka key, or the
///   event id when the key is null) falls in the canary's share go to the challenger, the rest
///   to the champion: two inference calls, each over its rows' misses copied into one reused
///   contiguous buffer.
/// - Shadow: the champion scores every row for the outputs; the challenger scores every row too,
///   into [`Batch::shadow_scores`].
pub struct Scorer {
    pub deployment: deploy::Deployment,
    cache: PredictionCache,
    bufs: Buffers,
    champion_rows: Vec<usize>,
    challenger_rows: Vec<usize>,
    /// Cache-hit flags of shadow scoring (not part of any output).
    shadow_hits: Vec<bool>,
    /// What the last batch cost, per version.
    last: Vec<VersionCounts>,
}

/// Reused buffers of one inference call.
struct Buffers {
    miss_rows: Vec<f32>,
    miss_index: Vec<usize>,
    /// Key of each miss, and whether its score goes into the cache.
    miss_keys: Vec<(CacheKey, bool)>,
    /// First miss of each key in the current call: a repeat within the batch reuses its score.
    first_miss: HashMap<CacheKey, usize, BuildKeyHasher>,
    /// (row, position in the miss list) of in-batch repeats.
    repeats: Vec<(usize, usize)>,
    out: Vec<f32>,
}

/// What one batch cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreCounts {
    pub cache_hits: usize,
    pub cache_misses: usize,
    pub inference: std::time::Duration,
}

impl ScoreCounts {
    fn add(&mut self, o: ScoreCounts) {
        self.cache_hits += o.cache_hits;
        self.cache_misses += o.cache_misses;
        self.inference += o.inference;
    }
}

/// What one version did in the last batch.
#[derive(Debug, Clone)]
pub struct VersionCounts {
    pub info: deploy::VersionInfo,
    pub role: deploy::Role,
    /// Rows it scored.
    pub rows: usize,
    pub counts: ScoreCounts,
}

impl Scorer {
    pub fn new(model: Model, cache: PredictionCache) -> Self {
        Self {
            deployment: deploy::Deployment::new(model),
            cache,
            bufs: Buffers {
                miss_rows: Vec::new(),
                miss_index: Vec::new(),
                miss_keys: Vec::new(),
                first_miss: HashMap::with_hasher(BuildKeyHasher),
                repeats: Vec::new(),
                out: Vec::new(),
            },
            champion_rows: Vec::new(),
            challenger_rows: Vec::new(),
            shadow_hits: Vec::new(),
            last: Vec::new(),
        }
    }

    /// The serving champion.
    pub fn champion(&self) -> &Model {
        &self.deployment.champion
    }

    /// Per version, what the last [`Scorer::score`] did (champion first). Shadow scoring is
    /// listed with [`deploy::Role::Shadow`] and is not part of the totals `score` returns.
    pub fn last_counts(&self) -> &[VersionCounts] {
        &self.last
    }

    /// Fills `batch.scores`, `batch.cache_hits`, `batch.model` (the champion), `batch.versions`
    /// and `batch.row_version` (which version scored each row) and, in shadow mode,
    /// `batch.shadow` and `batch.shadow_scores`. Returns the totals of the scores that serve
    /// (shadow scoring excluded). Reuses its buffers; copies rows only when a version scores a
    /// subset of them or some were cache hits.
    pub fn score(&mut self, batch: &mut Batch) -> Result<ScoreCounts, ModelError> {
        let n = batch.rows;
        let f = batch.width();
        let champion = self.deployment.champion.info.clone();
        if f != champion.num_columns {
            return Err(ModelError::Inference {
                rows: n,
                detail: format!("batch rows have {f} features, model expects {}", champion.num_columns),
            });
        }
        batch.model = Some(champion.clone());
        batch.versions.clear();
        batch.versions.push(champion.clone());
        batch.row_version.clear();
        batch.row_version.resize(n, 0);
        batch.scores.clear();
        batch.scores.resize(n, 0.0);
        batch.cache_hits.clear();
        batch.cache_hits.resize(n, false);
        batch.shadow = None;
        batch.shadow_scores.clear();
        self.last.clear();
        let features = &batch.features[..n * f];
        let cache = &mut self.cache;
        let bufs = &mut self.bufs;
        let champion_model = &mut self.deployment.champion;
        let mut total = ScoreCounts::default();
        match &mut self.deployment.challenger {
            Some((challenger, deploy::ChallengerMode::Canary { weight })) => {
                let weight = *weight;
                self.champion_rows.clear();
                self.challenger_rows.clear();
                // Entries hold the rows in row order; the routing key is the Kafka key, or the
                // event id for a null key.
                for e in &batch.entries {
                    if let crate::batcher::EntryKind::Row { row, identity } = &e.kind {
                        let key = match e.key {
                            Some(span) => span.of(&batch.keys),
                            None => batch.ids.get(identity.event_id).as_bytes(),
                        };
                        if deploy::canary_routes(key, weight) {
                            self.challenger_rows.push(*row);
                        } else {
                            self.champion_rows.push(*row);
                        }
                    }
                }
                let info = challenger.info.clone();
                batch.versions.push(info.clone());
                for &r in &self.challenger_rows {
                    batch.row_version[r] = 1;
                }
                let (scores, hits) = (&mut batch.scores, &mut batch.cache_hits);
                let (a, b) = (&self.champion_rows, &self.challenger_rows);
                let c = score_rows(champion_model, cache, bufs, features, f, Some(a), scores, hits)?;
                total.add(c);
                self.last.push(VersionCounts {
                    info: champion,
                    role: deploy::Role::Champion,
                    rows: a.len(),
                    counts: c,
                });
                let c = score_rows(challenger, cache, bufs, features, f, Some(b), scores, hits)?;
                total.add(c);
                self.last.push(VersionCounts { info, role: deploy::Role::Canary, rows: b.len(), counts: c });
            }
            // No challenger, or one in shadow: the champion scores every row for the outputs.
            challenger => {
                let c = score_rows(
                    champion_model,
                    cache,
                    bufs,
                    features,
                    f,
                    None,
                    &mut batch.scores,
                    &mut batch.cache_hits,
                )?;
                total.add(c);
                self.last.push(VersionCounts { info: champion, role: deploy::Role::Champion, rows: n, counts: c });
                if let Some((challenger, deploy::ChallengerMode::Shadow)) = challenger {
                    batch.shadow_scores.resize(n, 0.0);
                    self.shadow_hits.clear();
                    self.shadow_hits.resize(n, false);
                    let c = score_rows(
                        challenger,
                        cache,
                        bufs,
                        features,
                        f,
                        None,
                        &mut batch.shadow_scores,
                        &mut self.shadow_hits,
                    )?;
                    let info = challenger.info.clone();
                    batch.shadow = Some(info.clone());
                    self.last.push(VersionCounts { info, role: deploy::Role::Shadow, rows: n, counts: c });
                }
            }
        }
        Ok(total)
    }
}

/// Scores `subset` of the `[n, F]` rows in `features` (all rows when `None`) with `model`,
/// cache first, writing `scores[row]` and `hits[row]` of those rows only.
#[allow(clippy::too_many_arguments)]
fn score_rows(
    model: &mut Model,
    cache: &mut PredictionCache,
    b: &mut Buffers,
    features: &[f32],
    f: usize,
    subset: Option<&[usize]>,
    scores: &mut [f32],
    hits: &mut [bool],
) -> Result<ScoreCounts, ModelError> {
    let n = features.len() / f.max(1);
    let count = subset.map_or(n, <[usize]>::len);
    let row = |i: usize| &features[i * f..(i + 1) * f];
    let at = |k: usize| subset.map_or(k, |s| s[k]);
    b.miss_index.clear();
    b.miss_keys.clear();
    if count == 0 {
        return Ok(ScoreCounts::default());
    }
    if !cache.consult(count) {
        // No cache (disabled, or bypassed while unprofitable): no hashing either, one inference
        // over the rows.
        let started = std::time::Instant::now();
        match subset {
            None => {
                model.infer(features, n, &mut b.out)?;
                scores[..n].copy_from_slice(&b.out);
            }
            Some(s) => {
                b.miss_rows.clear();
                for &i in s {
                    b.miss_rows.extend_from_slice(row(i));
                }
                model.infer(&b.miss_rows, s.len(), &mut b.out)?;
                for (j, &i) in s.iter().enumerate() {
                    scores[i] = b.out[j];
                }
            }
        }
        return Ok(ScoreCounts { cache_hits: 0, cache_misses: count, inference: started.elapsed() });
    }
    let version_id = model.info.version_id;
    b.first_miss.clear();
    b.repeats.clear();
    let lookups_started = std::time::Instant::now();
    for k in 0..count {
        let i = at(k);
        let key = cache.key(version_id, row(i));
        let admit = match cache.lookup(&key, row(i)) {
            Lookup::Hit(score) => {
                scores[i] = score;
                hits[i] = true;
                continue;
            }
            Lookup::Miss { admit } => admit,
        };
        // The same vector earlier in this call: it is being inferred already.
        if let Some(&m) = b.first_miss.get(&key) {
            if row(b.miss_index[m]) == row(i) {
                // Seen before this batch too: its score goes into the cache.
                b.miss_keys[m].1 |= admit;
                b.repeats.push((i, m));
                hits[i] = true;
                continue;
            }
        }
        b.first_miss.entry(key).or_insert(b.miss_index.len());
        b.miss_index.push(i);
        b.miss_keys.push((key, admit));
    }
    let m = b.miss_index.len();
    let mut counts = ScoreCounts { cache_hits: count - m, cache_misses: m, inference: std::time::Duration::ZERO };
    let mut usage = CacheUse {
        lookups: count as u64,
        hits: (count - m) as u64,
        cache_time: lookups_started.elapsed(),
        ..CacheUse::default()
    };
    if m == 0 {
        cache.account(usage);
        return Ok(counts);
    }
    let started = std::time::Instant::now();
    if subset.is_none() && m == n {
        // Every row of the batch missed, in order: the batch buffer is the input.
        model.infer(features, n, &mut b.out)?;
    } else {
        b.miss_rows.clear();
        for &i in &b.miss_index {
            b.miss_rows.extend_from_slice(row(i));
        }
        model.infer(&b.miss_rows, m, &mut b.out)?;
    }
    counts.inference = started.elapsed();
    let inserts_started = std::time::Instant::now();
    for (j, &i) in b.miss_index.iter().enumerate() {
        let score = b.out[j];
        scores[i] = score;
        let (key, admit) = b.miss_keys[j];
        if admit {
            cache.insert(key, row(i), score);
        }
    }
    usage.cache_time += inserts_started.elapsed();
    usage.inferred = m as u64;
    usage.inference_time = counts.inference;
    cache.account(usage);
    for &(i, m) in &b.repeats {
        scores[i] = b.out[m];
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheAdmission, Config};

    /// The ONNX Runtime library `make test` provides (ORT_DYLIB_PATH), or the virtualenv's.
    fn ort_library() -> PathBuf {
        let project = Path::new(env!("CARGO_MANIFEST_DIR"));
        project_onnxruntime_library(project)
            .unwrap_or_else(|| panic!("no libonnxruntime.so.* under .venv: run `make test`"))
    }

    fn model_config() -> ModelConfig {
        let mut cfg = Config::from_toml_str("", "test", &[]).expect("defaults").model;
        cfg.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        cfg.onnxruntime_library = Some(ort_library());
        cfg
    }

    #[test]
    fn missing_runtime_library_says_what_to_do() {
        let err = init_onnxruntime(Some(Path::new("/nonexistent/libonnxruntime.so.1.31.1"))).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{msg}");
        assert!(msg.contains("ORT_DYLIB_PATH") && msg.contains("model.onnxruntime_library"), "{msg}");
    }

    #[test]
    fn shipped_model_loads_and_scores_a_batch_in_one_call() {
        let mut model = Model::load(&model_config()).expect("shipped model loads");
        assert_eq!(model.info.num_columns, 36);
        assert_eq!(model.info.name, "fraud_mlp");
        let f = model.info.num_columns;
        let rows: Vec<f32> = (0..8 * f).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let mut batch_scores = Vec::new();
        model.infer(&rows, 8, &mut batch_scores).expect("batch");
        assert_eq!(batch_scores.len(), 8);
        // Row-wise results equal the batched ones: batching changes nothing but cost.
        for i in 0..8 {
            let mut one = Vec::new();
            model.infer(&rows[i * f..(i + 1) * f], 1, &mut one).expect("single row");
            assert!((one[0] - batch_scores[i]).abs() < 1e-6, "row {i}: {} vs {}", one[0], batch_scores[i]);
            assert!((0.0..=1.0).contains(&one[0]));
        }
    }

    #[test]
    fn warm_up_runs_full_batches_and_changes_no_score() {
        let mut model = Model::load(&model_config()).expect("shipped model loads");
        let f = model.info.num_columns;
        let rows: Vec<f32> = (0..4 * f).map(|i| ((i * 31) % 17) as f32 / 17.0).collect();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        model.infer(&rows, 4, &mut before).expect("before");
        model.warm_up(1024, 3).expect("three batches of 1024 rows");
        model.warm_up(0, 1).expect("zero rows means one row");
        model.infer(&rows, 4, &mut after).expect("after");
        assert_eq!(before, after, "warming up leaves the model as it was");
    }

    #[test]
    fn unavailable_gpu_provider_falls_back_to_cpu() {
        for ep in [ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
            let mut cfg = model_config();
            cfg.execution_provider = ep;
            let mut model = Model::load(&cfg).expect("loads on CPU instead");
            assert_eq!(model.info.execution_provider, "cpu", "{ep:?} is not in the CPU wheel");
            let mut out = Vec::new();
            model.infer(&vec![0.0; model.info.num_columns], 1, &mut out).expect("scores on CPU");
        }
    }

    #[test]
    fn session_settings_do_not_change_scores() {
        let rows: Vec<f32> = (0..4 * 36).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut reference = Vec::new();
        Model::load(&model_config()).expect("model").infer(&rows, 4, &mut reference).expect("infer");
        for (level, arena) in [
            (GraphOptimization::Disable, false),
            (GraphOptimization::Basic, true),
            (GraphOptimization::Extended, false),
        ] {
            let mut cfg = model_config();
            cfg.graph_optimization_level = level;
            cfg.memory_arena = arena;
            let mut out = Vec::new();
            Model::load(&cfg).expect("model").infer(&rows, 4, &mut out).expect("infer");
            for (a, b) in out.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-6, "{level:?}/{arena}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn repeats_within_one_batch_are_inferred_once() {
        let model = Model::load(&model_config()).expect("model");
        let mut scorer = Scorer::new(
            model,
            PredictionCache::with_limits(true, 100, std::time::Duration::from_secs(60), CacheAdmission::Always),
        );
        let mut batch = Batch::new(36, 4);
        let a: Vec<f32> = (0..36).map(|i| i as f32 / 36.0).collect();
        let b: Vec<f32> = (0..36).map(|i| (35 - i) as f32 / 36.0).collect();
        for row in [&a, &b, &a, &a] {
            batch.push_row().1.copy_from_slice(row);
        }
        let counts = scorer.score(&mut batch).expect("score");
        assert_eq!((counts.cache_hits, counts.cache_misses), (2, 2), "two distinct rows inferred");
        assert_eq!(batch.cache_hits, vec![false, false, true, true]);
        assert_eq!(batch.scores[0], batch.scores[2]);
        assert_eq!(batch.scores[0], batch.scores[3]);
        assert_ne!(batch.scores[0], batch.scores[1]);
    }

    #[test]
    fn scorer_without_cache_scores_the_same() {
        let rows: Vec<f32> = (0..3 * 36).map(|i| (i % 5) as f32 / 5.0).collect();
        let mut with = Scorer::new(
            Model::load(&model_config()).expect("model"),
            PredictionCache::with_limits(true, 10, std::time::Duration::from_secs(60), CacheAdmission::Always),
        );
        let mut without = Scorer::new(
            Model::load(&model_config()).expect("model"),
            PredictionCache::with_limits(false, 10, std::time::Duration::from_secs(60), CacheAdmission::Always),
        );
        let mut a = Batch::new(36, 3);
        let mut b = Batch::new(36, 3);
        for r in 0..3 {
            a.push_row().1.copy_from_slice(&rows[r * 36..(r + 1) * 36]);
            b.push_row().1.copy_from_slice(&rows[r * 36..(r + 1) * 36]);
        }
        with.score(&mut a).expect("score");
        let counts = without.score(&mut b).expect("score");
        assert_eq!((counts.cache_hits, counts.cache_misses), (0, 3));
        assert_eq!(a.scores, b.scores);
        assert_eq!(b.cache_hits, vec![false; 3]);
    }

    #[test]
    fn tampered_model_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        std::fs::copy(src.join("manifest.json"), dir.path().join("manifest.json")).expect("copy manifest");
        let mut bytes = std::fs::read(src.join("model.onnx")).expect("model");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(dir.path().join("model.onnx"), bytes).expect("write");
        let mut cfg = model_config();
        cfg.dir = dir.path().to_path_buf();
        let err = Model::load(&cfg).err().expect("checksum mismatch refused");
        assert!(err.to_string().contains("sha256") || err.to_string().contains("checksum"), "{err}");
        assert_eq!(err.reason(), "checksum");
    }

    // ---- verified artifacts --------------------------------------------------------------

    /// A copy of the shipped model directory (manifest + model) to tamper with.
    fn model_copy() -> (tempfile::TempDir, ModelConfig) {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        for f in ["manifest.json", "model.onnx"] {
            std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
        }
        let mut cfg = model_config();
        cfg.dir = dir.path().to_path_buf();
        (dir, cfg)
    }

    fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(manifest::MANIFEST_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn refused(cfg: &ModelConfig) -> ModelError {
        match Model::load(cfg) {
            Ok(_) => panic!("model in {} was loaded but must be refused", cfg.dir.display()),
            Err(e) => e,
        }
    }

    /// Writes a new key pair's public key into `dir` and returns (signing key, public key path).
    fn key_pair(dir: &Path, name: &str) -> (ed25519_dalek::SigningKey, PathBuf) {
        let key = verify::generate_signing_key();
        let path = dir.join(name);
        std::fs::write(&path, verify::public_key_hex(&key.verifying_key())).unwrap();
        (key, path)
    }

    #[test]
    fn truncated_model_file_is_refused_by_checksum_or_by_the_runtime() {
        let (dir, mut cfg) = model_copy();
        let bytes = std::fs::read(dir.path().join("model.onnx")).unwrap();
        std::fs::write(dir.path().join("model.onnx"), &bytes[..bytes.len() / 2]).unwrap();
        let err = refused(&cfg);
        assert_eq!(err.reason(), "checksum", "{err}");
        assert!(err.to_string().contains("model.onnx") && err.to_string().contains("re-export"), "{err}");
        // Without the checksum, ONNX Runtime itself refuses the truncated graph.
        cfg.verify_checksum = false;
        let err = refused(&cfg);
        assert_eq!(err.reason(), "load", "{err}");
        std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
        assert_eq!(refused(&cfg).reason(), "model_file");
    }

    #[test]
    fn manifest_with_another_valid_looking_sha_is_refused() {
        let (dir, cfg) = model_copy();
        edit_manifest(dir.path(), |m| m["sha256"] = serde_json::json!(manifest::sha256_hex(b"another model")));
        let err = refused(&cfg);
        assert_eq!(err.reason(), "checksum", "{err}");
        assert!(err.to_string().contains(&manifest::sha256_hex(b"another model")), "{err}");
    }

    #[test]
    fn signed_manifest_loads_and_any_change_after_signing_is_refused() {
        let (dir, mut cfg) = model_copy();
        let (key, public) = key_pair(dir.path(), "release.pub");
        verify::sign_manifest(dir.path(), &key).unwrap();
        cfg.trusted_public_keys = vec![public];
        cfg.require_signature = true;
        Model::load(&cfg).expect("signed by a trusted key: loads");

        // Tampered manifest (a lower threshold), signature left as it was.
        edit_manifest(dir.path(), |m| m["threshold"] = serde_json::json!(0.01));
        let err = refused(&cfg);
        assert_eq!(err.reason(), "signature", "{err}");
        assert!(err.to_string().contains("release.pub") && err.to_string().contains(verify::SIGNATURE_FILE), "{err}");
    }

    #[test]
    fn signature_by_an_untrusted_key_is_refused() {
        let (dir, mut cfg) = model_copy();
        let (_trusted, public) = key_pair(dir.path(), "trusted.pub");
        let (stranger, _) = key_pair(dir.path(), "stranger.pub");
        verify::sign_manifest(dir.path(), &stranger).unwrap();
        cfg.trusted_public_keys = vec![public];
        let err = refused(&cfg);
        assert_eq!(err.reason(), "signature", "{err}");
        assert!(matches!(err, ModelError::Signature(verify::VerifyError::BadSignature { .. })), "{err}");
    }

    #[test]
    fn missing_signature_is_refused_only_when_required() {
        let (dir, mut cfg) = model_copy();
        let (_key, public) = key_pair(dir.path(), "release.pub");
        cfg.trusted_public_keys = vec![public];
        Model::load(&cfg).expect("unsigned is accepted when signatures are optional");
        cfg.require_signature = true;
        let err = refused(&cfg);
        assert!(matches!(err, ModelError::Signature(verify::VerifyError::Unsigned { .. })), "{err}");
        // A configured key file that cannot be read is refused too, naming the file.
        cfg.trusted_public_keys = vec![dir.path().join("nope.pub")];
        let err = refused(&cfg);
        assert!(err.to_string().contains("nope.pub"), "{err}");
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (dir, cfg) = model_copy();
        edit_manifest(dir.path(), |m| m["sha256"] = serde_json::json!(manifest::sha256_hex(b"x")));
        metrics::with_local_recorder(&recorder, || {
            let _ = Model::load(&cfg);
            let _ = Model::load(&cfg);
        });
        let text = handle.render();
        assert!(text.contains(&format!("{}{{reason=\"checksum\"}} 2", verify::MODEL_LOAD_FAILURES)), "{text}");
    }

    type ManifestEdit = Box<dyn Fn(&mut serde_json::Value)>;

    #[test]
    fn declared_io_that_does_not_match_the_manifest_is_refused() {
        let cases: Vec<(&str, ManifestEdit, &str)> = vec![
            ("input name", Box::new(|m| m["input"]["name"] = serde_json::json!("x")), "no input named `x`"),
            ("output name", Box::new(|m| m["output"]["name"] = serde_json::json!("score")), "no output named `score`"),
            ("output column", Box::new(|m| m["output"]["column"] = serde_json::json!(2)), "output.column is 2"),
            (
                "column count",
                Box::new(|m| {
                    // Drop the last feature (new_device + its flag) and its columns: a valid
                    // manifest for a 34-column model.
                    m["features"].as_array_mut().unwrap().pop();
                    let cols = m["columns"].as_array_mut().unwrap();
                    cols.truncate(cols.len() - 2);
                    let hist = m["reference"]["columns"].as_array_mut().unwrap();
                    hist.truncate(hist.len() - 2);
                }),
                "36 columns but the manifest lists 34",
            ),
        ];
        for (what, edit, want) in cases {
            let (dir, cfg) = model_copy();
            edit_manifest(dir.path(), edit);
            let err = refused(&cfg);
            assert_eq!(err.reason(), "mismatch", "{what}: {err}");
            assert!(err.to_string().contains(want), "{what}: {err}");
        }
    }

    // A minimal ONNX protobuf writer, for graphs whose declared I/O the shipped model cannot show.
    mod onnx {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn int(out: &mut Vec<u8>, field: u64, v: i64) {
            varint(out, field << 3);
            varint(out, v as u64);
        }
        fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
            varint(out, (field << 3) | 2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        pub const FLOAT: i64 = 1;
        pub const DOUBLE: i64 = 11;
        pub const INT64: i64 = 7;
        /// ValueInfoProto: a tensor of `elem` with `dims` (None = dynamic `N`).
        pub fn tensor(name: &str, elem: i64, dims: &[Option<i64>]) -> Vec<u8> {
            let mut shape = Vec::new();
            for d in dims {
                let mut dim = Vec::new();
                match d {
                    Some(v) => int(&mut dim, 1, *v),
                    None => bytes(&mut dim, 2, b"N"),
                }
                bytes(&mut shape, 1, &dim);
            }
            let mut t = Vec::new();
            int(&mut t, 1, elem);
            bytes(&mut t, 2, &shape);
            let mut ty = Vec::new();
            bytes(&mut ty, 1, &t);
            let mut vi = Vec::new();
            bytes(&mut vi, 1, name.as_bytes());
            bytes(&mut vi, 2, &ty);
            vi
        }
        /// ModelProto (IR 8, opset 14) with one node `op(inputs) -> output`.
        pub fn model(
            op: &str,
            inputs: &[Vec<u8>],
            input_names: &[&str],
            output: Vec<u8>,
            output_name: &str,
        ) -> Vec<u8> {
            let mut node = Vec::new();
            for n in input_names {
                bytes(&mut node, 1, n.as_bytes());
            }
            bytes(&mut node, 2, output_name.as_bytes());
            bytes(&mut node, 4, op.as_bytes());
            let mut graph = Vec::new();
            bytes(&mut graph, 1, &node);
            bytes(&mut graph, 2, b"g");
            for i in inputs {
                bytes(&mut graph, 11, i);
            }
            bytes(&mut graph, 12, &output);
            let mut opset = Vec::new();
            bytes(&mut opset, 1, b"");
            int(&mut opset, 2, 14);
            let mut m = Vec::new();
            int(&mut m, 1, 8);
            bytes(&mut m, 8, &opset);
            bytes(&mut m, 7, &graph);
            m
        }
    }

    /// The shipped manifest over a hand-made graph (its sha256 updated).
    fn crafted(model: Vec<u8>) -> (tempfile::TempDir, ModelConfig) {
        let (dir, cfg) = model_copy();
        let sha = manifest::sha256_hex(&model);
        std::fs::write(dir.path().join("model.onnx"), model).unwrap();
        edit_manifest(dir.path(), |m| m["sha256"] = serde_json::json!(sha));
        (dir, cfg)
    }

    #[test]
    fn graph_shapes_and_types_are_checked_at_load() {
        use onnx::{model, tensor, DOUBLE, FLOAT, INT64};
        let n = None;
        let f = Some(36);
        // The baseline: Identity over float32 [N, 36] loads (the score is column 1 of the input).
        let (_d, cfg) = crafted(model(
            "Identity",
            &[tensor("features", FLOAT, &[n, f])],
            &["features"],
            tensor("probabilities", FLOAT, &[n, f]),
            "probabilities",
        ));
        let mut m = Model::load(&cfg).expect("a well-formed identity graph loads");
        let mut out = Vec::new();
        let rows: Vec<f32> = (0..72).map(|i| i as f32).collect();
        m.infer(&rows, 2, &mut out).unwrap();
        assert_eq!(out, vec![1.0, 37.0]);

        let cases = [
            (
                "fixed batch",
                model(
                    "Identity",
                    &[tensor("features", FLOAT, &[Some(1), f])],
                    &["features"],
                    tensor("probabilities", FLOAT, &[Some(1), f]),
                    "probabilities",
                ),
                "fixed batch dimension of 1",
            ),
            (
                "rank 3",
                model(
                    "Identity",
                    &[tensor("features", FLOAT, &[n, f, Some(1)])],
                    &["features"],
                    tensor("probabilities", FLOAT, &[n, f, Some(1)]),
                    "probabilities",
                ),
                "expected rank 2",
            ),
            (
                "float64 input",
                model(
                    "Identity",
                    &[tensor("features", DOUBLE, &[n, f])],
                    &["features"],
                    tensor("probabilities", DOUBLE, &[n, f]),
                    "probabilities",
                ),
                "element type is Float64, expected float32",
            ),
            (
                // ArgMax (axis 0, keepdims): int64 [1, 36]; a class index is not a score.
                "int64 output",
                model(
                    "ArgMax",
                    &[tensor("features", FLOAT, &[n, f])],
                    &["features"],
                    tensor("probabilities", INT64, &[Some(1), f]),
                    "probabilities",
                ),
                "expected float32",
            ),
            (
                "two inputs",
                model(
                    "Add",
                    &[tensor("features", FLOAT, &[n, f]), tensor("bias", FLOAT, &[n, f])],
                    &["features", "bias"],
                    tensor("probabilities", FLOAT, &[n, f]),
                    "probabilities",
                ),
                "expected exactly one input",
            ),
        ];
        for (what, bytes, want) in cases {
            let (_d, cfg) = crafted(bytes);
            let err = refused(&cfg);
            assert_eq!(err.reason(), "mismatch", "{what}: {err}");
            assert!(err.to_string().contains(want), "{what}: {err}");
        }
    }

    /// A batch (room for `capacity`) of `n` distinct rows of width `f`.
    fn distinct_rows(f: usize, n: usize, capacity: usize) -> Batch {
        let mut batch = Batch::new(f, capacity);
        for r in 0..n {
            let (_, row, _) = batch.push_row();
            row.iter_mut().enumerate().for_each(|(i, v)| *v = (r * f + i) as f32 / 100.0);
        }
        batch
    }

    #[test]
    fn scorer_serves_repeats_from_the_cache_and_marks_them() {
        let model = Model::load(&model_config()).expect("model");
        let f = model.info.num_columns;
        let mut scorer = Scorer::new(
            model,
            PredictionCache::with_limits(true, 1000, std::time::Duration::from_secs(60), CacheAdmission::Always),
        );
        let mut batch = distinct_rows(f, 3, 4);
        let first = scorer.score(&mut batch).expect("score");
        assert_eq!((first.cache_hits, first.cache_misses), (0, 3));
        let scores = batch.scores.clone();
        // Same rows again plus a new one: three hits, one miss, identical scores.
        let (_, row, _) = batch.push_row();
        row.fill(0.5);
        let second = scorer.score(&mut batch).expect("score");
        assert_eq!((second.cache_hits, second.cache_misses), (3, 1));
        assert_eq!(&batch.scores[..3], &scores[..]);
        assert_eq!(batch.cache_hits, vec![true, true, true, false]);
        assert_eq!(batch.model.as_ref().map(|m| m.version.as_str()), Some("1"));
    }

    #[test]
    fn an_unprofitable_cache_is_bypassed_then_consulted_again() {
        use crate::cache::{Governor, WINDOW_LOOKUPS};
        let model = Model::load(&model_config()).expect("model");
        let f = model.info.num_columns;
        let cache =
            PredictionCache::with_limits(true, 1000, std::time::Duration::from_secs(60), CacheAdmission::Always)
                .with_governor(Some(Governor::default()));
        let mut scorer = Scorer::new(model, cache);
        let mut batch = distinct_rows(f, 2, 2);
        let fresh = scorer.score(&mut batch).expect("score");
        assert_eq!((fresh.cache_hits, fresh.cache_misses), (0, 2));
        let scores = batch.scores.clone();
        assert_eq!(scorer.score(&mut batch).expect("score").cache_hits, 2, "consulted: both rows hit");
        // A window that cost far more than its hits saved (as the scoring calls report it).
        let w = WINDOW_LOOKUPS;
        scorer.cache.account(CacheUse {
            lookups: w,
            hits: 0,
            cache_time: std::time::Duration::from_millis(50),
            inferred: w,
            inference_time: std::time::Duration::from_millis(20),
        });
        let bypassed = scorer.score(&mut batch).expect("score");
        assert_eq!((bypassed.cache_hits, bypassed.cache_misses), (0, 2), "bypassed: inferred, not looked up");
        assert_eq!(batch.scores, scores, "the same scores without the cache");
        assert_eq!(batch.cache_hits, vec![false, false]);
        // Once the bypass's rows are used up, the cache (still holding the rows) is consulted again.
        while !scorer.cache.consult(1 << 16) {}
        assert_eq!(scorer.score(&mut batch).expect("score").cache_hits, 2);
    }

    // ---- deployment: commands and routing ------------------------------------------------

    /// A loaded copy of the shipped model under another version (and threshold).
    fn version(v: &str, threshold: f64) -> (tempfile::TempDir, Model) {
        let (dir, cfg) = model_copy();
        edit_manifest(dir.path(), |m| {
            m["version"] = serde_json::json!(v);
            m["threshold"] = serde_json::json!(threshold);
        });
        let model = Model::load(&cfg).expect("copy loads");
        (dir, model)
    }

    fn versions_of(state: &deploy::DeploymentState) -> (String, Option<String>, Option<String>) {
        (
            state.champion.version.clone(),
            state.challenger.as_ref().map(|(v, _)| v.version.clone()),
            state.rollback.as_ref().map(|v| v.version.clone()),
        )
    }

    #[test]
    fn deployment_commands_follow_the_contract() {
        use deploy::{ChallengerMode, DeployCommand as C, DeployError as E};
        let mut d = deploy::Deployment::new(Model::load(&model_config()).expect("model"));
        let s = |v: &str| Some(v.to_string());
        assert_eq!(d.apply(C::Rollback).unwrap_err(), E::NothingToRollBack);
        assert_eq!(d.apply(C::SetCanaryWeight(0.1)).unwrap_err(), E::NoCanary);
        let (_d2, v2) = version("2", 0.5);
        let bad = C::Challenger { model: Box::new(v2), mode: ChallengerMode::Canary { weight: 1.5 } };
        assert_eq!(d.apply(bad).unwrap_err(), E::BadWeight(1.5));
        assert_eq!(versions_of(&d.state()), ("1".into(), None, None), "a refused command changes nothing");

        let (_d2, v2) = version("2", 0.5);
        let state = d.apply(C::Promote(Box::new(v2))).unwrap();
        assert_eq!(versions_of(&state), ("2".into(), None, s("1")));
        let state = d.apply(C::Rollback).unwrap();
        assert_eq!(versions_of(&state), ("1".into(), None, s("2")), "rollback swaps champion and target");

        let (_d3, v3) = version("3", 0.3);
        let state =
            d.apply(C::Challenger { model: Box::new(v3), mode: ChallengerMode::Canary { weight: 0.2 } }).unwrap();
        assert_eq!(versions_of(&state), ("1".into(), s("3"), s("2")));
        assert_eq!(state.challenger.as_ref().unwrap().1, ChallengerMode::Canary { weight: 0.2 });
        let state = d.apply(C::SetCanaryWeight(0.5)).unwrap();
        assert_eq!(state.challenger.as_ref().unwrap().1, ChallengerMode::Canary { weight: 0.5 });
        assert_eq!(d.apply(C::SetCanaryWeight(-0.1)).unwrap_err(), E::BadWeight(-0.1));
        assert!(d.apply(C::SetCanaryWeight(f64::NAN)).is_err(), "NaN is no weight");
        let roles: Vec<&str> = d.roles().iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(roles, ["champion", "canary", "rollback"]);

        // Promoting the canary's version clears the challenger.
        let (_d3, v3) = version("3", 0.3);
        let state = d.apply(C::Promote(Box::new(v3))).unwrap();
        assert_eq!(versions_of(&state), ("3".into(), None, s("1")));
        let (_d4, v4) = version("4", 0.3);
        d.apply(C::Challenger { model: Box::new(v4), mode: ChallengerMode::Shadow }).unwrap();
        assert_eq!(d.apply(C::SetCanaryWeight(0.1)).unwrap_err(), E::NoCanary, "a shadow is no canary");
        let state = d.apply(C::ClearChallenger).unwrap();
        assert_eq!(versions_of(&state), ("3".into(), None, s("1")));
    }

    #[test]
    fn a_version_with_other_features_is_refused() {
        let mut d = deploy::Deployment::new(Model::load(&model_config()).expect("model"));
        let (dir, cfg) = model_copy();
        // Same width, other meaning: the first two channel categories swap columns.
        edit_manifest(dir.path(), |m| {
            m["version"] = serde_json::json!("9");
            let cats = m["features"][1]["categories"].as_array_mut().unwrap();
            cats.swap(0, 1);
            m["columns"].as_array_mut().unwrap().swap(1, 2);
            m["reference"]["columns"].as_array_mut().unwrap().swap(1, 2);
        });
        let model = Model::load(&cfg).expect("a valid manifest on its own");
        let err = d.apply(deploy::DeployCommand::Promote(Box::new(model))).unwrap_err();
        assert!(matches!(err, deploy::DeployError::IncompatibleFeatures { got_columns: 36, want: 36, .. }), "{err}");
        assert!(err.to_string().contains("fraud_mlp/9") && err.to_string().contains("column 1"), "{err}");
        assert_eq!(d.state().champion.version, "1");
    }

    /// A batch of `keys.len()` rows, each row's features distinct, keyed by `keys` (None = null key).
    fn keyed_batch(keys: &[Option<String>]) -> Batch {
        use crate::batcher::{Entry, EntryKind};
        use crate::features::{IdStr, RowIdentityRef};
        let mut batch = Batch::new(36, keys.len());
        for (i, k) in keys.iter().enumerate() {
            let (row, values, _, ids) = batch.push_row_with_ids();
            values.iter_mut().enumerate().for_each(|(j, v)| *v = (i * 36 + j) as f32 / 7200.0);
            let event_id = format!("event-{i}");
            let identity =
                ids.store(RowIdentityRef { event_id: IdStr::Text(&event_id), transaction_id: "tx", event_time_ms: 0 });
            let key = k.as_ref().map(|k| batch.store_key(k.as_bytes()));
            let topic = batch.topic_id(&Arc::from("t"));
            batch.push_entry(
                Entry {
                    topic,
                    partition: 0,
                    offset: i as i64,
                    epoch: 1,
                    key,
                    headers: None,
                    timestamp_ms: None,
                    kind: EntryKind::Row { row, identity },
                },
                std::time::Instant::now(),
            );
        }
        batch
    }

    #[test]
    fn canary_rows_go_to_the_version_their_key_routes_to_with_that_versions_scores() {
        let cache =
            || PredictionCache::with_limits(true, 1000, std::time::Duration::from_secs(60), CacheAdmission::Always);
        let mut scorer = Scorer::new(Model::load(&model_config()).expect("model"), cache());
        let (_d2, v2) = version("2", 0.5);
        scorer
            .deployment
            .apply(deploy::DeployCommand::Challenger {
                model: Box::new(v2),
                mode: deploy::ChallengerMode::Canary { weight: 0.3 },
            })
            .unwrap();
        let keys: Vec<Option<String>> =
            (0..200).map(|i| if i % 10 == 0 { None } else { Some(format!("acct-{i}")) }).collect();
        let mut batch = keyed_batch(&keys);
        let counts = scorer.score(&mut batch).unwrap();
        assert_eq!(counts.cache_hits + counts.cache_misses, 200);
        // The reference: every row scored by the champion alone (same graph, so same scores).
        let mut reference = Vec::new();
        Model::load(&model_config()).unwrap().infer(&batch.features, 200, &mut reference).unwrap();
        let mut on_canary = 0;
        for (i, k) in keys.iter().enumerate() {
            let route = match k {
                Some(k) => k.clone(),
                None => format!("event-{i}"),
            };
            let want = if deploy::canary_routes(route.as_bytes(), 0.3) { "2" } else { "1" };
            on_canary += usize::from(want == "2");
            assert_eq!(batch.row_model(i).unwrap().version, want, "row {i}");
            assert!((batch.scores[i] - reference[i]).abs() < 1e-6, "row {i}");
        }
        assert!(on_canary > 20 && on_canary < 100, "{on_canary} of 200 on the canary at 30%");
        let last = scorer.last_counts();
        assert_eq!(last.len(), 2);
        assert_eq!((last[0].rows, last[1].rows), (200 - on_canary, on_canary));
        assert_eq!(last[1].role, deploy::Role::Canary);

        // Same batch again: every row is a cache hit, under its own version's key.
        let again = scorer.score(&mut batch).unwrap();
        assert_eq!((again.cache_hits, again.cache_misses), (200, 0));
        // The cache never serves one version's result for another: promoting v2 makes every
        // row a miss again for the rows v1 had scored.
        let (_d2, v2) = version("2", 0.5);
        scorer.deployment.apply(deploy::DeployCommand::Promote(Box::new(v2))).unwrap();
        let promoted = scorer.score(&mut batch).unwrap();
        assert_eq!((promoted.cache_hits, promoted.cache_misses), (on_canary, 200 - on_canary));
        assert!(batch.row_version.iter().all(|&v| v == 0) && batch.versions[0].version == "2");
    }

    #[test]
    fn shadow_scores_every_row_beside_the_champion() {
        let cache = PredictionCache::with_limits(false, 10, std::time::Duration::from_secs(60), CacheAdmission::Always);
        let mut scorer = Scorer::new(Model::load(&model_config()).expect("model"), cache);
        let (_d2, v2) = version("2", 0.5);
        scorer
            .deployment
            .apply(deploy::DeployCommand::Challenger { model: Box::new(v2), mode: deploy::ChallengerMode::Shadow })
            .unwrap();
        let keys: Vec<Option<String>> = (0..50).map(|i| Some(format!("k{i}"))).collect();
        let mut batch = keyed_batch(&keys);
        let counts = scorer.score(&mut batch).unwrap();
        assert_eq!(counts.cache_misses, 50, "totals count the serving scores only");
        assert_eq!(batch.versions.len(), 1);
        assert!(batch.row_version.iter().all(|&v| v == 0), "outputs: the champion only");
        assert_eq!(batch.shadow.as_ref().unwrap().version, "2");
        assert_eq!(batch.shadow_scores.len(), 50);
        assert_eq!(batch.shadow_scores, batch.scores, "same graph, same scores");
        assert_eq!(scorer.last_counts()[1].role, deploy::Role::Shadow);
        scorer.deployment.apply(deploy::DeployCommand::ClearChallenger).unwrap();
        scorer.score(&mut batch).unwrap();
        assert!(batch.shadow.is_none() && batch.shadow_scores.is_empty());
    }
}
