//! Offset tracking for at-least-once delivery.
//!
//! The source registers every batch, in consumption order, with the highest offset it holds per
//! partition. When every outcome of a batch is acknowledged by the broker, the sink marks the
//! batch done. Per partition, the committable offset advances only over a *contiguous prefix* of
//! done batches: a later batch acknowledged first waits for the earlier one, so a crash can
//! repeat outcomes but never skip one. A failed batch blocks its partitions for good (the
//! service stops without committing past it).
//!
//! One lock acquisition per batch, not per event; a condvar lets the source wait for a drain.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A (topic, partition) pair.
pub type TopicPartition = (Arc<str>, i32);

/// Whether `a` and `b` name the same topic. The source hands out one `Arc` per topic name (its
/// entries, assignments and offsets share it), so the pointers decide without comparing the
/// text, which is the fallback for names that came another way.
#[inline]
pub fn same_topic(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    /// The offset to commit once this batch and every earlier one are done (last offset + 1).
    next_offset: i64,
    done: bool,
}

#[derive(Debug, Default)]
struct PartitionState {
    pending: VecDeque<Pending>,
    /// Offset safe to commit (next offset to read), if any batch completed.
    committable: Option<i64>,
    committed: Option<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Partitions this instance owns, with the epoch of the current ownership: bumped on every
    /// assignment, so work consumed under an earlier ownership can be recognised and dropped.
    owned: BTreeMap<TopicPartition, u64>,
    next_epoch: u64,
    /// Batches still in flight: seq → partitions it touches.
    batches: BTreeMap<u64, Vec<TopicPartition>>,
    failed: bool,
}

