//! Offset commits that never block without a bound.
//!
//! rdkafka's synchronous commit (`rd_kafka_commit` with `async = 0`) waits for the broker's answer
//! without a timeout: while the group coordinator is unreachable, the commit waits for one to be
//! found, and the source thread with it (so a stop during a broker outage would never finish).
//! Its asynchronous commit reports nowhere the application can read when the consumer uses the
//! event API, as rdkafka does. So commits go through librdkafka's `rd_kafka_commit_queue` with a
//! queue of our own: [`CommitQueue::send`] returns at once, and each commit's result (the overall
//! error and the per-partition ones) comes out of [`CommitQueue::result`], which the caller reads
//! without waiting in its loop, or with a bounded wait where it must know (on revoke, on stop).
//!
//! A [`CommitQueue`] must be dropped before its consumer (a queue still alive when the consumer is
//! destroyed can hang librdkafka's destroy). Dropping it frees the results still in it; a commit
//! in flight still completes at the broker.

use std::cell::Cell;
use std::ffi::CStr;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::fetch::AppQueue;

/// A queue that receives the results of the commits sent through it.
pub struct CommitQueue {
    own: AppQueue,
    /// Commits sent whose result has not been read yet.
    pending: Cell<usize>,
}

/// The result of one commit.
#[derive(Debug, PartialEq, Eq)]
pub struct CommitResult {
    /// The commit's overall error, if any (then nothing was committed).
    pub error: Option<RDKafkaErrorCode>,
    /// The partitions committed, with their offsets (the next offset to consume).
    pub committed: Vec<(String, i32, i64)>,
    /// The partitions the broker refused, with its error for each.
    pub refused: Vec<(String, i32, RDKafkaErrorCode)>,
}

impl CommitResult {
    /// Whether every partition of the commit was committed.
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && self.refused.is_empty()
    }
}

impl CommitQueue {
    /// A new, empty queue of `consumer`'s client.
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        Self { own: AppQueue::new(consumer), pending: Cell::new(0) }
    }

    /// Sends a commit of `offsets` (each the next offset to consume) to the group coordinator
    /// and returns at once; the result comes out of [`CommitQueue::result`]. An error here means
    /// the commit was not sent (the consumer has no group).
    pub fn send(&self, offsets: &TopicPartitionList) -> Result<(), RDKafkaErrorCode> {
        // librdkafka copies the list; no callback: the result is posted to the queue as an event.
        let err = unsafe {
            rd::rd_kafka_commit_queue(
                self.own.rk.as_ptr(),
                offsets.ptr(),
                self.own.queue.as_ptr(),
                None,
                std::ptr::null_mut(),
            )
        };
        match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::NoError => {
                self.pending.set(self.pending.get() + 1);
                Ok(())
            }
            code => Err(code),
        }
    }

    /// How many commits were sent whose result has not been read yet (while the coordinator is
    /// unreachable, librdkafka holds a commit until it finds one).
    pub fn pending(&self) -> usize {
        self.pending.get()
    }

    /// The result of a commit sent earlier, waiting up to `timeout` (rounded up to whole
    /// milliseconds; zero: no wait) for one; `None` when none came.
    pub fn result(&self, timeout: Duration) -> Option<CommitResult> {
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        loop {
            let event = NonNull::new(unsafe { rd::rd_kafka_queue_poll(self.own.queue.as_ptr(), ms) })?;
            let event = Event(event);
            if unsafe { rd::rd_kafka_event_type(event.0.as_ptr()) } != rd::RD_KAFKA_EVENT_OFFSET_COMMIT {
                // Nothing else is posted here; skip anything that is.
                continue;
            }
            let error = match RDKafkaErrorCode::from(unsafe { rd::rd_kafka_event_error(event.0.as_ptr()) }) {
                RDKafkaErrorCode::NoError => None,
                code => Some(code),
            };
            self.pending.set(self.pending.get().saturating_sub(1));
            let mut result = CommitResult { error, committed: Vec::new(), refused: Vec::new() };
            // The list belongs to the event (destroyed with it).
            let list = unsafe { rd::rd_kafka_event_topic_partition_list(event.0.as_ptr()).as_ref() };
            let elems = match list {
                Some(l) if !l.elems.is_null() && l.cnt > 0 => unsafe {
                    std::slice::from_raw_parts(l.elems, usize::try_from(l.cnt).unwrap_or(0))
                },
                _ => &[],
            };
            for e in elems {
                if e.topic.is_null() {
                    continue;
                }
                let topic = unsafe { CStr::from_ptr(e.topic) }.to_string_lossy().into_owned();
                match RDKafkaErrorCode::from(e.err) {
                    RDKafkaErrorCode::NoError if error.is_none() && e.offset >= 0 => {
                        result.committed.push((topic, e.partition, e.offset))
                    }
                    RDKafkaErrorCode::NoError => {}
                    code => result.refused.push((topic, e.partition, code)),
                }
            }
            return Some(result);
        }
    }
}

