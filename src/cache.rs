//! Prediction cache: a repeated feature vector under the same model version is not scored again.
//!
//! Keyed by (model version id, 64-bit hash of the feature vector's bit patterns). The version id
//! comes from [`crate::model::ModelInfo::version_id`], so one version never serves another's
//! score. The hash is SipHash with random per-process keys, and every entry keeps its feature
//! vector: a hit is served only when the vectors are equal, so neither chance nor an attacker who
//! crafts colliding inputs (to borrow a benign transaction's score) can get a wrong score.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::config::CacheConfig;

/// Cache key: (model version id, feature-vector hash).
pub type CacheKey = (u64, u64);

/// A cached score with the exact row it belongs to.
#[derive(Debug)]
pub struct CachedScore {
    score: f32,
    row: Box<[u32]>,
}

/// Bounded (entries) and time-limited (TTL) prediction cache. Disabled caches answer every
/// lookup with a miss and store nothing.
#[derive(Clone)]
pub struct PredictionCache {
    inner: Option<moka::sync::Cache<CacheKey, Arc<CachedScore>>>,
    hasher: RandomState,
}

/// Bit pattern of a feature value; `-0.0` and `0.0` are equal so that equal inputs hit.
fn bits(v: f32) -> u32 {
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

impl PredictionCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        Self::with_limits(cfg.enabled, cfg.max_entries, cfg.ttl)
    }

    pub fn with_limits(enabled: bool, max_entries: u64, ttl: Duration) -> Self {
        let inner = enabled.then(|| moka::sync::Cache::builder().max_capacity(max_entries).time_to_live(ttl).build());
        Self { inner, hasher: RandomState::new() }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The key of `row` under model version `version_id`. NaN never reaches here (the feature
    /// stage rejects it).
    pub fn key(&self, version_id: u64, row: &[f32]) -> CacheKey {
        let mut h = self.hasher.build_hasher();
        for v in row {
            h.write_u32(bits(*v));
        }
        (version_id, h.finish())
    }

    /// The cached score of exactly `row` (checked element by element), if any.
    pub fn get(&self, key: &CacheKey, row: &[f32]) -> Option<f32> {
        let cached = self.inner.as_ref()?.get(key)?;
        (cached.row.len() == row.len() && cached.row.iter().zip(row).all(|(a, b)| *a == bits(*b)))
            .then_some(cached.score)
    }

    pub fn insert(&self, key: CacheKey, row: &[f32], score: f32) {
        if let Some(c) = &self.inner {
            c.insert(key, Arc::new(CachedScore { score, row: row.iter().map(|v| bits(*v)).collect() }));
        }
    }

    /// Approximate number of entries (moka applies evictions lazily).
    pub fn entry_count(&self) -> u64 {
        self.inner
            .as_ref()
            .map(|c| {
                c.run_pending_tasks();
                c.entry_count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: u64, ttl: Duration) -> PredictionCache {
        PredictionCache::with_limits(true, max, ttl)
    }

    #[test]
    fn hit_after_insert_same_version_only() {
        let c = cache(100, Duration::from_secs(60));
        let row = [1.0f32, 2.5, 0.0];
        let k1 = c.key(1, &row);
        assert_eq!(c.get(&k1, &row), None);
        c.insert(k1, &row, 0.75);
        assert_eq!(c.get(&c.key(1, &row), &row), Some(0.75));
        // Another version never sees version 1's score.
        assert_eq!(c.get(&c.key(2, &row), &row), None);
        // A different vector is a different key.
        let other = [1.0, 2.5, 1e-7];
        assert_eq!(c.get(&c.key(1, &other), &other), None);
    }

    #[test]
    fn a_colliding_key_with_another_row_is_a_miss() {
        // Simulate a hash collision: the same key presented with a different row.
        let c = cache(100, Duration::from_secs(60));
        let row = [1.0f32, 2.0];
        let key = c.key(1, &row);
        c.insert(key, &row, 0.9);
        assert_eq!(c.get(&key, &[1.0, 2.0]), Some(0.9));
        assert_eq!(c.get(&key, &[1.0, 3.0]), None, "never another row's score");
    }

    #[test]
    fn negative_zero_hits_positive_zero() {
        let c = cache(10, Duration::from_secs(60));
        assert_eq!(c.key(7, &[0.0, 1.0]), c.key(7, &[-0.0, 1.0]));
        c.insert(c.key(7, &[0.0, 1.0]), &[0.0, 1.0], 0.5);
        assert_eq!(c.get(&c.key(7, &[-0.0, 1.0]), &[-0.0, 1.0]), Some(0.5));
    }

    #[test]
    fn bounded_entries() {
        let c = cache(50, Duration::from_secs(60));
        for i in 0..1000 {
            let row = [i as f32];
            c.insert(c.key(1, &row), &row, i as f32);
        }
        assert!(c.entry_count() <= 50, "entries {}", c.entry_count());
    }

    #[test]
    fn ttl_expires_entries() {
        let c = cache(10, Duration::from_millis(50));
        let row = [3.0];
        let k = c.key(1, &row);
        c.insert(k, &row, 0.5);
        assert_eq!(c.get(&k, &row), Some(0.5));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get(&k, &row), None);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let c = PredictionCache::with_limits(false, 10, Duration::from_secs(1));
        let row = [3.0];
        let k = c.key(1, &row);
        c.insert(k, &row, 0.5);
        assert_eq!(c.get(&k, &row), None);
        assert!(!c.enabled());
    }
}
