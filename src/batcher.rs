//! Micro-batching: the batch buffer and the policy that decides when a batch is complete.
//!
//! A batch closes when it holds `max_batch_size` inputs or when `max_batch_delay` has passed
//! since its *first* input, whichever comes first (the timer starts with the first row, as in
//! Vector's batcher, so a quiet stream never waits longer than the delay). Inputs that were
//! rejected (dead letters) travel in the same batch, in input order, so that outcomes of a
//! partition leave in the order the inputs came.
//!
//! Batches are recycled: the sink hands a finished batch back and [`Batch::clear`] keeps every
//! buffer's capacity, so the `[n, F]` feature buffer is allocated once per batch slot, not per event.
//!
//! With `batch.mode = "adaptive"` the size and the delay are not fixed: [`adaptive`] steers them
//! toward `batch.latency_target` from the timings each batch collects on its way
//! ([`BatchTiming`]), with `max_batch_size` and `max_batch_delay` as upper bounds.

pub mod adaptive;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedHeaders;

use crate::features::{IdArena, IdSpans, RowIdentityRef};
use crate::model::ModelInfo;
use crate::offsets::same_topic;
use crate::outcome::Rejection;

/// Where an input came from and what travels with it to its outcome.
#[derive(Debug)]
pub struct Entry {
    /// The input topic, as an index into its batch's [`Batch::topics`] ([`Batch::topic_id`]).
    pub topic: TopicId,
    pub partition: i32,
    pub offset: i64,
    /// Ownership epoch of the partition when the input was consumed; the sink drops outcomes
    /// of partitions revoked (or re-assigned) since.
    pub epoch: u64,
    /// The input's key, as a span of the batch's key bytes ([`Batch::key`]): copying keys into
    /// one reused buffer costs no allocation per event.
    pub key: Option<KeySpan>,
    pub headers: Option<OwnedHeaders>,
    /// Kafka message timestamp (ms since the epoch), the start of end-to-end latency.
    pub timestamp_ms: Option<i64>,
    pub kind: EntryKind,
}

/// Which of its batch's input topics an entry came from: an index into [`Batch::topics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicId(u32);

impl TopicId {
    /// The topic in `topics` (the topics of the batch that made the id).
    pub fn of(self, topics: &[Arc<str>]) -> &Arc<str> {
        &topics[self.0 as usize]
    }
}

/// Where an entry's key lies in [`Batch::keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpan {
    start: usize,
    len: usize,
}

impl KeySpan {
    /// The key in `keys` (the key bytes of the batch that stored it).
    pub fn of(self, keys: &[u8]) -> &[u8] {
        &keys[self.start..self.start + self.len]
    }
}

/// The input's fate so far.
#[derive(Debug)]
pub enum EntryKind {
    /// Decoded; its features are row `row` of the batch's feature buffer, its identity strings
    /// in the batch's [`Batch::ids`] ([`Batch::identity`]).
    Row { row: usize, identity: IdSpans },
    /// Rejected before inference; the original value goes to the dead-letter topic.
    Rejected { rejection: Rejection, payload: Option<Vec<u8>> },
}

/// A micro-batch: inputs in arrival order plus the contiguous `[rows, F]` feature buffer of the
/// decoded ones.
#[derive(Debug)]
pub struct Batch {
    /// Monotonic sequence number, assigned when the batch is sealed (offset tracking uses it).
    pub seq: u64,
    pub entries: Vec<Entry>,
    /// `[rows, F]` row-major model input.
    pub features: Vec<f32>,
    /// `[rows, F]`: true where the value came from a null input (drift statistics).
    pub missing: Vec<bool>,
    /// One score per row, filled by inference.
    pub scores: Vec<f32>,
    /// One flag per row: the score came from the prediction cache.
    pub cache_hits: Vec<bool>,
    /// The champion version when the batch was scored, set by inference.
    pub model: Option<Arc<ModelInfo>>,
    /// The versions that scored rows of this batch (index 0: the champion; 1: a canary), set by
    /// inference; [`Batch::row_version`] indexes it.
    pub versions: Vec<Arc<ModelInfo>>,
    /// Per row: which of [`Batch::versions`] scored it (its outcome names that version).
    pub row_version: Vec<u8>,
    /// A challenger in shadow mode that scored every row too ([`Batch::shadow_scores`]); its
    /// results go to the monitoring topic only.
    pub shadow: Option<Arc<ModelInfo>>,
    /// One shadow score per row when [`Batch::shadow`] is set, else empty.
    pub shadow_scores: Vec<f32>,
    /// Number of decoded rows.
    pub rows: usize,
    /// When the first input arrived (the deadline runs from here).
    pub first_at: Option<Instant>,
    /// When each input arrived, parallel to `entries` (processing latency at acknowledgement).
    pub received: Vec<Instant>,
    /// When the batch passed each stage.
    pub timing: BatchTiming,
    /// Key bytes of the entries, back to back (see [`Entry::key`], [`Batch::store_key`]).
    pub keys: Vec<u8>,
    /// Identity strings of the decoded entries, back to back (see [`EntryKind::Row`],
    /// [`Batch::identity`]).
    pub ids: IdArena,
    /// The input topics of the entries, each once (see [`Entry::topic`], [`Batch::topic_id`]).
    /// An entry holding its own `Arc` of the topic name cost a reference count taken by the
    /// source and given back by the sink per event, on one cache line the two threads' cores
    /// passed back and forth (~2.5% of the process in `perf`); this takes one per batch.
    pub topics: Vec<Arc<str>>,
    width: usize,
}

