//! Model deployment: which loaded versions serve, and how the control plane changes that.
//!
//! The contract between the control plane (the model repository watcher and the admin API,
//! which load, verify and warm up versions on their own threads) and the data plane (the
//! inference thread, which owns the ONNX Runtime sessions):
//!
//! - A version is loaded *beside* the running ones ([`crate::model::Model::load`]: signature,
//!   checksum, graph I/O, warm-up), off the inference thread, and handed over inside a
//!   [`DeployCommand`]. The inference thread applies commands **between two batches**: a switch
//!   is atomic with respect to batches (every row of a batch is scored under one deployment),
//!   no event is lost or scored twice by it, and it takes effect with the next batch.
//! - One **champion** serves. At most one **challenger** runs beside it, either as a
//!   **canary** (it serves a weighted share of keys, chosen by [`canary_routes`]: one key
//!   always maps to one version for a given weight, on every instance) or in **shadow** (it
//!   scores the same rows; its results go to the monitoring topic, never to the scored topic).
//! - The previous champion is kept loaded as the **rollback** target: rollback is a command
//!   like the others and takes effect with the next batch.
//! - Every applied command answers with the new [`DeploymentState`], which is also what the
//!   admin API lists.
//! - [`DeployControl`] is the control plane's handle (`DeployControl::channel()`; the pipeline
//!   takes the [`DeployEnd`] in `pipeline::run_with_control`): it sends commands and reads the
//!   state the inference thread last published. A command sent after the pipeline stopped is
//!   answered with [`DeployError::Stopping`].
//! - A version must have the champion's features and columns ([`Deployment::check_compatible`]):
//!   the decoder builds rows for the startup manifest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{Model, ModelInfo};

/// How a challenger takes part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ChallengerMode {
    /// Serves the keys [`canary_routes`] selects for `weight` (0.0..=1.0).
    Canary { weight: f64 },
    /// Scores every row too; results go to the monitoring topic only.
    Shadow,
}

/// A change of deployment, applied by the inference thread between two batches.
pub enum DeployCommand {
    /// `model` becomes the champion; the current champion becomes the rollback target, and a
    /// challenger that is this very version is cleared.
    Promote(Box<Model>),
    /// `model` becomes the challenger in `mode` (replacing any challenger).
    Challenger { model: Box<Model>, mode: ChallengerMode },
    /// Changes the current canary's weight (an error without a canary).
    SetCanaryWeight(f64),
    /// Removes the challenger (its session is dropped).
    ClearChallenger,
    /// The rollback target becomes the champion again (and the current champion the rollback
    /// target); an error when there is none.
    Rollback,
}

impl std::fmt::Debug for DeployCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |m: &Model| format!("{}/{}", m.info.name, m.info.version);
        match self {
            Self::Promote(m) => write!(f, "Promote({})", v(m)),
            Self::Challenger { model, mode } => write!(f, "Challenger({}, {mode:?})", v(model)),
            Self::SetCanaryWeight(w) => write!(f, "SetCanaryWeight({w})"),
            Self::ClearChallenger => write!(f, "ClearChallenger"),
            Self::Rollback => write!(f, "Rollback"),
        }
    }
}

/// Why a command could not be applied (the deployment is unchanged).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeployError {
    #[error("no previous version to roll back to")]
    NothingToRollBack,
    #[error("no canary is running")]
    NoCanary,
    #[error("canary weight {0} is not between 0 and 1")]
    BadWeight(f64),
    #[error("model {got} has {got_columns} feature columns but the running champion has {want}; the decoder builds rows for the champion's manifest")]
    IncompatibleFeatures { got: String, got_columns: usize, want: usize },
    #[error("the pipeline is stopping")]
    Stopping,
}

/// One version in a [`DeploymentState`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRef {
    pub name: String,
    pub version: String,
}

impl From<&ModelInfo> for VersionRef {
    fn from(i: &ModelInfo) -> Self {
        Self { name: i.name.clone(), version: i.version.clone() }
    }
}

/// What serves now (the answer to every command, and what the admin API lists).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentState {
    pub champion: VersionRef,
    pub challenger: Option<(VersionRef, ChallengerMode)>,
    pub rollback: Option<VersionRef>,
}

/// A command and where its result goes (the sender may have given up waiting).
pub type DeployRequest = (DeployCommand, std::sync::mpsc::Sender<Result<DeploymentState, DeployError>>);

/// The control plane's end of the command channel; the inference thread polls the other end
/// (`try_recv`) between batches.
pub type DeploySender = crossbeam_channel::Sender<DeployRequest>;

