//! Prediction cache: a repeated feature vector under the same model version is not scored again.
//!
//! Keyed by (model version id, 64-bit hash of the feature vector's bit patterns). The version id
//! comes from [`crate::model::ModelInfo::version_id`], so one version never serves another's
//! score. The key's hash is foldhash (its quality variant) with random per-process seeds, and
//! every entry keeps a second, independent fingerprint of its feature vector: SipHash-1-3 (a
//! pseudo-random function) under its own random per-process key. A hit is served only when both
//! agree, so chance (two independent 64-bit hashes colliding) and an attacker who crafts inputs
//! to borrow a benign transaction's score (who would have to predict a keyed SipHash output he
//! never sees) cannot get a wrong score.
//!
//! Cost matters here: with a small model, one inference costs ~0.3 µs per row, so a cache that
//! costs more than that per event makes the service slower. Three choices keep it cheap: the
//! row is hashed four features per folded multiply (SipHash over the same 64 bytes cost ~13% of
//! the scoring thread in a profile); the key is already a keyed hash, so the maps that hold keys
//! use it as their hash ([`KeyHasher`])
//! instead of hashing it again (moka re-hashes every key when its table grows or is cleaned,
//! which profiling showed as the largest single cost); and an entry is 16 bytes inline (score
//! and fingerprint; the fingerprint is computed only for inserts and for lookups that find an
//! entry). Keeping the whole row instead cost ~130 bytes more per entry (13 MB at 100 000).
//!
//! Even so, a moka lookup that finds an entry, or an insert, costs ~0.5–1 µs: more than a small
//! model's inference per row. With `cache.bypass_unprofitable` (default) the cache measures
//! itself: per window of [`WINDOW_LOOKUPS`] lookups, the time spent in it (keys, lookups,
//! inserts) against what its hits saved (hits × the window's inference time per inferred row).
//! A window that cost more than it saved turns the cache off for the next
//! [`FIRST_BYPASS_WINDOWS`] windows' worth of rows, doubling after each further unprofitable
//! window up to [`MAX_BYPASS_WINDOWS`]; then it is consulted again for one window (a probe).
//! A profitable window resets the doubling. Entries stay where they are while bypassed (their
//! TTL still runs). A window need not run to its end when it is hopeless: from
//! [`EARLY_VERDICT_LOOKUPS`] lookups on, once its cost is more than twice what it could save
//! at best (every lookup left a hit), the verdict comes at once. With the shipped model (a lookup
//! ~10× a row's inference) a probe then ends after ~11 000 lookups instead of 65 536, so the
//! probes at start-up and after each bypass cost a sixth of what they did.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tracing::{debug, info};

use crate::config::{CacheAdmission, CacheConfig};
use crate::telemetry::names;

/// Lookups per profitability verdict (see the module docs).
pub const WINDOW_LOOKUPS: u64 = 65_536;
/// A first bypass lasts this many windows' worth of rows.
pub const FIRST_BYPASS_WINDOWS: u64 = 8;
/// The longest bypass, in windows' worth of rows.
pub const MAX_BYPASS_WINDOWS: u64 = 128;
/// Lookups a window takes at least before it can be judged hopeless (see the module docs).
pub const EARLY_VERDICT_LOOKUPS: u64 = 4_096;
/// A window is hopeless once its cost exceeds its best case's savings this many times over: the
/// margin covers the inference time per row changing over the rest of the window.
const EARLY_VERDICT_MARGIN: f64 = 2.0;

/// What one scoring call spent in the cache and in inference (for the profitability check).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheUse {
    /// Rows looked up.
    pub lookups: u64,
    /// Rows served from the cache.
    pub hits: u64,
    /// Time in keys, lookups, de-duplication and inserts.
    pub cache_time: Duration,
    /// Rows that went to inference.
    pub inferred: u64,
    /// Inference time for them.
    pub inference_time: Duration,
}

/// A profitability verdict (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The window paid for itself (or is not complete yet).
    Keep,
    /// The window cost more than it saved: bypass the cache for `rows` rows. `first`: the
    /// window before was profitable (or this is the first verdict).
    Bypass { rows: u64, first: bool, cost_ns_per_lookup: f64, saved_ns_per_lookup: f64 },
}