/// When a batch passed each stage: what adaptive batching learns from (one set per batch).
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTiming {
    /// The size target in force when the batch was sealed.
    pub target_size: usize,
    /// Sealed by the source (from here on it waits for, or is worked on by, later stages).
    pub sealed_at: Option<Instant>,
    /// Taken by the inference stage.
    pub inference_started: Option<Instant>,
    /// The inference stage's own time on it (cache, ONNX Runtime, drift).
    pub inference: Duration,
    /// Taken by the sink.
    pub sink_started: Option<Instant>,
}

impl Batch {
    /// An empty batch for rows of `width` features with room for `capacity` inputs.
    pub fn new(width: usize, capacity: usize) -> Self {
        Self {
            seq: 0,
            entries: Vec::with_capacity(capacity),
            features: Vec::with_capacity(capacity * width),
            missing: Vec::with_capacity(capacity * width),
            scores: Vec::with_capacity(capacity),
            cache_hits: Vec::with_capacity(capacity),
            model: None,
            versions: Vec::with_capacity(2),
            row_version: Vec::with_capacity(capacity),
            shadow: None,
            shadow_scores: Vec::new(),
            rows: 0,
            first_at: None,
            received: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity * 16),
            ids: IdArena::default(),
            topics: Vec::with_capacity(1),
            timing: BatchTiming::default(),
            width,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Empties the batch, keeping every buffer's capacity.
    pub fn clear(&mut self) {
        self.seq = 0;
        self.entries.clear();
        self.features.clear();
        self.missing.clear();
        self.scores.clear();
        self.cache_hits.clear();
        self.model = None;
        self.versions.clear();
        self.row_version.clear();
        self.shadow = None;
        self.shadow_scores.clear();
        self.rows = 0;
        self.first_at = None;
        self.received.clear();
        self.keys.clear();
        self.ids.clear();
        self.topics.clear();
        self.timing = BatchTiming::default();
    }

    /// The id of `topic` in this batch, added at its first entry (compared by pointer first: the
    /// source names topics with one `Arc` each).
    pub fn topic_id(&mut self, topic: &Arc<str>) -> TopicId {
        let index = match self.topics.iter().position(|t| same_topic(t, topic)) {
            Some(i) => i,
            None => {
                self.topics.push(topic.clone());
                self.topics.len() - 1
            }
        };
        TopicId(index as u32)
    }

    /// The topic of `id` (from [`Batch::topic_id`] on this batch).
    pub fn topic(&self, id: TopicId) -> &Arc<str> {
        id.of(&self.topics)
    }

    /// Copies an input's key into the batch's key bytes, for [`Entry::key`].
    pub fn store_key(&mut self, key: &[u8]) -> KeySpan {
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        KeySpan { start, len: key.len() }
    }

    /// The key bytes of `span` (from [`Batch::store_key`] on this batch).
    pub fn key(&self, span: KeySpan) -> &[u8] {
        span.of(&self.keys)
    }

    /// Appends a zeroed feature row and returns its slices, for the feature stage to fill in place.
    /// If filling fails, call [`Batch::pop_row`].
    pub fn push_row(&mut self) -> (usize, &mut [f32], &mut [bool]) {
        let (row, values, missing, _) = self.push_row_with_ids();
        (row, values, missing)
    }

    /// [`Batch::push_row`], also lending the batch's identity strings (where the decoder stores
    /// the row's ids, [`crate::codec::Decoder::decode_features_into`]).
    pub fn push_row_with_ids(&mut self) -> (usize, &mut [f32], &mut [bool], &mut IdArena) {
        let start = self.rows * self.width;
        self.features.resize(start + self.width, 0.0);
        self.missing.resize(start + self.width, false);
        self.rows += 1;
        (self.rows - 1, &mut self.features[start..], &mut self.missing[start..], &mut self.ids)
    }

    /// The identity of a decoded entry ([`EntryKind::Row`] of this batch).
    pub fn identity(&self, spans: &IdSpans) -> RowIdentityRef<'_> {
        self.ids.identity(spans)
    }