/// The deterministic routing hash of a key: FNV-1a 64, the same on every instance, platform
/// and restart (a keyed hash would send one key to different versions on different instances).
pub fn route_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits are weak for short keys: finish with a 64-bit mix (splitmix64's).
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether the canary serves `key` at `weight` (0.0..=1.0): the key's hash falls in the first
/// `weight` of 10 000 buckets. Raising the weight only adds keys to the canary (a key on the
/// canary at 5% stays on it at 20%).
pub fn canary_routes(key: &[u8], weight: f64) -> bool {
    let bucket = route_hash(key) % 10_000;
    (bucket as f64) < weight.clamp(0.0, 1.0) * 10_000.0
}

/// Identity of the versions a batch was scored with: `Arc`s shared by every outcome.
pub type VersionInfo = Arc<ModelInfo>;

/// Applied and rejected deployment commands, by `action` (`promote`, `challenger`,
/// `set_canary_weight`, `clear_challenger`, `rollback`) and `result` (`applied`, `rejected`).
pub const DEPLOYMENTS: &str = "streamscore_model_deployments_total";
/// Shadow results handed to the producer for the monitoring topic, by challenger `model`/`version`.
pub const SHADOW_RECORDS: &str = "streamscore_shadow_records_total";
/// Shadow results that could not be enqueued or delivered (best effort: nothing waits on them).
pub const SHADOW_DELIVERY_FAILURES: &str = "streamscore_shadow_delivery_failures_total";

/// The inference thread's end of the command channel.
pub type DeployReceiver = crossbeam_channel::Receiver<DeployRequest>;

/// The deployment as last published by the inference thread (`None` until the pipeline has
/// loaded its first model).
pub type DeploymentView = Arc<Mutex<Option<DeploymentState>>>;

/// The control plane's handle on a running pipeline: sends commands, reads what serves.
/// Cloneable; the pipeline gets the matching [`DeployEnd`] ([`DeployControl::channel`]).
#[derive(Clone)]
pub struct DeployControl {
    sender: DeploySender,
    state: DeploymentView,
}

/// The pipeline's end of a [`DeployControl`].
pub struct DeployEnd {
    pub receiver: DeployReceiver,
    pub state: DeploymentView,
}

impl DeployControl {
    /// A control handle and the end the pipeline takes (`pipeline::run_with_control`). Commands
    /// wait in a small bounded queue; each is answered once applied.
    pub fn channel() -> (DeployControl, DeployEnd) {
        let (sender, receiver) = crossbeam_channel::bounded(16);
        let state = DeploymentView::default();
        (DeployControl { sender, state: state.clone() }, DeployEnd { receiver, state })
    }

    /// The raw sender, for callers that manage the reply channel themselves.
    pub fn sender(&self) -> DeploySender {
        self.sender.clone()
    }

    /// What serves now (as of the last applied command or the start).
    pub fn state(&self) -> Option<DeploymentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends `command` and blocks until the inference thread has applied (or refused) it, at most
    /// `timeout` (then [`DeployError::Stopping`]: the pipeline is not taking commands). Blocking:
    /// call it from a plain thread or `spawn_blocking`, never on the async reactor.
    pub fn apply(&self, command: DeployCommand, timeout: Duration) -> Result<DeploymentState, DeployError> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.sender.send_timeout((command, reply), timeout).map_err(|_| DeployError::Stopping)?;
        answer.recv_timeout(timeout).map_err(|_| DeployError::Stopping)?
    }
}

/// The `action` label of a command.
pub fn action_label(command: &DeployCommand) -> &'static str {
    match command {
        DeployCommand::Promote(_) => "promote",
        DeployCommand::Challenger { .. } => "challenger",
        DeployCommand::SetCanaryWeight(_) => "set_canary_weight",
        DeployCommand::ClearChallenger => "clear_challenger",
        DeployCommand::Rollback => "rollback",
    }
}

/// The loaded versions, owned by the inference thread: the champion serves; an optional
/// challenger runs beside it; the previous champion stays loaded as the rollback target.
pub struct Deployment {
    pub champion: Model,
    pub challenger: Option<(Model, ChallengerMode)>,
    pub rollback: Option<Model>,
}

/// The role of a loaded version (the `role` label of `streamscore_model_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Champion,
    Canary,
    Shadow,
    Rollback,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Champion => "champion",
            Self::Canary => "canary",
            Self::Shadow => "shadow",
            Self::Rollback => "rollback",
        }
    }
}

fn same_version(a: &ModelInfo, b: &ModelInfo) -> bool {
    a.version_id == b.version_id
}

fn valid_weight(w: f64) -> Result<f64, DeployError> {
    if (0.0..=1.0).contains(&w) {
        Ok(w)
    } else {
        Err(DeployError::BadWeight(w))
    }
}

impl Deployment {
    pub fn new(champion: Model) -> Self {
        Self { champion, challenger: None, rollback: None }
    }

