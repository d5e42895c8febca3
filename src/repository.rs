//! The model repository and the control plane of model versions (docs/admin-api.md).
//!
//! On disk: `<root>/<name>/<version>/manifest.json` (+ the model file and, optionally, the
//! validation dataset and `manifest.json.sig`), `name` being the served model's. A directory
//! whose name starts with `.` is ignored, so a CI job can copy into `.incoming-7/` and rename it
//! to `7/` when complete.
//!
//! [`ControlPlane`] is what the admin API ([`crate::admin`]) and the repository [`Watcher`] act
//! through. It never touches a serving session: it loads and verifies a version
//! ([`Model::load`]) on the caller's (blocking) thread, hands it to the inference thread inside a
//! [`DeployCommand`] through the [`DeploySender`], and waits a bounded time for the
//! [`DeploymentState`] the inference thread answers with (`crate::model::deploy` is the
//! contract). A refused version is listed as failed with its reason; whatever served before keeps
//! serving.
//!
//! One change runs at a time (a lock around each operation): the watcher and two admin calls
//! never interleave a load with a promote. Listing takes only the short state lock, so it answers
//! while a version is being loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, ModelConfig, OnNewVersion, RepositoryConfig};
use crate::model::deploy::{
    ChallengerMode, DeployCommand, DeployControl, DeployError, DeploySender, DeploymentState, VersionRef,
};
use crate::model::manifest::{Manifest, MANIFEST_FILE};
use crate::model::Model;
use crate::telemetry::names;
use crate::validate::{self, LimitOverrides, ValidateOptions, ValidationReport};

/// How long a change waits for the inference thread's answer. It applies commands between two
/// batches, so a healthy pipeline answers within one batch; a stalled one must not hang the API.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The versions of one model on disk.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    name: String,
}

/// One version directory as the last scan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionOnDisk {
    pub version: String,
    pub dir: PathBuf,
    /// sha256 over the manifest's bytes and the size and modification time of every file in
    /// the directory: changes when the manifest changes or a file is (re)copied.
    pub fingerprint: String,
}

impl Repository {
    pub fn new(cfg: &RepositoryConfig) -> Self {
        Self { root: cfg.root.clone(), name: cfg.name.clone() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<root>/<name>/<version>`; `None` for a name that is not a plain directory name.
    pub fn version_dir(&self, version: &str) -> Option<PathBuf> {
        is_version_name(version).then(|| self.root.join(&self.name).join(version))
    }

    /// The version directories holding a `manifest.json`, in version order (numeric where both
    /// names are numbers: `2` before `10`).
    pub fn scan(&self) -> std::io::Result<Vec<VersionOnDisk>> {
        let model_dir = self.root.join(&self.name);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&model_dir)? {
            let entry = entry?;
            let Some(version) = entry.file_name().to_str().map(str::to_string) else { continue };
            if !is_version_name(&version) || !entry.file_type()?.is_dir() {
                continue;
            }
            let dir = entry.path();
            let Ok(manifest) = std::fs::read(dir.join(MANIFEST_FILE)) else { continue };
            out.push(VersionOnDisk { fingerprint: fingerprint(&dir, &manifest), version, dir });
        }
        out.sort_by(|a, b| version_order(&a.version, &b.version));
        Ok(out)
    }
}

/// A directory name that can be a version: not empty, not hidden, no path separators.
pub fn is_version_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Numeric order when both are numbers, else text order.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn fingerprint(dir: &Path, manifest: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(manifest);
    let mut files: Vec<(String, u64, u128)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos();
            Some((e.file_name().to_string_lossy().into_owned(), meta.len(), modified))
        })
        .collect();
    files.sort();
    for (name, len, modified) in files {
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        h.update(modified.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a version stands, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    /// On disk, not loaded.
    Available,
    /// Verified and warmed up beside the champion; serves nothing.
    Loaded,
    Champion,
    Canary {
        weight: f64,
    },
    Shadow,
    /// The previous champion, kept loaded by the inference thread for a rollback.
    Rollback,
    /// The last attempt to load it was refused; `reason` is the `streamscore_model_load_failures_total` label.
    Failed {
        reason: String,
        error: String,
    },
}

/// One line of [`Listing::versions`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    pub version: String,
    #[serde(flatten)]
    pub state: VersionState,
    /// False for a serving version whose directory has been removed since.
    pub on_disk: bool,
}

/// The answer of `GET /admin/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    pub model: String,
    pub repository: PathBuf,
    /// What serves now; `null` until the pipeline has loaded its first model.
    pub deployment: Option<DeploymentState>,
    pub versions: Vec<VersionStatus>,
}

/// Why a change was not made. The deployment is unchanged in every case but `Timeout` (the
/// command may still be applied later; the next answer tells).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("model {model} has no version `{version}` (no {root}/{model}/{version}/manifest.json)")]
    UnknownVersion { model: String, version: String, root: String },
    #[error("version {version} was refused ({reason}): {error}; the running version keeps serving")]
    Refused { version: String, reason: String, error: String },
    #[error("version {version} failed the validation gate; promote with ?force=true to skip it")]
    GateFailed { version: String, report: Box<ValidationReport> },
    #[error("the validation gate could not run on version {version}: {error}")]
    GateError { version: String, error: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the inference thread refused the change: {0}")]
    Deploy(DeployError),
    #[error("the inference thread did not answer within {0:?}; the change may still apply with a later batch")]
    Timeout(Duration),
    #[error("the data plane is not running (its command channel is closed)")]
    Disconnected,
    #[error("cannot read the model repository {path}: {error}")]
    Repository { path: PathBuf, error: String },
}

impl ControlError {
    /// The `result` label of `streamscore_model_changes_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::GateFailed { .. } | Self::GateError { .. } => "gate_failed",
            Self::UnknownVersion { .. } | Self::Conflict(_) | Self::BadRequest(_) | Self::Deploy(_) => "rejected",
            Self::Timeout(_) => "timeout",
            Self::Disconnected | Self::Repository { .. } => "error",
        }
    }
}