    /// Removes the last row added by [`Batch::push_row`].
    pub fn pop_row(&mut self) {
        if self.rows > 0 {
            self.rows -= 1;
            self.features.truncate(self.rows * self.width);
            self.missing.truncate(self.rows * self.width);
        }
    }

    /// Records an input's entry, received at `now`; starts the deadline clock with the first one.
    pub fn push_entry(&mut self, entry: Entry, now: Instant) {
        if self.first_at.is_none() {
            self.first_at = Some(now);
        }
        self.entries.push(entry);
        self.received.push(now);
    }

    /// The version that scored row `i` (after inference).
    pub fn row_model(&self, i: usize) -> Option<&Arc<ModelInfo>> {
        self.versions.get(usize::from(*self.row_version.get(i)?))
    }

    /// Row `i` of the feature buffer.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.width..(i + 1) * self.width]
    }
}

/// When a batch is complete. Fixed mode: from the configuration; adaptive mode: the controller's
/// current targets ([`adaptive::AdaptiveBatching::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_size: usize,
    pub max_delay: Duration,
}

impl BatchPolicy {
    pub fn new(max_size: usize, max_delay: Duration) -> Self {
        Self { max_size: max_size.max(1), max_delay }
    }

    /// The batch is complete: full, or its first input is `max_delay` old.
    pub fn is_due(&self, batch: &Batch, now: Instant) -> bool {
        batch.len() >= self.max_size
            || batch.first_at.is_some_and(|t| now.saturating_duration_since(t) >= self.max_delay)
    }