/// An event taken from the queue, destroyed when dropped.
struct Event(NonNull<rd::rd_kafka_event_t>);

impl Drop for Event {
    fn drop(&mut self) {
        unsafe { rd::rd_kafka_event_destroy(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};

    use super::CommitQueue;
    use crate::testing::{assigned_consumer, mock_cluster};

    /// A commit sent through the queue returns at once; its result comes out of the queue with
    /// the committed offsets, and the group's committed offsets are then those.
    #[test]
    fn a_commit_reports_its_result_on_the_queue_and_is_committed() {
        let (_owner, bootstrap) = mock_cluster(&["in", "other"]);
        let consumer = assigned_consumer(&bootstrap, "g-commit", &["in", "other"]);
        let queue = CommitQueue::new(&consumer);
        assert!(queue.result(Duration::ZERO).is_none(), "nothing before a commit");

        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 0, Offset::Offset(5)).expect("offset");
        tpl.add_partition_offset("other", 0, Offset::Offset(7)).expect("offset");
        queue.send(&tpl).expect("commit sent");
        assert_eq!(queue.pending(), 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            if let Some(r) = queue.result(Duration::from_millis(100)) {
                break r;
            }
            assert!(Instant::now() < deadline, "no commit result within 30 s");
        };
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(queue.pending(), 0);
        let mut committed = result.committed.clone();
        committed.sort();
        assert_eq!(committed, vec![("in".to_string(), 0, 5), ("other".to_string(), 0, 7)]);
        let read = consumer.committed(Duration::from_secs(10)).expect("committed offsets");
        let mut offsets: Vec<_> = read.elements().iter().map(|e| (e.topic().to_string(), e.offset())).collect();
        offsets.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(offsets, vec![("in".to_string(), Offset::Offset(5)), ("other".to_string(), Offset::Offset(7))]);
        assert!(queue.result(Duration::ZERO).is_none(), "one result per commit");
        drop(queue);
    }

    /// A commit the broker refuses (partitions it does not have) reports its error and each
    /// refused partition, and commits nothing.
    #[test]
    fn a_refused_commit_reports_its_errors_and_commits_nothing() {
        let (_owner, bootstrap) = mock_cluster(&["in"]);
        let consumer = assigned_consumer(&bootstrap, "g-refused", &["in"]);
        let queue = CommitQueue::new(&consumer);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 7, Offset::Offset(5)).expect("offset");
        tpl.add_partition_offset("missing", 0, Offset::Offset(5)).expect("offset");
        queue.send(&tpl).expect("commit sent");
        let result = queue.result(Duration::from_secs(30)).expect("a result within 30 s");
        assert!(!result.is_ok());
        assert!(result.error.is_some(), "{result:?}");
        assert!(result.committed.is_empty(), "{result:?}");
        let mut refused: Vec<_> = result.refused.iter().map(|(t, p, _)| (t.as_str(), *p)).collect();
        refused.sort();
        assert_eq!(refused, vec![("in", 7), ("missing", 0)]);
        assert_eq!(queue.pending(), 0);
    }
}