/// Shared between the source (register, commit, drain) and the sink's delivery callbacks (ack).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl OffsetTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // loses data (the worst case is a commit that lags), so recover from poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers batch `seq` covering, per partition, offsets up to `last_offset`.
    /// Batches must be registered in the order their inputs were consumed.
    pub fn register(&self, seq: u64, last_offsets: &[(TopicPartition, i64)]) {
        let mut g = self.lock();
        for (tp, last) in last_offsets {
            g.partitions.entry(tp.clone()).or_default().pending.push_back(Pending {
                seq,
                next_offset: last + 1,
                done: false,
            });
        }
        g.batches.insert(seq, last_offsets.iter().map(|(tp, _)| tp.clone()).collect());
    }

    /// Every outcome of batch `seq` was acknowledged. Unknown batches (e.g. of a revoked
    /// partition) are ignored.
    pub fn ack(&self, seq: u64) {
        let mut g = self.lock();
        let Some(tps) = g.batches.remove(&seq) else { return };
        for tp in tps {
            if let Some(st) = g.partitions.get_mut(&tp) {
                if let Some(p) = st.pending.iter_mut().find(|p| p.seq == seq) {
                    p.done = true;
                }
                while st.pending.front().is_some_and(|p| p.done) {
                    if let Some(p) = st.pending.pop_front() {
                        st.committable = Some(p.next_offset);
                    }
                }
            }
        }
        drop(g);
        self.changed.notify_all();
    }

    /// An outcome of batch `seq` could not be delivered: nothing at or after it may be committed.
    pub fn fail(&self, seq: u64) {
        let mut g = self.lock();
        g.batches.remove(&seq);
        g.failed = true;
        drop(g);
        self.changed.notify_all();
    }

    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    /// Offsets that advanced since the last [`OffsetTracker::mark_committed`]: (tp, offset to commit).
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        let g = self.lock();
        g.partitions
            .iter()
            .filter_map(|(tp, st)| match (st.committable, st.committed) {
                (Some(c), Some(d)) if c <= d => None,
                (Some(c), _) => Some((tp.clone(), c)),
                _ => None,
            })
            .collect()
    }

    /// Records a successful commit.
    pub fn mark_committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut g = self.lock();
        for (tp, off) in offsets {
            if let Some(st) = g.partitions.get_mut(tp) {
                st.committed = Some(st.committed.map_or(*off, |c| c.max(*off)));
            }
        }
    }

    /// Batches in flight that touch any of `partitions` (all partitions when `None`).
    pub fn in_flight(&self, partitions: Option<&[TopicPartition]>) -> usize {
        let g = self.lock();
        Self::count_in_flight(&g, partitions)
    }

    fn count_in_flight(g: &Inner, partitions: Option<&[TopicPartition]>) -> usize {
        g.partitions
            .iter()
            .filter(|(tp, _)| partitions.is_none_or(|ps| ps.contains(tp)))
            .map(|(_, st)| st.pending.len())
            .sum()
    }

    /// Waits until no batch touching `partitions` is in flight, a failure happened, or `timeout`
    /// passes. Returns true when drained.
    pub fn wait_drained(&self, partitions: Option<&[TopicPartition]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if Self::count_in_flight(&g, partitions) == 0 {
                return true;
            }
            if g.failed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.changed.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Records newly assigned partitions; returns each one's ownership epoch.
    pub fn assign(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, u64)> {
        let mut g = self.lock();
        partitions
            .iter()
            .map(|tp| {
                g.next_epoch += 1;
                let epoch = g.next_epoch;
                g.owned.insert(tp.clone(), epoch);
                (tp.clone(), epoch)
            })
            .collect()
    }

    /// The current ownership epoch of each of `partitions` (None: not owned), under one lock.
    pub fn epochs(&self, partitions: &[TopicPartition]) -> Vec<Option<u64>> {
        let g = self.lock();
        partitions.iter().map(|tp| g.owned.get(tp).copied()).collect()
    }

    /// Every owned partition with its epoch.
    pub fn owned(&self) -> Vec<(TopicPartition, u64)> {
        self.lock().owned.iter().map(|(tp, e)| (tp.clone(), *e)).collect()
    }

    /// Starts every owned partition afresh (after an aborted transaction, before the consumer is
    /// rewound to the committed offsets): in-flight batches are forgotten and every partition
    /// gets a new epoch, so work consumed before the rewind is recognised as stale.
    pub fn rebase_owned(&self) -> Vec<(TopicPartition, u64)> {
        let mut g = self.lock();
        let owned: Vec<TopicPartition> = g.owned.keys().cloned().collect();
        for tp in &owned {
            g.partitions.remove(tp);
        }
        g.batches.clear();
        let mut out = Vec::with_capacity(owned.len());
        for tp in owned {
            g.next_epoch += 1;
            let epoch = g.next_epoch;
            g.owned.insert(tp.clone(), epoch);
            out.push((tp, epoch));
        }
        drop(g);
        self.changed.notify_all();
        out
    }

    /// Forgets `partitions` (after a revoke): they are no longer owned, their pending batches no
    /// longer block anything and late acknowledgements for them are ignored.
    pub fn forget(&self, partitions: &[TopicPartition]) {
        let mut g = self.lock();
        for tp in partitions {
            g.partitions.remove(tp);
            g.owned.remove(tp);
        }
        for tps in g.batches.values_mut() {
            tps.retain(|tp| !partitions.contains(tp));
        }
        drop(g);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        (Arc::from("t"), p)
    }

    #[test]
    fn commits_only_a_contiguous_prefix() {
        let t = OffsetTracker::new();
        t.register(1, &[(tp(0), 9)]);
        t.register(2, &[(tp(0), 19)]);
        t.register(3, &[(tp(0), 29)]);
        // Batch 2 acknowledged first: nothing committable, batch 1 is still in flight.
        t.ack(2);
        assert!(t.committable().is_empty());
        t.ack(1);
        assert_eq!(t.committable(), vec![(tp(0), 20)]);
        t.mark_committed(&[(tp(0), 20)]);
        assert!(t.committable().is_empty(), "nothing new after a commit");
        t.ack(3);
        assert_eq!(t.committable(), vec![(tp(0), 30)]);
    }

    #[test]
    fn partitions_advance_independently() {
        let t = OffsetTracker::new();
        t.register(1, &[(tp(0), 5), (tp(1), 50)]);
        t.register(2, &[(tp(1), 60)]);
        t.ack(2);
        assert!(t.committable().is_empty());
        t.ack(1);
        let mut c = t.committable();
        c.sort();
        assert_eq!(c, vec![(tp(0), 6), (tp(1), 61)]);
    }

    #[test]
    fn a_failure_blocks_commits_past_it() {
        let t = OffsetTracker::new();
        t.register(1, &[(tp(0), 9)]);
        t.register(2, &[(tp(0), 19)]);
        t.fail(1);
        t.ack(2);
        assert!(t.has_failed());
        assert!(t.committable().is_empty(), "never commit past an undelivered outcome");
        assert!(!t.wait_drained(None, Duration::from_millis(10)));
    }

    #[test]
    fn drain_waits_for_acks_of_the_given_partitions() {
        let t = OffsetTracker::new();
        t.register(1, &[(tp(0), 9)]);
        t.register(2, &[(tp(1), 9)]);
        assert!(!t.wait_drained(Some(&[tp(0)]), Duration::from_millis(10)));
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t2.ack(1);
        });
        assert!(t.wait_drained(Some(&[tp(0)]), Duration::from_secs(5)));
        assert_eq!(t.in_flight(Some(&[tp(1)])), 1, "partition 1 still in flight");
        h.join().expect("ack thread");
    }

    #[test]
    fn ownership_epochs_change_with_every_assignment() {
        let t = OffsetTracker::new();
        assert_eq!(t.epochs(&[tp(0)]), vec![None]);
        let first = t.assign(&[tp(0), tp(1)]);
        assert_eq!(t.epochs(&[tp(0), tp(1)]), first.iter().map(|(_, e)| Some(*e)).collect::<Vec<_>>());
        t.forget(&[tp(0)]);
        assert_eq!(t.epochs(&[tp(0)]), vec![None], "revoked: not owned");
        let again = t.assign(&[tp(0)]);
        assert_ne!(Some(again[0].1), Some(first[0].1), "a re-assignment is a new ownership");
    }

    #[test]
    fn rebase_forgets_in_flight_work_and_renews_every_epoch() {
        let t = OffsetTracker::new();
        let before = t.assign(&[tp(0), tp(1)]);
        t.register(1, &[(tp(0), 9)]);
        let after = t.rebase_owned();
        assert_eq!(t.in_flight(None), 0);
        assert_eq!(after.len(), 2);
        for ((_, old), (_, new)) in before.iter().zip(&after) {
            assert_ne!(old, new);
        }
        t.ack(1);
        assert!(t.committable().is_empty(), "an acknowledgement from before the rebase moves nothing");
    }

    #[test]
    fn forgotten_partitions_ignore_late_acks() {
        let t = OffsetTracker::new();
        t.register(1, &[(tp(0), 9), (tp(1), 9)]);
        t.forget(&[tp(0)]);
        t.ack(1);
        assert_eq!(t.committable(), vec![(tp(1), 10)]);
        assert_eq!(t.in_flight(None), 0);
    }
}