    /// How long the source may block waiting for the next input: until the open batch's
    /// deadline, or `idle` when there is no open batch.
    pub fn wait_budget(&self, batch: &Batch, now: Instant, idle: Duration) -> Duration {
        match batch.first_at {
            Some(t) => (t + self.max_delay).saturating_duration_since(now).min(idle),
            None => idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::DeadLetterReason;

    fn entry(offset: i64) -> Entry {
        Entry {
            topic: TopicId(0),
            partition: 0,
            offset,
            epoch: 1,
            key: None,
            headers: None,
            timestamp_ms: None,
            kind: EntryKind::Rejected { rejection: Rejection::new(DeadLetterReason::Truncated, "x"), payload: None },
        }
    }

    #[test]
    fn topics_are_held_once_per_batch_and_cleared_with_it() {
        let mut b = Batch::new(2, 4);
        let (payments, refunds) = (Arc::<str>::from("payments"), Arc::<str>::from("refunds"));
        let ids = [&payments, &refunds, &payments, &Arc::from("payments"), &refunds].map(|t| b.topic_id(t));
        // The same name from another Arc (not interned) is the same topic.
        assert_eq!(ids, [ids[0], ids[1], ids[0], ids[0], ids[1]]);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(&**b.topic(ids[0]), "payments");
        assert_eq!(&**ids[1].of(&b.topics), "refunds");
        assert_eq!(b.topics.len(), 2);
        // One reference per batch and topic, whatever the number of entries.
        assert_eq!(Arc::strong_count(&payments), 2);
        b.clear();
        assert!(b.topics.is_empty());
        assert_eq!(Arc::strong_count(&payments), 1);
    }

    #[test]
    fn keys_are_stored_back_to_back_and_cleared_with_the_batch() {
        let mut b = Batch::new(2, 4);
        let spans: Vec<KeySpan> = [&b"acct-1"[..], b"", b"acct-22"].iter().map(|k| b.store_key(k)).collect();
        assert_eq!(b.key(spans[0]), b"acct-1");
        assert_eq!(b.key(spans[1]), b"");
        assert_eq!(b.key(spans[2]), b"acct-22");
        assert_eq!(spans[2].of(&b.keys), b"acct-22");
        let capacity = b.keys.capacity();
        b.clear();
        assert!(b.keys.is_empty());
        assert_eq!(b.keys.capacity(), capacity, "the buffer is reused");
    }

    #[test]
    fn closes_on_size() {
        let p = BatchPolicy::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut b = Batch::new(2, 3);
        for i in 0..2 {
            b.push_entry(entry(i), t0);
            assert!(!p.is_due(&b, t0));
        }
        b.push_entry(entry(2), t0);
        assert!(p.is_due(&b, t0));
    }

    #[test]
    fn closes_on_deadline_from_first_row() {
        let p = BatchPolicy::new(100, Duration::from_millis(5));
        let t0 = Instant::now();
        let mut b = Batch::new(2, 4);
        assert!(!p.is_due(&b, t0 + Duration::from_secs(10)), "an empty batch is never due");
        assert_eq!(p.wait_budget(&b, t0, Duration::from_millis(100)), Duration::from_millis(100));
        b.push_entry(entry(0), t0);
        // A later row does not restart the clock.
        b.push_entry(entry(1), t0 + Duration::from_millis(4));
        assert!(!p.is_due(&b, t0 + Duration::from_millis(4)));
        assert_eq!(
            p.wait_budget(&b, t0 + Duration::from_millis(4), Duration::from_millis(100)),
            Duration::from_millis(1)
        );
        assert!(p.is_due(&b, t0 + Duration::from_millis(5)));
        assert_eq!(b.received, vec![t0, t0 + Duration::from_millis(4)], "arrival of each input");
        assert_eq!(p.wait_budget(&b, t0 + Duration::from_millis(9), Duration::from_millis(100)), Duration::ZERO);
    }

    #[test]
    fn rows_are_contiguous_and_recycled() {
        let mut b = Batch::new(3, 2);
        let (i, row, missing) = b.push_row();
        assert_eq!(i, 0);
        row.copy_from_slice(&[1.0, 2.0, 3.0]);
        missing[1] = true;
        let (_, row, _) = b.push_row();
        row.copy_from_slice(&[4.0, 5.0, 6.0]);
        let (_, row, _) = b.push_row();
        row[0] = 99.0;
        b.pop_row();
        assert_eq!(b.rows, 2);
        assert_eq!(b.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(b.row(1), &[4.0, 5.0, 6.0]);
        assert_eq!(b.missing, vec![false, true, false, false, false, false]);
        let cap = b.features.capacity();
        b.clear();
        assert!(b.is_empty() && b.rows == 0 && b.first_at.is_none() && b.received.is_empty());
        assert_eq!(b.features.capacity(), cap, "clear keeps the buffer");
        let (_, row, missing) = b.push_row();
        assert_eq!(row, &[0.0, 0.0, 0.0], "a reused row starts zeroed");
        assert_eq!(missing, &[false, false, false]);
    }

    #[test]
    fn identities_are_stored_in_the_batch_and_cleared_with_it() {
        use crate::features::{IdStr, RowIdentityRef};
        let mut b = Batch::new(1, 2);
        let uuid = apache_avro::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let (row, _, _, ids) = b.push_row_with_ids();
        let first = ids.store(RowIdentityRef { event_id: IdStr::Uuid(uuid), transaction_id: "tx-1", event_time_ms: 7 });
        b.push_entry(Entry { kind: EntryKind::Row { row, identity: first }, ..entry(0) }, Instant::now());
        let (row, _, _, ids) = b.push_row_with_ids();
        let second =
            ids.store(RowIdentityRef { event_id: IdStr::Text("e-2"), transaction_id: "tx-é", event_time_ms: -1 });
        b.push_entry(Entry { kind: EntryKind::Row { row, identity: second }, ..entry(1) }, Instant::now());
        let id = b.identity(&first);
        assert_eq!(id.event_id, IdStr::Text("01234567-89ab-cdef-fedc-ba9876543210"), "a uuid is stored as its text");
        assert_eq!((id.transaction_id, id.event_time_ms), ("tx-1", 7));
        let id = b.identity(&second);
        assert_eq!((id.event_id, id.transaction_id, id.event_time_ms), (IdStr::Text("e-2"), "tx-é", -1));
        b.clear();
        let spans = b.ids.store(RowIdentityRef { event_id: IdStr::Text("x"), transaction_id: "", event_time_ms: 0 });
        assert_eq!(b.ids.get(spans.event_id), "x", "cleared with the batch, then reused");
        assert_eq!(b.ids.get(spans.transaction_id), "");
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_entry_fits_two_cache_lines() {
        // The sink's first touch of a batch's entries misses the cache (they were written on the
        // source's core); identity strings kept in the batch's arena instead of inline in each
        // entry made an entry 128 instead of 184 bytes.
        assert!(std::mem::size_of::<Entry>() <= 128, "{} bytes", std::mem::size_of::<Entry>());
    }
}
