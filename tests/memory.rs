//! Memory budgets of the parts that grow with traffic, measured with a counting allocator (this
//! test binary's own; the tests take turns, since they share the count):
//! - the metrics exporter buffers histogram samples until an upkeep folds them into buckets;
//!   `telemetry::spawn_upkeep` must do that without a scrape, so memory stays bounded when
//!   /metrics is scraped rarely or never;
//! - the per-event latency histograms (`telemetry::EventHistogram`) allocate nothing per
//!   observation;
//! - a full prediction cache (the default 100 000 entries) stays within its documented size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    /// Allocations this thread made (reallocations included), freed or not: other tests' threads
    /// (the upkeep one runs on) do not count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            count_allocation();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
            count_allocation();
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time measures.
static TURN: Mutex<()> = Mutex::new(());

#[test]
fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let recorder = PrometheusBuilder::new().set_buckets(&[0.001, 0.01, 0.1, 1.0]).expect("buckets").build_recorder();
    let handle = recorder.handle();
    let n = 200_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    metrics::with_local_recorder(&recorder, || {
        let h = metrics::histogram!("upkeep_test_seconds");
        for i in 0..n {
            h.record((i % 2000) as f64 * 1e-6);
        }
    });
    let buffered = LIVE.load(Ordering::Relaxed) - before;
    // The exporter keeps every sample until upkeep: this is what grows without it.
    assert!(buffered > 2_000_000, "expected the samples to be buffered, live bytes grew by {buffered}");

    let _upkeep = streamscore::telemetry::spawn_upkeep(handle.clone(), Duration::from_millis(20)).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut live = LIVE.load(Ordering::Relaxed) - before;
    while live > buffered / 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        live = LIVE.load(Ordering::Relaxed) - before;
    }
    assert!(
        live <= buffered / 10,
        "upkeep did not release the buffered samples: {live} of {buffered} bytes still live"
    );

    // Nothing lost: every sample is in the buckets.
    let page = handle.render();
    assert!(page.contains(&format!("upkeep_test_seconds_count {n}")), "{page}");
    // i % 2000 µs: 0..=1000 µs (1001 of every 2000 values) fall at or below 1 ms.
    assert!(page.contains(&format!("upkeep_test_seconds_bucket{{le=\"0.001\"}} {}", n / 2000 * 1001)), "{page}");
}

#[test]
fn per_event_latency_histograms_allocate_nothing_per_observation() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let latency = streamscore::telemetry::event_latency();
    let mut page = String::new();
    latency.processing.render(&mut page);
    let count_before: u64 = count_of(&page, "streamscore_processing_latency_seconds_count");
    let allocations = ALLOCATIONS.with(Cell::get);
    let n = 200_000u64;
    for batch in 0..n / 250 {
        latency.processing.record_batch((0..250).map(|i| (batch * 250 + i) as f64 % 2000.0 * 1e-5));
    }
    assert_eq!(ALLOCATIONS.with(Cell::get) - allocations, 0, "recording allocated");
    let mut page = String::new();
    latency.processing.render(&mut page);
    assert_eq!(count_of(&page, "streamscore_processing_latency_seconds_count") - count_before, n, "{page}");
}

fn count_of(page: &str, name: &str) -> u64 {
    page.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_full_prediction_cache_stays_within_its_budget() {
    use streamscore::cache::PredictionCache;
    use streamscore::config::CacheAdmission;
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let max = 100_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut cache = PredictionCache::with_limits(true, max, Duration::from_secs(600), CacheAdmission::Always);
    // Rows as wide as the shipped model's (36 columns); twice as many distinct rows as fit.
    let mut row = vec![0.5f32; 36];
    for i in 0..2 * max {
        row[0] = i as f32;
        let key = cache.key(1, &row);
        let _ = cache.lookup(&key, &row);
        cache.insert(key, &row, 0.25);
    }
    let entries = cache.entry_count();
    let live = LIVE.load(Ordering::Relaxed) - before;
    assert!(entries > max * 9 / 10 && entries <= max, "{entries} entries");
    // config/streamscore.toml documents ~290 bytes per entry (29 MB at 100 000).
    let per_entry = live / entries as isize;
    assert!(per_entry <= 350, "{per_entry} bytes per entry ({live} bytes for {entries} entries)");
}