/// The clock-free profitability check.
#[derive(Debug, Clone)]
pub struct Governor {
    window: CacheUse,
    /// Rows still to bypass (0 = consult the cache).
    bypass_left: u64,
    /// Length of the next bypass, in windows.
    next_windows: u64,
}

impl Default for Governor {
    fn default() -> Self {
        Self { window: CacheUse::default(), bypass_left: 0, next_windows: FIRST_BYPASS_WINDOWS }
    }
}

impl Governor {
    /// Whether `rows` rows should consult the cache; while bypassing, counts them off (and
    /// returns true again once the bypass is used up: the probe).
    pub fn consult(&mut self, rows: u64) -> bool {
        if self.bypass_left == 0 {
            return true;
        }
        self.bypass_left = self.bypass_left.saturating_sub(rows);
        false
    }

    /// Adds one call's use; at the end of a window, the verdict on it.
    pub fn account(&mut self, u: CacheUse) -> Verdict {
        let w = &mut self.window;
        w.lookups += u.lookups;
        w.hits += u.hits;
        w.cache_time += u.cache_time;
        w.inferred += u.inferred;
        w.inference_time += u.inference_time;
        if w.lookups < WINDOW_LOOKUPS && !self.hopeless() {
            return Verdict::Keep;
        }
        let w = std::mem::take(&mut self.window);
        let cost = w.cache_time.as_nanos() as f64;
        // Without any inferred row every lookup hit: nothing to compare with, and the cache
        // served the whole window.
        if w.inferred == 0 {
            self.next_windows = FIRST_BYPASS_WINDOWS;
            return Verdict::Keep;
        }
        let per_row = w.inference_time.as_nanos() as f64 / w.inferred as f64;
        let saved = w.hits as f64 * per_row;
        if cost <= saved {
            self.next_windows = FIRST_BYPASS_WINDOWS;
            return Verdict::Keep;
        }
        let rows = self.next_windows * WINDOW_LOOKUPS;
        let first = self.next_windows == FIRST_BYPASS_WINDOWS;
        self.bypass_left = rows;
        self.next_windows = (self.next_windows * 2).min(MAX_BYPASS_WINDOWS);
        let lookups = w.lookups as f64;
        Verdict::Bypass { rows, first, cost_ns_per_lookup: cost / lookups, saved_ns_per_lookup: saved / lookups }
    }

    /// Whether the unfinished window cannot pay for itself any more: its cost (which only
    /// grows) is beyond [`EARLY_VERDICT_MARGIN`] times what it would save if every lookup left
    /// in the window hit. Its verdict is then a bypass, as at the window's end.
    fn hopeless(&self) -> bool {
        let w = &self.window;
        if w.lookups < EARLY_VERDICT_LOOKUPS || w.inferred == 0 {
            return false;
        }
        let per_row = w.inference_time.as_nanos() as f64 / w.inferred as f64;
        let best = (w.hits + WINDOW_LOOKUPS.saturating_sub(w.lookups)) as f64 * per_row;
        w.cache_time.as_nanos() as f64 > EARLY_VERDICT_MARGIN * best
    }
}

/// Cache key: (model version id, feature-vector hash).
pub type CacheKey = (u64, u64);

/// A cached score and the fingerprint of the row it belongs to.
#[derive(Debug, Clone, Copy)]
struct CachedScore {
    score: f32,
    fingerprint: u64,
}

