//! Prediction cache: a repeated feature vector under the same model version is not scored again.
//!
//! Keyed by (model version id, 64-bit hash of the feature vector's bit patterns). The version id
//! comes from [`crate::model::ModelInfo::version_id`], so one version never serves another's
//! score. Two different vectors colliding on a 64-bit hash is possible in principle (about 1 in
//! 10^19 per pair); at 10^5 cached entries the chance of any collision per lookup is ~10^-14.

use std::hash::Hasher;
use std::time::Duration;

use crate::config::CacheConfig;

/// Cache key: (model version id, feature-vector hash).
pub type CacheKey = (u64, u64);

/// Bounded (entries) and time-limited (TTL) prediction cache. Disabled caches answer every
/// lookup with a miss and store nothing.
#[derive(Clone)]
pub struct PredictionCache {
    inner: Option<moka::sync::Cache<CacheKey, f32>>,
}

impl PredictionCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        Self::with_limits(cfg.enabled, cfg.max_entries, cfg.ttl)
    }

    pub fn with_limits(enabled: bool, max_entries: u64, ttl: Duration) -> Self {
        let inner = enabled.then(|| moka::sync::Cache::builder().max_capacity(max_entries).time_to_live(ttl).build());
        Self { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The key of `row` under model version `version_id`. `-0.0` and `0.0` hash alike so that
    /// equal inputs hit; NaN never reaches here (the feature stage rejects it).
    pub fn key(version_id: u64, row: &[f32]) -> CacheKey {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for v in row {
            let bits = if *v == 0.0 { 0u32 } else { v.to_bits() };
            h.write_u32(bits);
        }
        (version_id, h.finish())
    }

    pub fn get(&self, key: &CacheKey) -> Option<f32> {
        self.inner.as_ref().and_then(|c| c.get(key))
    }

    pub fn insert(&self, key: CacheKey, score: f32) {
        if let Some(c) = &self.inner {
            c.insert(key, score);
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

    #[test]
    fn hit_after_insert_same_version_only() {
        let c = PredictionCache::with_limits(true, 100, Duration::from_secs(60));
        let row = [1.0f32, 2.5, 0.0];
        let k1 = PredictionCache::key(1, &row);
        assert_eq!(c.get(&k1), None);
        c.insert(k1, 0.75);
        assert_eq!(c.get(&PredictionCache::key(1, &row)), Some(0.75));
        // Another version never sees version 1's score.
        assert_eq!(c.get(&PredictionCache::key(2, &row)), None);
        // A different vector is a different key.
        assert_eq!(c.get(&PredictionCache::key(1, &[1.0, 2.5, 1e-7])), None);
    }

    #[test]
    fn negative_zero_hits_positive_zero() {
        assert_eq!(PredictionCache::key(7, &[0.0, 1.0]), PredictionCache::key(7, &[-0.0, 1.0]));
    }

    #[test]
    fn bounded_entries() {
        let c = PredictionCache::with_limits(true, 50, Duration::from_secs(60));
        for i in 0..1000 {
            c.insert(PredictionCache::key(1, &[i as f32]), i as f32);
        }
        assert!(c.entry_count() <= 50, "entries {}", c.entry_count());
    }

    #[test]
    fn ttl_expires_entries() {
        let c = PredictionCache::with_limits(true, 10, Duration::from_millis(50));
        let k = PredictionCache::key(1, &[3.0]);
        c.insert(k, 0.5);
        assert_eq!(c.get(&k), Some(0.5));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get(&k), None);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let c = PredictionCache::with_limits(false, 10, Duration::from_secs(1));
        let k = PredictionCache::key(1, &[3.0]);
        c.insert(k, 0.5);
        assert_eq!(c.get(&k), None);
        assert!(!c.enabled());
    }
}