/// What the control plane needs from the configuration.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub repository: RepositoryConfig,
    /// Settings every version is loaded with (`dir` replaced by the version's).
    pub model: ModelConfig,
    /// `schemas.reader_schema`, for the validation gate.
    pub reader_schema: PathBuf,
    /// `schemas.max_message_bytes`, for the validation gate.
    pub max_message_bytes: usize,
    pub reply_timeout: Duration,
    /// Rows per warm-up batch (`batch.max_batch_size`): a loaded version runs
    /// [`WARM_UP_BATCHES`] full batches before it can serve.
    pub warm_up_rows: usize,
    /// The configuration file the service was started with (`Config::source`) and the
    /// `model.dir` it named: the watcher re-reads the file, and a changed `model.dir` that
    /// names another version of this model promotes it (a rollback by config change).
    pub config_file: Option<(PathBuf, PathBuf)>,
}

/// Full batches a version runs after loading, before it is handed to the inference thread.
pub const WARM_UP_BATCHES: usize = 3;

impl ControlSettings {
    /// From the checked configuration; `None` when it has no repository (`Config::repository`).
    pub fn from_config(config: &Config) -> Option<Self> {
        Some(Self {
            repository: config.repository.clone()?,
            model: config.model.clone(),
            reader_schema: config.schemas.reader_schema.clone(),
            max_message_bytes: config.schemas.max_message_bytes,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            warm_up_rows: config.batch.max_batch_size,
            config_file: config.source.clone().map(|file| (file, config.model.dir.clone())),
        })
    }
}

/// A refused version, remembered until its directory changes or a load succeeds.
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    error: String,
}

#[derive(Default)]
struct Inner {
    deployment: Option<DeploymentState>,
    /// Verified, warmed-up versions that serve nothing (yet).
    loaded: BTreeMap<String, Model>,
    failed: BTreeMap<String, Failure>,
    /// The watcher's memory: fingerprint of every version seen; `None` before its first scan.
    seen: Option<BTreeMap<String, String>>,
}