/// Hasher for [`CacheKey`]s (and anything else keyed by them): the row part is already a
/// foldhash output under per-process random seeds, so it is used as the hash, mixed with the
/// version id. Nobody outside the process can predict a key, so nobody can aim many inputs at
/// one bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `CacheKey` (tuples of u64 call `write_u64`); a correct fallback anyway.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(31) ^ v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// [`BuildHasher`] of [`KeyHasher`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildKeyHasher;

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Bounded (entries) and time-limited (TTL) prediction cache. Disabled caches answer every
/// lookup with a miss and store nothing. Owned by the one thread that scores (lookups update
/// the admission filter, so they take `&mut self`).
#[derive(Clone)]
pub struct PredictionCache {
    inner: Option<moka::sync::Cache<CacheKey, CachedScore, BuildKeyHasher>>,
    /// Seeds of the row hash (a clone shares the seeds, as it shares the moka cache).
    hasher: foldhash::quality::RandomState,
    /// Key of the rows' fingerprints (SipHash-1-3; shared by clones likewise).
    fingerprints: RandomState,
    /// `cache.admission = "seen_twice"`: remembers recent first sightings.
    doorkeeper: Option<Doorkeeper>,
    /// `cache.bypass_unprofitable`: the profitability check.
    governor: Option<Governor>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    /// The cached score of exactly this row.
    Hit(f32),
    /// Not cached; `admit` says whether the score should be inserted once computed.
    Miss { admit: bool },
}

/// The admission filter of `seen_twice` (TinyLFU's "doorkeeper"): a Bloom filter of recent
/// sightings in two generations. A key is "seen" when either generation has it; each
/// generation takes `max_entries` new keys, then the older one is dropped. So it remembers at
/// least the last `max_entries` distinct vectors (the most the cache itself can hold) in about
/// 8 bits per entry, with two probes (about 3% false positives at a full generation: such a
/// vector is inserted at its first sighting, which is harmless).
#[derive(Clone)]
struct Doorkeeper {
    current: Vec<u64>,
    previous: Vec<u64>,
    /// Bit index mask (the number of bits is a power of two).
    mask: u64,
    added: u64,
    generation: u64,
}

impl Doorkeeper {
    fn new(max_entries: u64) -> Self {
        // 8 bits per entry, between 4 Ki bits and 64 Mi bits (8 MiB) per generation.
        let bits = max_entries.saturating_mul(8).clamp(1 << 12, 1 << 26).next_power_of_two();
        let words = (bits / 64) as usize;
        Self { current: vec![0; words], previous: vec![0; words], mask: bits - 1, added: 0, generation: max_entries }
    }

    fn probes(&self, hash: u64) -> [u64; 2] {
        [hash & self.mask, hash.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7 & self.mask]
    }