    pub fn state(&self) -> DeploymentState {
        DeploymentState {
            champion: VersionRef::from(&*self.champion.info),
            challenger: self.challenger.as_ref().map(|(m, mode)| (VersionRef::from(&*m.info), *mode)),
            rollback: self.rollback.as_ref().map(|m| VersionRef::from(&*m.info)),
        }
    }

    /// Every loaded version with its role.
    pub fn roles(&self) -> Vec<(VersionInfo, Role)> {
        let mut v = vec![(self.champion.info.clone(), Role::Champion)];
        if let Some((m, mode)) = &self.challenger {
            let role = match mode {
                ChallengerMode::Canary { .. } => Role::Canary,
                ChallengerMode::Shadow => Role::Shadow,
            };
            v.push((m.info.clone(), role));
        }
        if let Some(m) = &self.rollback {
            v.push((m.info.clone(), Role::Rollback));
        }
        v
    }

    /// The decoder builds rows for the startup manifest's features; every deployed version has
    /// the same features (checked on entry), so comparing with the champion is enough.
    pub fn check_compatible(&self, model: &Model) -> Result<(), DeployError> {
        let (want, got) = (&self.champion.manifest, &model.manifest);
        if want.columns != got.columns || want.features != got.features {
            let differs = want.columns.iter().zip(&got.columns).position(|(a, b)| a != b);
            let detail = match differs {
                Some(i) if want.columns.len() == got.columns.len() => {
                    format!(" (column {i} is `{}`, the champion's is `{}`)", got.columns[i], want.columns[i])
                }
                None if want.columns.len() == got.columns.len() => {
                    " (same columns, different feature definitions)".into()
                }
                _ => String::new(),
            };
            return Err(DeployError::IncompatibleFeatures {
                got: format!("{}/{}{detail}", model.info.name, model.info.version),
                got_columns: got.columns.len(),
                want: want.columns.len(),
            });
        }
        Ok(())
    }

    /// Applies `command` (the semantics of [`DeployCommand`]); on error nothing changes. Sessions
    /// that are no longer needed (a replaced challenger, the previous rollback target) are dropped.
    pub fn apply(&mut self, command: DeployCommand) -> Result<DeploymentState, DeployError> {
        match command {
            DeployCommand::Promote(model) => {
                self.check_compatible(&model)?;
                if self.challenger.as_ref().is_some_and(|(c, _)| same_version(&c.info, &model.info)) {
                    self.challenger = None;
                }
                let old = std::mem::replace(&mut self.champion, *model);
                self.rollback = Some(old);
            }
            DeployCommand::Challenger { model, mode } => {
                self.check_compatible(&model)?;
                if let ChallengerMode::Canary { weight } = mode {
                    valid_weight(weight)?;
                }
                self.challenger = Some((*model, mode));
            }
            DeployCommand::SetCanaryWeight(w) => match &mut self.challenger {
                Some((_, ChallengerMode::Canary { weight })) => *weight = valid_weight(w)?,
                _ => return Err(DeployError::NoCanary),
            },
            DeployCommand::ClearChallenger => self.challenger = None,
            DeployCommand::Rollback => {
                let Some(previous) = self.rollback.take() else {
                    return Err(DeployError::NothingToRollBack);
                };
                if self.challenger.as_ref().is_some_and(|(c, _)| same_version(&c.info, &previous.info)) {
                    self.challenger = None;
                }
                let current = std::mem::replace(&mut self.champion, previous);
                self.rollback = Some(current);
            }
        }
        Ok(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_hash_is_stable_across_builds_and_platforms() {
        // Pinned values (computed independently, in Python): changing the hash would move keys
        // between versions in the middle of a rollout.
        assert_eq!(route_hash(b"acct-000001"), 0xef92_8c0f_be50_b742);
        assert_eq!(route_hash(b"acct-000002"), 0xcbf7_69c2_b5a2_ee4a);
        assert_eq!(route_hash(b""), 0xf52a_15e9_a9b5_e89b);
    }

    #[test]
    fn canary_share_matches_the_weight_and_grows_monotonically() {
        let keys: Vec<Vec<u8>> = (0..20_000).map(|i| format!("acct-{i:06}").into_bytes()).collect();
        for weight in [0.0, 0.05, 0.2, 0.5, 1.0] {
            let share = keys.iter().filter(|k| canary_routes(k, weight)).count() as f64 / keys.len() as f64;
            assert!((share - weight).abs() < 0.01, "weight {weight}: share {share}");
        }
        for k in &keys {
            if canary_routes(k, 0.05) {
                assert!(canary_routes(k, 0.2), "a key on the canary at 5% stays on it at 20%");
            }
        }
    }
}