/// Loads, verifies and deploys model versions; shared by the admin API and the watcher.
pub struct ControlPlane {
    settings: ControlSettings,
    repo: Repository,
    deploy: DeploySender,
    /// The deployment the inference thread publishes, when the pipeline provides one.
    control: Option<DeployControl>,
    /// One change at a time (held across a load, which can take a while).
    ops: Mutex<()>,
    /// Short-lived: listing never waits for a load.
    inner: Mutex<Inner>,
    /// The config file's `model.dir` last acted on, and its last error (each logged once).
    followed: Mutex<(Option<PathBuf>, Option<String>)>,
}

/// What the watcher did with one version in one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchAction {
    pub version: String,
    /// `new` or `changed`.
    pub change: &'static str,
    /// The policy applied (`ignore`, `load`, ..., or `skipped` for a serving version).
    pub action: &'static str,
    /// `ok` or the error.
    pub result: Result<(), String>,
}

impl ControlPlane {
    /// Over a running pipeline's [`DeployControl`] (`DeployControl::channel()`, whose other
    /// end goes to `pipeline::run_with_control`): commands go through its sender, and what serves
    /// is read from the deployment the inference thread publishes.
    pub fn from_control(settings: ControlSettings, control: &DeployControl) -> Self {
        let mut c = Self::new(settings, control.sender(), None);
        c.control = Some(control.clone());
        c
    }

    /// Over a bare command channel. `initial`: what serves now (the champion the data plane
    /// started with), if known; the inference thread's answers replace it after every change.
    pub fn new(settings: ControlSettings, deploy: DeploySender, initial: Option<DeploymentState>) -> Self {
        let repo = Repository::new(&settings.repository);
        Self {
            followed: Mutex::new((settings.config_file.as_ref().map(|(_, dir)| dir.clone()), None)),
            settings,
            repo,
            deploy,
            control: None,
            ops: Mutex::new(()),
            inner: Mutex::new(Inner { deployment: initial, ..Inner::default() }),
        }
    }