    fn test(set: &[u64], bit: u64) -> bool {
        set[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Whether `hash` was seen recently; records this sighting.
    fn seen_then_mark(&mut self, hash: u64) -> bool {
        let probes = self.probes(hash);
        if probes.iter().all(|&b| Self::test(&self.current, b)) {
            return true;
        }
        let seen_before = probes.iter().all(|&b| Self::test(&self.previous, b));
        for b in probes {
            self.current[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.added += 1;
        if self.added >= self.generation {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.fill(0);
            self.added = 0;
        }
        seen_before
    }
}

/// Hashes `row`'s bit patterns (see [`bits`]), four features per write (one folded multiply in
/// foldhash), and its length.
fn hash_row(mut h: impl Hasher, row: &[f32]) -> u64 {
    let mut quads = row.chunks_exact(4);
    for q in &mut quads {
        h.write_u128(
            u128::from(bits(q[0]))
                | u128::from(bits(q[1])) << 32
                | u128::from(bits(q[2])) << 64
                | u128::from(bits(q[3])) << 96,
        );
    }
    for v in quads.remainder() {
        h.write_u32(bits(*v));
    }
    h.write_usize(row.len());
    h.finish()
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
        Self::with_limits(cfg.enabled, cfg.max_entries, cfg.ttl, cfg.admission)
            .with_governor(cfg.bypass_unprofitable.then(Governor::default))
    }

    pub fn with_limits(enabled: bool, max_entries: u64, ttl: Duration, admission: CacheAdmission) -> Self {
        let inner = enabled.then(|| {
            moka::sync::Cache::builder().max_capacity(max_entries).time_to_live(ttl).build_with_hasher(BuildKeyHasher)
        });
        let doorkeeper = (enabled && admission == CacheAdmission::SeenTwice).then(|| Doorkeeper::new(max_entries));
        Self {
            inner,
            hasher: foldhash::quality::RandomState::default(),
            fingerprints: RandomState::new(),
            doorkeeper,
            governor: None,
        }
    }

    /// Turns the profitability check on or off (see the module docs); a disabled cache has none.
    pub fn with_governor(mut self, governor: Option<Governor>) -> Self {
        self.governor = governor.filter(|_| self.inner.is_some());
        self
    }

    /// Whether `rows` rows should consult the cache: false when it is disabled or bypassed for
    /// now (see the module docs).
    pub fn consult(&mut self, rows: usize) -> bool {
        if self.inner.is_none() {
            return false;
        }
        let Some(g) = &mut self.governor else { return true };
        let was_bypassing = g.bypass_left > 0;
        let consult = g.consult(rows as u64);
        if was_bypassing && g.bypass_left == 0 {
            debug!("prediction cache: bypass over, consulting it again to re-measure");
            metrics::gauge!(names::CACHE_BYPASSED).set(0.0);
        }
        consult
    }

    /// Reports what a call that consulted the cache spent (see the module docs).
    pub fn account(&mut self, usage: CacheUse) {
        let Some(g) = &mut self.governor else { return };
        if let Verdict::Bypass { rows, first, cost_ns_per_lookup, saved_ns_per_lookup } = g.account(usage) {
            let (cost, saved) = (cost_ns_per_lookup.round(), saved_ns_per_lookup.round());
            if first {
                info!(
                    rows,
                    cost_ns_per_lookup = cost,
                    saved_ns_per_lookup = saved,
                    "prediction cache: it cost more than the inference its hits saved; bypassing it (re-measured \
                     now and then; cache.bypass_unprofitable = false keeps it on)"
                );
            } else {
                debug!(
                    rows,
                    cost_ns_per_lookup = cost,
                    saved_ns_per_lookup = saved,
                    "prediction cache: still unprofitable"
                );
            }
            metrics::gauge!(names::CACHE_BYPASSED).set(1.0);
            metrics::counter!(names::CACHE_BYPASSES).increment(1);
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The key of `row` under model version `version_id`. NaN never reaches here (the feature
    /// stage rejects it).
    pub fn key(&self, version_id: u64, row: &[f32]) -> CacheKey {
        (version_id, hash_row(self.hasher.build_hasher(), row))
    }

    /// The fingerprint that entries keep of their row (see the module docs).
    fn fingerprint(&self, row: &[f32]) -> u64 {
        hash_row(self.fingerprints.build_hasher(), row)
    }

    /// The cached score of `row` (its fingerprint checked too), or whether to insert its score
    /// once computed. With `seen_twice` admission, a vector not seen recently is a
    /// miss without asking the cache (it was never inserted), and is remembered.
    pub fn lookup(&mut self, key: &CacheKey, row: &[f32]) -> Lookup {
        let Some(cache) = &self.inner else { return Lookup::Miss { admit: false } };
        if let Some(d) = &mut self.doorkeeper {
            if !d.seen_then_mark(BuildKeyHasher.hash_one(key)) {
                return Lookup::Miss { admit: false };
            }
        }
        let hit =
            cache.get(key).and_then(|cached| (cached.fingerprint == self.fingerprint(row)).then_some(cached.score));
        match hit {
            Some(score) => Lookup::Hit(score),
            None => Lookup::Miss { admit: true },
        }
    }

    /// Caches `score` for `row` (call it for misses that [`Lookup::Miss`] said to admit).
    pub fn insert(&self, key: CacheKey, row: &[f32], score: f32) {
        if let Some(c) = &self.inner {
            c.insert(key, CachedScore { score, fingerprint: self.fingerprint(row) });
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
        PredictionCache::with_limits(true, max, ttl, CacheAdmission::Always)
    }

    impl PredictionCache {
        fn get(&mut self, key: &CacheKey, row: &[f32]) -> Option<f32> {
            match self.lookup(key, row) {
                Lookup::Hit(score) => Some(score),
                Lookup::Miss { .. } => None,
            }
        }
    }

    #[test]
    fn hit_after_insert_same_version_only() {
        let mut c = cache(100, Duration::from_secs(60));
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

    fn usage(lookups: u64, hits: u64, cache_us: u64, inferred: u64, inference_us: u64) -> CacheUse {
        CacheUse {
            lookups,
            hits,
            cache_time: Duration::from_micros(cache_us),
            inferred,
            inference_time: Duration::from_micros(inference_us),
        }
    }

    #[test]
    fn governor_keeps_a_cache_whose_hits_save_more_than_it_costs() {
        let mut g = Governor::default();
        // Half of the window's lookups hit; a row costs 2 µs to infer, a lookup 0.5 µs.
        let w = WINDOW_LOOKUPS;
        assert_eq!(g.account(usage(w / 2, w / 4, w / 4, w / 4, w / 2)), Verdict::Keep, "window not complete");
        assert_eq!(g.account(usage(w / 2, w / 4, w / 4, w / 4, w / 2)), Verdict::Keep);
        assert!(g.consult(256));
        // A window where every row hit (nothing inferred to compare with) keeps it too.
        assert_eq!(g.account(usage(w, w, w, 0, 0)), Verdict::Keep);
    }

    #[test]
    fn governor_bypasses_an_unprofitable_cache_then_probes_and_backs_off() {
        let mut g = Governor::default();
        let w = WINDOW_LOOKUPS;
        // 10% hits at 0.3 µs per inferred row save 0.03 µs per lookup; lookups cost 0.5 µs.
        let unprofitable = usage(w, w / 10, w / 2, w - w / 10, (w - w / 10) * 3 / 10);
        let Verdict::Bypass { rows, first, cost_ns_per_lookup, saved_ns_per_lookup } = g.account(unprofitable) else {
            panic!("an unprofitable window must bypass");
        };
        assert_eq!((rows, first), (FIRST_BYPASS_WINDOWS * w, true));
        assert!((cost_ns_per_lookup - 500.0).abs() < 1.0, "{cost_ns_per_lookup}");
        assert!((saved_ns_per_lookup - 30.0).abs() < 1.0, "{saved_ns_per_lookup}");
        // Bypassed for exactly that many rows, then consulted again (the probe).
        assert!(!g.consult(rows - 1));
        assert!(!g.consult(1));
        assert!(g.consult(1));
        // Still unprofitable: the next bypass is twice as long, up to the cap.
        let Verdict::Bypass { rows, first, .. } = g.account(unprofitable) else { panic!("bypass") };
        assert_eq!((rows, first), (2 * FIRST_BYPASS_WINDOWS * w, false));
        for _ in 0..10 {
            assert!(!g.consult(u64::MAX));
            assert!(matches!(g.account(unprofitable), Verdict::Bypass { .. }));
        }
        assert_eq!(g.bypass_left, MAX_BYPASS_WINDOWS * w);
        // A profitable probe resets the back-off.
        assert!(!g.consult(u64::MAX));
        assert_eq!(g.account(usage(w, w / 2, w / 4, w / 2, w)), Verdict::Keep);
        let Verdict::Bypass { rows, first, .. } = g.account(unprofitable) else { panic!("bypass") };
        assert_eq!((rows, first), (FIRST_BYPASS_WINDOWS * w, true));
    }

    /// Batch by batch, as the scoring thread reports it: 256 lookups, `hits` of them hits, a
    /// lookup costing `lookup_ns`, an inferred row `row_ns`.
    fn batch_use(hits: u64, lookup_ns: u64, row_ns: u64) -> CacheUse {
        CacheUse {
            lookups: 256,
            hits,
            cache_time: Duration::from_nanos(256 * lookup_ns),
            inferred: 256 - hits,
            inference_time: Duration::from_nanos((256 - hits) * row_ns),
        }
    }

    #[test]
    fn governor_gives_up_on_a_hopeless_window_early() {
        // No hits, a lookup 1 µs, a row 0.1 µs (the shipped model's proportions): after L
        // lookups the cost is L µs and the best case saves (65 536 - L) x 0.1 µs, so the window
        // is hopeless once L > 13 107.2 / 1.2 = 10 922.7, i.e. at the 43rd batch (11 008).
        let mut g = Governor::default();
        let mut calls = 0;
        let verdict = loop {
            calls += 1;
            match g.account(batch_use(0, 1_000, 100)) {
                Verdict::Keep => assert!(calls < 256, "never judged"),
                v => break v,
            }
        };
        assert_eq!(calls, 43, "judged at the first batch past the break-even");
        let Verdict::Bypass { rows, first, cost_ns_per_lookup, saved_ns_per_lookup } = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!((rows, first), (FIRST_BYPASS_WINDOWS * WINDOW_LOOKUPS, true));
        assert!((cost_ns_per_lookup - 1_000.0).abs() < 1.0 && saved_ns_per_lookup == 0.0);
        // The next window starts from nothing.
        assert_eq!(g.window, CacheUse::default());
    }

    #[test]
    fn governor_lets_a_window_that_can_still_pay_run_to_its_end() {
        // A cold cache: the first half of the window misses (it fills the cache), the second
        // half hits. A lookup costs 0.5 µs and a row 2 µs, so the best case stays far above the
        // cost all along, and the full window saved more than it cost.
        let mut g = Governor::default();
        let half = WINDOW_LOOKUPS / 256 / 2;
        for i in 0..2 * half {
            let hits = if i < half { 0 } else { 256 };
            assert_eq!(g.account(batch_use(hits, 500, 2_000)), Verdict::Keep, "batch {i}");
        }
        assert_eq!(g.window, CacheUse::default(), "the window ran to its end and was judged");
        // Costly lookups that could still pay for themselves within the window are not cut
        // short either: 1 µs lookups, 0.4 µs rows, no hits yet. Hopeless only after
        // L > 2 x 0.4 x (65 536 - L), i.e. L > 29 127: not before then.
        let mut g = Governor::default();
        for _ in 0..113 {
            assert_eq!(g.account(batch_use(0, 1_000, 400)), Verdict::Keep);
        }
        assert!(matches!(g.account(batch_use(0, 1_000, 400)), Verdict::Bypass { .. }), "the 114th batch (29 184)");
    }

    #[test]
    fn a_bypassed_cache_is_not_consulted_and_only_a_configured_one_bypasses() {
        let cfg = |bypass| CacheConfig {
            enabled: true,
            max_entries: 100,
            admission: CacheAdmission::Always,
            ttl: Duration::from_secs(60),
            bypass_unprofitable: bypass,
        };
        let w = WINDOW_LOOKUPS;
        let unprofitable = usage(w, 0, w, w, w / 10);
        let mut on = PredictionCache::new(&cfg(true));
        let mut off = PredictionCache::new(&cfg(false));
        for c in [&mut on, &mut off] {
            assert!(c.consult(10));
            c.account(unprofitable);
        }
        assert!(!on.consult(10), "bypassed after an unprofitable window");
        assert!(off.consult(10), "bypass_unprofitable = false: always consulted");
        let mut disabled = PredictionCache::new(&CacheConfig { enabled: false, ..cfg(true) });
        assert!(!disabled.consult(10));
    }

    #[test]
    fn a_colliding_key_with_another_row_is_a_miss() {
        // Simulate a hash collision: the same key presented with a different row.
        let mut c = cache(100, Duration::from_secs(60));
        let row = [1.0f32, 2.0];
        let key = c.key(1, &row);
        c.insert(key, &row, 0.9);
        assert_eq!(c.get(&key, &[1.0, 2.0]), Some(0.9));
        assert_eq!(c.get(&key, &[1.0, 3.0]), None, "never another row's score");
    }

    #[test]
    fn negative_zero_hits_positive_zero() {
        let mut c = cache(10, Duration::from_secs(60));
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
        let mut c = cache(10, Duration::from_millis(50));
        let row = [3.0];
        let k = c.key(1, &row);
        c.insert(k, &row, 0.5);
        assert_eq!(c.get(&k, &row), Some(0.5));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get(&k, &row), None);
    }

    #[test]
    fn scores_round_trip_bit_exactly() {
        let mut c = cache(10, Duration::from_secs(60));
        for (i, score) in [0.0f32, -0.0, 1.0, 0.123_456_79, f32::MIN_POSITIVE, 0.999_999_94].into_iter().enumerate() {
            let row = [i as f32, 2.0];
            c.insert(c.key(1, &row), &row, score);
            assert_eq!(c.get(&c.key(1, &row), &row).map(f32::to_bits), Some(score.to_bits()));
        }
    }

    #[test]
    fn key_hasher_spreads_keys_and_separates_versions() {
        let c = cache(10, Duration::from_secs(60));
        let hash = |k: &CacheKey| BuildKeyHasher.hash_one(k);
        let row = [1.0f32, 2.0];
        let (k1, k2) = (c.key(1, &row), c.key(2, &row));
        assert_ne!(hash(&k1), hash(&k2), "same row, two versions: two hashes");
        // The low bits (bucket index) of nearby rows' hashes are spread: 4096 rows into 64
        // buckets leave no bucket empty and none with more than three times its share.
        let mut buckets = [0u32; 64];
        for i in 0..4096 {
            buckets[(hash(&c.key(1, &[i as f32])) % 64) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 0 && b < 3 * 64), "{buckets:?}");
    }

    #[test]
    fn disabled_cache_never_hits() {
        let mut c = PredictionCache::with_limits(false, 10, Duration::from_secs(1), CacheAdmission::SeenTwice);
        let row = [3.0];
        let k = c.key(1, &row);
        c.insert(k, &row, 0.5);
        assert_eq!(c.get(&k, &row), None);
        assert!(!c.enabled());
    }

    #[test]
    fn seen_twice_inserts_from_the_second_sighting_on() {
        let mut c = PredictionCache::with_limits(true, 1000, Duration::from_secs(60), CacheAdmission::SeenTwice);
        let row = [4.0f32, 2.0];
        let k = c.key(1, &row);
        assert_eq!(c.lookup(&k, &row), Lookup::Miss { admit: false }, "first sighting: not admitted");
        assert_eq!(c.lookup(&k, &row), Lookup::Miss { admit: true }, "second sighting: admitted");
        c.insert(k, &row, 0.25);
        assert_eq!(c.lookup(&k, &row), Lookup::Hit(0.25));
        // Another version of the same row is a first sighting again.
        let k2 = c.key(2, &row);
        assert_eq!(c.lookup(&k2, &row), Lookup::Miss { admit: false });
    }

    #[test]
    fn always_admits_at_the_first_sighting() {
        let mut c = cache(1000, Duration::from_secs(60));
        let row = [4.0f32, 2.0];
        let k = c.key(1, &row);
        assert_eq!(c.lookup(&k, &row), Lookup::Miss { admit: true });
    }

    #[test]
    fn doorkeeper_remembers_at_least_max_entries_and_forgets_old_ones() {
        let max = 1000u64;
        let mut c = PredictionCache::with_limits(true, max, Duration::from_secs(60), CacheAdmission::SeenTwice);
        let keys: Vec<CacheKey> = (0..3 * max).map(|i| c.key(1, &[i as f32])).collect();
        let mut admitted_early = 0;
        for k in &keys[..max as usize] {
            if c.lookup(k, &[0.0]) != (Lookup::Miss { admit: false }) {
                admitted_early += 1; // Bloom false positives
            }
        }
        assert!(admitted_early < max / 20, "{admitted_early} of {max} distinct vectors admitted at first sight");
        // The last `max` distinct vectors are all remembered (no false negatives).
        for k in &keys[..max as usize] {
            assert_eq!(c.lookup(k, &[0.0]), Lookup::Miss { admit: true });
        }
        // Two more generations of new vectors push the first ones out.
        for k in &keys[max as usize..] {
            c.lookup(k, &[0.0]);
        }
        let remembered =
            keys[..max as usize].iter().filter(|k| c.lookup(k, &[0.0]) != (Lookup::Miss { admit: false })).count();
        assert!(remembered < max as usize / 10, "{remembered} of {max} old vectors still remembered");
    }
}
