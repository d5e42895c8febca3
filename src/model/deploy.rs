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

use std::sync::Arc;

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