    /// Re-reads the configuration file (with the process environment's overrides, as at start)
    /// and, when its `model.dir` changed to another version directory of this model, promotes
    /// that version (validation gate included): editing `model.dir` back to the previous
    /// version is a rollback without a restart. Returns the version it promoted, if any. An
    /// unreadable or invalid file changes nothing and is logged once per distinct error.
    pub fn follow_config_file(&self) -> Option<String> {
        let (file, _) = self.settings.config_file.as_ref()?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        let dir = match Config::load_with_env(Some(file), &env) {
            Ok(c) => c.model.dir,
            Err(e) => {
                let msg = e.to_string();
                let mut f = self.followed.lock().unwrap_or_else(|e| e.into_inner());
                if f.1.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(file = %file.display(), error = %msg, "config file is invalid; the served version is unchanged");
                    f.1 = Some(msg);
                }
                return None;
            }
        };
        {
            let mut f = self.followed.lock().unwrap_or_else(|e| e.into_inner());
            f.1 = None;
            if f.0.as_deref() == Some(dir.as_path()) {
                return None;
            }
            f.0 = Some(dir.clone());
        }
        let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        let version = dir.file_name().and_then(|v| v.to_str()).map(str::to_string);
        let Some(version) = version.filter(|v| self.repo.version_dir(v).is_some_and(|d| same_dir(&d, &dir))) else {
            tracing::warn!(
                file = %file.display(),
                dir = %dir.display(),
                repository = %self.repo.root().display(),
                "model.dir changed to a directory that is not a version of {} in the repository; the served version is unchanged",
                self.repo.name()
            );
            return None;
        };
        if self.deployment().is_some_and(|d| d.champion.name == self.repo.name() && d.champion.version == version) {
            return None;
        }
        match self.promote(&version, false, &LimitOverrides::default(), "config") {
            Ok(_) => Some(version),
            Err(e) => {
                tracing::warn!(version, error = %e, "model.dir changed in the config file, but the version was not promoted");
                None
            }
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn op(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What serves now: as the inference thread published it, else as it last answered.
    pub fn deployment(&self) -> Option<DeploymentState> {
        self.control.as_ref().and_then(DeployControl::state).or_else(|| self.inner().deployment.clone())
    }

    /// The serving role of `version` now, if any.
    fn role(&self, version: &str) -> Option<VersionState> {
        self.deployment().and_then(|d| state_of(&d, &self.repo.name, version))
    }

    /// Every version on disk or serving, with its state, and the deployment.
    pub fn list(&self) -> Result<Listing, ControlError> {
        let on_disk = self.scan()?;
        let deployment = self.deployment();
        let inner = self.inner();
        let mut versions: Vec<String> = on_disk.iter().map(|v| v.version.clone()).collect();
        let serving = deployment.as_ref().map(|d| serving_versions(d, &self.repo.name)).unwrap_or_default();
        for v in serving.iter().chain(inner.loaded.keys()) {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
        versions.sort_by(|a, b| version_order(a, b));
        let versions = versions
            .into_iter()
            .map(|version| {
                let state = deployment
                    .as_ref()
                    .and_then(|d| state_of(d, &self.repo.name, &version))
                    .or_else(|| inner.loaded.contains_key(&version).then_some(VersionState::Loaded))
                    .or_else(|| {
                        inner
                            .failed
                            .get(&version)
                            .map(|f| VersionState::Failed { reason: f.reason.clone(), error: f.error.clone() })
                    })
                    .unwrap_or(VersionState::Available);
                let on_disk = on_disk.iter().any(|d| d.version == version);
                VersionStatus { version, state, on_disk }
            })
            .collect();
        Ok(Listing { model: self.repo.name.clone(), repository: self.repo.root.clone(), deployment, versions })
    }

    fn scan(&self) -> Result<Vec<VersionOnDisk>, ControlError> {
        self.repo
            .scan()
            .map_err(|e| ControlError::Repository { path: self.repo.root.join(&self.repo.name), error: e.to_string() })
    }

    /// The directory of a version that exists on disk.
    fn existing(&self, version: &str) -> Result<PathBuf, ControlError> {
        let unknown = || ControlError::UnknownVersion {
            model: self.repo.name.clone(),
            version: version.to_string(),
            root: self.repo.root.display().to_string(),
        };
        let dir = self.repo.version_dir(version).ok_or_else(unknown)?;
        if dir.join(MANIFEST_FILE).is_file() {
            Ok(dir)
        } else {
            Err(unknown())
        }
    }

    /// Loads and verifies `version` from disk (signature, checksum, graph I/O, warm-up: a
    /// refusal is counted by [`Model::load`]); it must be the repository's model and version.
    fn load_from_disk(&self, version: &str) -> Result<Model, ControlError> {
        let dir = self.existing(version)?;
        let mut cfg = self.settings.model.clone();
        cfg.dir = dir.clone();
        let result = Model::load(&cfg)
            .map_err(|e| (e.reason().to_string(), e.to_string()))
            .and_then(|m| {
                if m.info.name != self.repo.name || m.info.version != version {
                    Err((
                        "manifest".to_string(),
                        format!(
                            "{} declares model {} version {}, but its directory says {} version {version}; fix the manifest (and re-sign it)",
                            dir.join(MANIFEST_FILE).display(),
                            m.info.name,
                            m.info.version,
                            self.repo.name
                        ),
                    ))
                } else {
                    Ok(m)
                }
            })
            .and_then(|mut m| {
                m.warm_up(self.settings.warm_up_rows, WARM_UP_BATCHES)
                    .map_err(|e| (e.reason().to_string(), format!("warm-up of {}: {e}", dir.display())))?;
                Ok(m)
            });
        let mut inner = self.inner();
        match result {
            Ok(m) => {
                inner.failed.remove(version);
                Ok(m)
            }
            Err((reason, error)) => {
                inner.failed.insert(version.to_string(), Failure { reason: reason.clone(), error: error.clone() });
                Err(ControlError::Refused { version: version.to_string(), reason, error })
            }
        }
    }

    /// A loaded copy of `version` (taken from the loaded set, else loaded now).
    fn take_or_load(&self, version: &str) -> Result<Model, ControlError> {
        if let Some(m) = self.inner().loaded.remove(version) {
            return Ok(m);
        }
        self.load_from_disk(version)
    }

    /// Sends `cmd` to the inference thread and waits (bounded) for its answer.
    fn send(&self, cmd: DeployCommand) -> Result<DeploymentState, ControlError> {
        let timeout = self.settings.reply_timeout;
        let (tx, rx) = std::sync::mpsc::channel();
        self.deploy.send_timeout((cmd, tx), timeout).map_err(|e| match e {
            crossbeam_channel::SendTimeoutError::Timeout(_) => ControlError::Timeout(timeout),
            crossbeam_channel::SendTimeoutError::Disconnected(_) => ControlError::Disconnected,
        })?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(state)) => {
                self.inner().deployment = Some(state.clone());
                Ok(state)
            }
            Ok(Err(e)) => Err(ControlError::Deploy(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ControlError::Timeout(timeout)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Disconnected),
        }
    }

    /// Logs and counts one change (never with a secret: `actor` is who asked, e.g. `watcher`
    /// or `admin 10.0.0.7:51234`).
    fn record<T>(&self, action: &'static str, version: Option<&str>, actor: &str, result: &Result<T, ControlError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(e) => e.result_label(),
        };
        metrics::counter!(names::MODEL_CHANGES, "action" => action, "result" => label).increment(1);
        let model = self.repo.name.as_str();
        let version = version.unwrap_or("-");
        match result {
            Ok(_) => {
                let d = self.deployment();
                let champion = d.as_ref().map_or("-", |d| d.champion.version.as_str());
                let challenger =
                    d.as_ref().and_then(|d| d.challenger.as_ref()).map_or("-".to_string(), |(v, m)| match m {
                        ChallengerMode::Canary { weight } => format!("{} (canary {weight})", v.version),
                        ChallengerMode::Shadow => format!("{} (shadow)", v.version),
                    });
                let rollback = d.as_ref().and_then(|d| d.rollback.as_ref()).map_or("-", |v| v.version.as_str());
                tracing::info!(actor, action, model, version, champion, challenger, rollback, "model change applied");
            }
            Err(e) => {
                tracing::warn!(actor, action, model, version, result = label, error = %e, "model change not applied")
            }
        }
    }

    fn check_not_serving(&self, version: &str, what: &str) -> Result<(), ControlError> {
        match self.role(version) {
            Some(VersionState::Champion) => {
                Err(ControlError::Conflict(format!("version {version} is the champion; {what}")))
            }
            Some(VersionState::Canary { .. } | VersionState::Shadow) => {
                Err(ControlError::Conflict(format!("version {version} is the challenger; {what}")))
            }
            Some(VersionState::Rollback) => {
                Err(ControlError::Conflict(format!("version {version} is the rollback target; {what}")))
            }
            _ => Ok(()),
        }
    }

    /// Verifies and warms up `version` beside the champion (it serves nothing).
    pub fn load(&self, version: &str, actor: &str) -> Result<Listing, ControlError> {
        let _op = self.op();
        let r = self.load_locked(version);
        self.record("load", Some(version), actor, &r);
        r?;
        self.list()
    }

    fn load_locked(&self, version: &str) -> Result<(), ControlError> {
        self.existing(version)?;
        self.check_not_serving(version, "it is loaded already")?;
        if self.inner().loaded.contains_key(version) {
            return Ok(());
        }
        let m = self.load_from_disk(version)?;
        self.inner().loaded.insert(version.to_string(), m);
        Ok(())
    }

    /// Makes `version` the champion (the current one becomes the rollback target). Unless
    /// `force`, the validation gate runs first when the version's manifest has a `validation`
    /// object; `overrides` replace its limits.
    pub fn promote(
        &self,
        version: &str,
        force: bool,
        overrides: &LimitOverrides,
        actor: &str,
    ) -> Result<DeploymentState, ControlError> {
        let _op = self.op();
        let r = self.promote_locked(version, force, overrides);
        self.record(if force { "promote_forced" } else { "promote" }, Some(version), actor, &r);
        r
    }

    fn promote_locked(
        &self,
        version: &str,
        force: bool,
        overrides: &LimitOverrides,
    ) -> Result<DeploymentState, ControlError> {
        let dir = self.existing(version)?;
        if self.role(version) == Some(VersionState::Champion) {
            return Err(ControlError::Conflict(format!("version {version} is the champion already")));
        }
        let gated = Manifest::from_dir(&dir).map(|m| m.validation.is_some()).unwrap_or(false);
        if gated && !force {
            self.gate(version, &dir, overrides)?;
        }
        let model = self.take_or_load(version)?;
        self.send(DeployCommand::Promote(Box::new(model)))
    }

    /// Runs the validation gate; `Ok` when every check passed.
    fn gate(&self, version: &str, dir: &Path, overrides: &LimitOverrides) -> Result<ValidationReport, ControlError> {
        let mut cfg = self.settings.model.clone();
        cfg.dir = dir.to_path_buf();
        let opts = ValidateOptions {
            dataset: None,
            reader_schema: self.settings.reader_schema.clone(),
            max_message_bytes: self.settings.max_message_bytes,
            overrides: overrides.clone(),
        };
        match validate::validate(&cfg, &opts) {
            Ok(report) if report.passed => {
                tracing::info!(model = %self.repo.name, version, "validation gate passed");
                Ok(report)
            }
            Ok(report) => Err(ControlError::GateFailed { version: version.to_string(), report: Box::new(report) }),
            Err(validate::ValidateError::Model(e)) => {
                let (reason, error) = (e.reason().to_string(), e.to_string());
                self.inner()
                    .failed
                    .insert(version.to_string(), Failure { reason: reason.clone(), error: error.clone() });
                Err(ControlError::Refused { version: version.to_string(), reason, error })
            }
            Err(e) => Err(ControlError::GateError { version: version.to_string(), error: e.to_string() }),
        }
    }

    /// Makes `version` the canary at `weight`, or changes the weight of the running canary.
    pub fn canary(&self, version: &str, weight: f64, actor: &str) -> Result<DeploymentState, ControlError> {
        let _op = self.op();
        let r = self.canary_locked(version, weight);
        let action = match &r {
            Ok((_, true)) => "canary_weight",
            _ => "canary",
        };
        let r = r.map(|(s, _)| s);
        self.record(action, Some(version), actor, &r);
        r
    }

    fn canary_locked(&self, version: &str, weight: f64) -> Result<(DeploymentState, bool), ControlError> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(ControlError::BadRequest(format!("weight {weight} is not between 0.0 and 1.0")));
        }
        match self.role(version) {
            Some(VersionState::Canary { .. }) => return Ok((self.send(DeployCommand::SetCanaryWeight(weight))?, true)),
            Some(VersionState::Champion) => {
                return Err(ControlError::Conflict(format!(
                    "version {version} is the champion; it cannot be its own canary"
                )))
            }
            _ => {}
        }
        self.existing(version)?;
        let model = self.take_or_load(version)?;
        let mode = ChallengerMode::Canary { weight };
        Ok((self.send(DeployCommand::Challenger { model: Box::new(model), mode })?, false))
    }

    /// Makes `version` the shadow challenger (scores every row; results to monitoring only).
    pub fn shadow(&self, version: &str, actor: &str) -> Result<DeploymentState, ControlError> {
        let _op = self.op();
        let r = self.shadow_locked(version);
        self.record("shadow", Some(version), actor, &r);
        r
    }

    fn shadow_locked(&self, version: &str) -> Result<DeploymentState, ControlError> {
        match (self.role(version), self.deployment()) {
            (Some(VersionState::Shadow), Some(d)) => return Ok(d),
            (Some(VersionState::Champion), _) => {
                return Err(ControlError::Conflict(format!(
                    "version {version} is the champion; it cannot shadow itself"
                )))
            }
            _ => {}
        }
        self.existing(version)?;
        let model = self.take_or_load(version)?;
        self.send(DeployCommand::Challenger { model: Box::new(model), mode: ChallengerMode::Shadow })
    }

    /// Removes the challenger (canary or shadow).
    pub fn clear_challenger(&self, actor: &str) -> Result<DeploymentState, ControlError> {
        let _op = self.op();
        let version = self.deployment().and_then(|d| d.challenger).map(|(v, _)| v.version);
        let r = match &version {
            None => Err(ControlError::Conflict("there is no challenger to clear".into())),
            Some(_) => self.send(DeployCommand::ClearChallenger),
        };
        self.record("clear_challenger", version.as_deref(), actor, &r);
        r
    }

    /// The rollback target becomes the champion again (with the next batch).
    pub fn rollback(&self, actor: &str) -> Result<DeploymentState, ControlError> {
        let _op = self.op();
        let target = self.deployment().and_then(|d| d.rollback).map(|v| v.version);
        let r = self.send(DeployCommand::Rollback);
        self.record("rollback", target.as_deref(), actor, &r);
        r
    }

    /// Drops a loaded version that serves nothing.
    pub fn unload(&self, version: &str, actor: &str) -> Result<Listing, ControlError> {
        let _op = self.op();
        let r = self.check_not_serving(version, "it is not unloaded while serving").and_then(|_| {
            match self.inner().loaded.remove(version) {
                Some(_) => Ok(()),
                None => Err(ControlError::Conflict(format!("version {version} is not loaded"))),
            }
        });
        self.record("unload", Some(version), actor, &r);
        r?;
        self.list()
    }

    /// One watcher pass: versions that appeared (or whose directory changed) since the last
    /// pass get `on_new_version`. The first pass only records what is there: versions present
    /// at start are listed as available, not acted on.
    pub fn scan_once(&self) -> Result<Vec<WatchAction>, ControlError> {
        let found = match self.scan() {
            Ok(f) => {
                metrics::counter!(names::REPOSITORY_SCANS, "result" => "ok").increment(1);
                f
            }
            Err(e) => {
                metrics::counter!(names::REPOSITORY_SCANS, "result" => "error").increment(1);
                return Err(e);
            }
        };
        let mut changes = Vec::new();
        {
            let mut inner = self.inner();
            let first = inner.seen.is_none();
            let seen = inner.seen.get_or_insert_with(BTreeMap::new);
            for v in &found {
                let change = match seen.insert(v.version.clone(), v.fingerprint.clone()) {
                    None => "new",
                    Some(old) if old != v.fingerprint => "changed",
                    Some(_) => continue,
                };
                if !first {
                    changes.push((v.version.clone(), change));
                }
            }
            seen.retain(|k, _| found.iter().any(|v| &v.version == k));
            for (version, change) in &changes {
                if *change == "changed" {
                    // What is loaded no longer matches the disk: it is reloaded (or refused) below.
                    inner.loaded.remove(version);
                    inner.failed.remove(version);
                }
            }
        }
        let policy = self.settings.repository.on_new_version;
        let mut actions = Vec::new();
        for (version, change) in changes {
            let serving = self.role(&version).is_some();
            tracing::info!(model = %self.repo.name, version = %version, change, policy = policy.as_str(), "model repository: version {change}");
            if serving {
                tracing::warn!(model = %self.repo.name, version = %version,
                    "the directory of a serving version changed; the loaded copy keeps serving until the version is loaded or promoted again");
                actions.push(WatchAction { version, change, action: "skipped", result: Ok(()) });
                continue;
            }
            let result = match policy {
                OnNewVersion::Ignore => Ok(()),
                OnNewVersion::Load => self.load(&version, "watcher").map(|_| ()),
                OnNewVersion::Shadow => self.shadow(&version, "watcher").map(|_| ()),
                OnNewVersion::Canary(w) => self.canary(&version, w, "watcher").map(|_| ()),
                OnNewVersion::Promote => {
                    self.promote(&version, false, &LimitOverrides::default(), "watcher").map(|_| ())
                }
            };
            actions.push(WatchAction {
                version,
                change,
                action: policy.as_str(),
                result: result.map_err(|e| e.to_string()),
            });
        }
        Ok(actions)
    }

    /// Starts the repository watcher (`None` when `model.watch_interval` is zero). Its first
    /// scan runs before this returns, so every version present now is the baseline.
    pub fn spawn_watcher(self: &Arc<Self>) -> std::io::Result<Option<Watcher>> {
        let interval = self.settings.repository.watch_interval;
        if interval.is_zero() {
            return Ok(None);
        }
        if let Err(e) = self.scan_once() {
            tracing::warn!(error = %e, "model repository: first scan failed; retrying every {interval:?}");
        }
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let control = Arc::clone(self);
        let thread = std::thread::Builder::new().name("model-watcher".into()).spawn(move || {
            // A closed or signalled channel ends the loop; a timeout is the next scan.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if let Err(e) = control.scan_once() {
                    tracing::warn!(error = %e, "model repository scan failed");
                }
                control.follow_config_file();
            }
        })?;
        Ok(Some(Watcher { stop: Some(stop), thread: Some(thread) }))
    }
}

/// The running repository watcher; stopping (or dropping) it ends its thread after the scan
/// in progress.
pub struct Watcher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serving_versions(d: &DeploymentState, name: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |r: &VersionRef| {
        if r.name == name {
            v.push(r.version.clone());
        }
    };
    add(&d.champion);
    if let Some((r, _)) = &d.challenger {
        add(r);
    }
    if let Some(r) = &d.rollback {
        add(r);
    }
    v
}

/// The serving role of `version` in `d`, if any (champion first: a version can be both the
/// rollback target and the champion only transiently).
fn state_of(d: &DeploymentState, name: &str, version: &str) -> Option<VersionState> {
    let is = |r: &VersionRef| r.name == name && r.version == version;
    if is(&d.champion) {
        return Some(VersionState::Champion);
    }
    if let Some((r, mode)) = &d.challenger {
        if is(r) {
            return Some(match mode {
                ChallengerMode::Canary { weight } => VersionState::Canary { weight: *weight },
                ChallengerMode::Shadow => VersionState::Shadow,
            });
        }
    }
    d.rollback.as_ref().filter(|r| is(r)).map(|_| VersionState::Rollback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_and_order() {
        for ok in ["1", "2024-05-01", "v2.1_rc"] {
            assert!(is_version_name(ok), "{ok}");
        }
        for bad in ["", ".incoming", "..", "a/b", "a\\b", "x y", "%2e%2e"] {
            assert!(!is_version_name(bad), "{bad}");
        }
        let mut v = vec!["10", "2", "b", "1", "a"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, vec!["1", "2", "10", "a", "b"]);
    }

    #[test]
    fn scan_lists_version_dirs_with_a_manifest_and_fingerprints_changes() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        for v in ["1", "10", "2", ".incoming", "no-manifest"] {
            std::fs::create_dir_all(m.join(v)).unwrap();
            if v != "no-manifest" {
                std::fs::write(m.join(v).join(MANIFEST_FILE), format!("{{\"v\": \"{v}\"}}")).unwrap();
            }
        }
        std::fs::write(m.join("stray-file"), "x").unwrap();
        let repo = Repository { root: root.path().to_path_buf(), name: "m".into() };
        let found = repo.scan().unwrap();
        let names: Vec<&str> = found.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(names, vec!["1", "2", "10"]);
        let before = found[0].fingerprint.clone();
        std::fs::write(m.join("1").join(MANIFEST_FILE), "{\"v\": \"changed\"}").unwrap();
        assert_ne!(repo.scan().unwrap()[0].fingerprint, before);
        assert_eq!(repo.version_dir("../x"), None);
    }

    #[test]
    fn states_follow_the_deployment() {
        let r = |v: &str| VersionRef { name: "m".into(), version: v.into() };
        let d = DeploymentState {
            champion: r("2"),
            challenger: Some((r("3"), ChallengerMode::Canary { weight: 0.2 })),
            rollback: Some(r("1")),
        };
        assert_eq!(state_of(&d, "m", "2"), Some(VersionState::Champion));
        assert_eq!(state_of(&d, "m", "3"), Some(VersionState::Canary { weight: 0.2 }));
        assert_eq!(state_of(&d, "m", "1"), Some(VersionState::Rollback));
        assert_eq!(state_of(&d, "m", "4"), None);
        assert_eq!(state_of(&d, "other", "2"), None);
        let json = serde_json::to_value(VersionStatus {
            version: "3".into(),
            state: VersionState::Canary { weight: 0.2 },
            on_disk: true,
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"version": "3", "state": "canary", "weight": 0.2, "on_disk": true}));
    }
}
