//! Fetched messages read in batches: one queue lock and one wait per batch instead of per message.
//!
//! rdkafka's `BaseConsumer::poll` returns one message per call, and every call costs librdkafka a
//! queue lock, three clock reads, an event wrapper and a poll-interval record, plus rdkafka's own
//! deadline bookkeeping. librdkafka's batch read (`rd_kafka_consume_batch_queue`) cannot be used on
//! the consumer queue itself: rdkafka 0.39 takes rebalances through librdkafka's event API, and a
//! rebalance met by the batch read is answered with a forced unassign behind the application's
//! back. So the fetched messages of each assigned partition are routed to a queue of their own
//! ([`FetchQueue::route`], called before the partition is assigned): it holds nothing but fetched
//! messages and per-partition consumer errors. Rebalances, commit results, statistics and client
//! errors stay on the consumer queue, which the caller keeps serving with `poll`.
//!
//! librdkafka clears a partition's route when its fetcher stops (revoke, unassign) but remembers
//! that the application set one, so the next fetch start does not route it to the consumer queue
//! either: a route must be set again on every assignment, before librdkafka starts fetching. That
//! order holds: librdkafka starts newly assigned partitions only once every stopping one has
//! stopped, and the group rejoins (and assigns anew) only after a revocation is done. A partition
//! left without a route would not lose messages (they stay fetched and uncommitted) but would
//! stall; the source also routes its owned partitions again once per commit interval.
//! A seek, pause or revoke bumps the partition's version, and messages fetched before it are
//! dropped by the batch read exactly as `poll` drops them. A message that reached the consumer
//! queue before its partition was routed still comes out of `poll`.
//!
//! A [`FetchQueue`] must be dropped before its consumer (like a `TopicPartitionList`, a queue or
//! message still alive when the consumer is destroyed can hang librdkafka's destroy).

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::{ClientContext, Timestamp, TopicPartitionList};

/// A queue of the application's own on a consumer's client (`rd_kafka_queue_new`), destroyed
/// when dropped; it must be dropped before the consumer. What librdkafka posts to it is up to the
/// owner ([`FetchQueue`], `commit::CommitQueue`).
pub(super) struct AppQueue {
    pub(super) queue: NonNull<rd::rd_kafka_queue_t>,
    pub(super) rk: NonNull<rd::rd_kafka_t>,
}

// librdkafka's queue handles may be used from any thread.
unsafe impl Send for AppQueue {}

impl AppQueue {
    /// A new, empty queue of `consumer`'s client.
    pub(super) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        let rk = consumer.client().native_ptr();
        // Non-null for a live client (librdkafka allocates with an aborting allocator).
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(rk) }).expect("rd_kafka_queue_new returned null");
        Self { queue, rk: NonNull::new(rk).expect("a live consumer has a client") }
    }
}

impl Drop for AppQueue {
    fn drop(&mut self) {
        // Disables the queue: what is still in it is freed, what is posted to it later is dropped
        // by librdkafka.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// A queue that receives the fetched messages of the partitions routed to it.
pub struct FetchQueue {
    own: AppQueue,
    /// The messages of the last read (destroyed when its [`Fetched`] is dropped); reused.
    buf: Vec<*mut rd::rd_kafka_message_t>,
}

// `buf` is empty between reads (a `Fetched` borrows the queue mutably, so no message pointer
// outlives its read).
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new, empty queue of `consumer`'s client. Nothing arrives until partitions are routed.
    /// Dropping it frees the messages still in it; ones routed here later are dropped by
    /// librdkafka (never handed out, so never committed: they are read again later).
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        Self { own: AppQueue::new(consumer), buf: Vec::new() }
    }

    /// Routes the fetched messages of `topic`/`partition` here from now on. Call it before the
    /// partition is assigned (in the rebalance callback), so that none of its messages go to the
    /// consumer queue; calling it again for a routed partition changes nothing. False when
    /// librdkafka has no such partition handle (the topic name holds a NUL byte, or the client is
    /// a producer): its messages then keep coming out of `poll`.
    pub fn route(&self, topic: &str, partition: i32) -> bool {
        let Ok(name) = CString::new(topic) else { return false };
        let fetchq = unsafe { rd::rd_kafka_queue_get_partition(self.own.rk.as_ptr(), name.as_ptr(), partition) };
        if fetchq.is_null() {
            return false;
        }
        unsafe {
            // Marks the route as the application's: librdkafka's fetch start will not undo it.
            rd::rd_kafka_queue_forward(fetchq, self.own.queue.as_ptr());
            // Only the handle: the partition's queue keeps forwarding (and holds this queue).
            rd::rd_kafka_queue_destroy(fetchq);
        }
        true
    }

    /// Routes every partition of `assignment` (see [`FetchQueue::route`]); returns the ones that
    /// could not be routed (none, normally: their messages keep coming out of `poll`).
    pub fn route_all(&self, assignment: &TopicPartitionList) -> Vec<(String, i32)> {
        let mut failed = Vec::new();
        for e in assignment.elements() {
            if !self.route(e.topic(), e.partition()) {
                failed.push((e.topic().to_owned(), e.partition()));
            }
        }
        failed
    }

    /// Reads up to `max` messages (at least one is asked for): what is already fetched, and when
    /// nothing is, waits up to `timeout` (rounded up to whole milliseconds) for a first message
    /// and then takes what has arrived with it. Every message is stamped by the caller after
    /// this returns, so none is held back waiting for others.
    pub fn read(&mut self, timeout: Duration, max: usize) -> Fetched<'_> {
        let max = max.max(1);
        self.buf.clear();
        self.buf.reserve(max);
        if self.consume(0, max) == 0 {
            let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            if ms > 0 && self.consume(ms, 1) == 1 && max > 1 {
                self.consume(0, max - 1);
            }
        }
        Fetched { queue: self }
    }

    /// One batch read appended to `buf`; how many messages it returned.
    fn consume(&mut self, timeout_ms: i32, n: usize) -> usize {
        let len = self.buf.len();
        debug_assert!(self.buf.capacity() - len >= n);
        // SAFETY: librdkafka writes at most `n` message pointers into the spare capacity.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(self.own.queue.as_ptr(), timeout_ms, self.buf.as_mut_ptr().add(len), n)
        };
        let got = usize::try_from(got).unwrap_or(0).min(n);
        unsafe { self.buf.set_len(len + got) };
        got
    }
}

/// A consumer's fetch queue, kept in its context (the rebalance callback routes through it):
/// install it with [`Routing::install`] before the first poll, call [`Routing::on_assign`] from
/// `pre_rebalance` (`Routing` is itself the context of a consumer that needs nothing else), and
/// [`Routing::close`] before the consumer is dropped ([`Routing::installed`] does both).
#[derive(Default)]
pub struct Routing {
    fetch: Mutex<Option<FetchQueue>>,
}

impl Routing {
    /// Gives `consumer` (whose context holds this) its fetch queue.
    pub fn install<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        *self.queue() = Some(FetchQueue::new(consumer));
    }

    /// Routes every partition of a new assignment (see [`FetchQueue::route`]); a partition that
    /// cannot be routed is logged, and its messages come out of `poll`.
    pub fn on_assign(&self, assignment: &TopicPartitionList) {
        if let Some(fetch) = self.queue().as_ref() {
            for (topic, partition) in fetch.route_all(assignment) {
                tracing::warn!(topic = %topic, partition, "cannot route the partition to the fetch queue; its messages come out of poll one by one");
            }
        }
    }

    /// The fetch queue (`None` before `install` and after `close`).
    pub fn queue(&self) -> MutexGuard<'_, Option<FetchQueue>> {
        self.fetch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the fetch queue.
    pub fn close(&self) {
        drop(self.queue().take());
    }

    /// [`Routing::install`], and [`Routing::close`] when the returned guard is dropped (on every
    /// way out of the caller's scope, a panic included): hold it while the consumer lives.
    #[must_use = "the fetch queue is closed when the guard is dropped"]
    pub fn installed<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Installed<'_> {
        self.install(consumer);
        Installed(self)
    }
}

/// Closes its [`Routing`]'s fetch queue when dropped (see [`Routing::installed`]).
pub struct Installed<'r>(&'r Routing);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl ClientContext for Routing {}

impl ConsumerContext for Routing {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.on_assign(tpl);
        }
    }
}

/// The messages of one read; they are freed when this is dropped.
pub struct Fetched<'q> {
    queue: &'q mut FetchQueue,
}

impl Fetched<'_> {
    pub fn len(&self) -> usize {
        self.queue.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.buf.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = FetchedMessage<'_>> {
        // SAFETY: librdkafka returned these non-null and they live until `drop` below.
        self.queue.buf.iter().map(|&ptr| FetchedMessage { msg: unsafe { &*ptr } })
    }
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        for ptr in self.queue.buf.drain(..) {
            unsafe { rd::rd_kafka_message_destroy(ptr) };
        }
    }
}

/// A fetched message (or a partition's consumer error, see [`FetchedMessage::error`]), borrowed
/// from its read, or from a message `poll` handed out.
pub struct FetchedMessage<'a> {
    msg: &'a rd::rd_kafka_message_t,
}

impl<'a> From<&'a BorrowedMessage<'_>> for FetchedMessage<'a> {
    /// The same view of a message `poll` handed out (it lives as long as the borrow).
    fn from(m: &'a BorrowedMessage<'_>) -> Self {
        // SAFETY: rdkafka's pointer to the message it owns until `m` is dropped.
        FetchedMessage { msg: unsafe { &*m.ptr() } }
    }
}

impl<'a> FetchedMessage<'a> {
    /// The consumer error this entry carries instead of a message, as rdkafka's `poll` reports it.
    pub fn error(&self) -> Option<KafkaError> {
        match self.msg.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Some(KafkaError::PartitionEOF(self.msg.partition))
            }
            e => Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(e))),
        }
    }

    pub fn topic(&self) -> &'a str {
        if self.msg.rkt.is_null() {
            return "";
        }
        // Kafka topic names are ASCII ([a-zA-Z0-9._-]).
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.msg.rkt)) }.to_str().unwrap_or("")
    }

    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    pub fn payload(&self) -> Option<&'a [u8]> {
        slice(self.msg.payload, self.msg.len)
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        slice(self.msg.key, self.msg.key_len)
    }

    pub fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.msg, &mut kind) };
        match kind {
            _ if ms == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(ms),
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Timestamp::LogAppendTime(ms),
        }
    }

    /// A copy of the message's headers (in order, duplicates kept); `None` when it has none.
    /// A record without headers is answered without librdkafka's parse (see
    /// `message_headers.c`), which would allocate, zero and free a buffer to read a count of 0.
    pub fn headers(&self) -> Option<OwnedHeaders> {
        // SAFETY: a live message (borrowed for 'a); the shim only reads it.
        if unsafe { streamscore_message_may_have_headers(self.msg) } == 0 {
            return None;
        }
        let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        let err = unsafe { rd::rd_kafka_message_headers(self.msg, &mut hdrs) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
            return None;
        }
        let count = unsafe { rd::rd_kafka_header_cnt(hdrs) };
        let mut owned = OwnedHeaders::new_with_capacity(count);
        for idx in 0..count {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            let err = unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                break;
            }
            let key = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            owned = owned.insert(Header { key: &key, value: slice(value.cast_mut(), size) });
        }
        Some(owned)
    }
}

/// Names the topics of the messages of one read: a message of the same topic as the one named
/// before it (the usual case, reads come in runs of one partition) gets that name again without
/// its topic's C string being read and looked up (a length scan, a UTF-8 check and a compare per
/// message). The topic handle decides, and a handle identifies its topic only while a message
/// holds it: the memo borrows for `'r` and takes only messages that live at least as long, so
/// every message it remembers outlives it.
pub struct TopicMemo<'r, T> {
    last: Option<(*const rd::rd_kafka_topic_t, T)>,
    _messages: PhantomData<&'r ()>,
}

impl<'r, T> TopicMemo<'r, T> {
    pub fn new() -> Self {
        TopicMemo { last: None, _messages: PhantomData }
    }

    /// `msg`'s topic as `name` makes it from the topic's name, asked once per run of a topic
    /// (lent, not cloned: a clone per message of an `Arc` the sink drops on another core is a
    /// cache line passed between cores per event).
    pub fn name(&mut self, msg: &FetchedMessage<'r>, name: impl FnOnce(&str) -> T) -> &T {
        let handle = msg.msg.rkt.cast_const();
        if self.last.as_ref().is_some_and(|(h, _)| *h != handle) {
            self.last = None;
        }
        &self.last.get_or_insert_with(|| (handle, name(msg.topic()))).1
    }
}

impl<T> Default for TopicMemo<'_, T> {
    fn default() -> Self {
        Self::new()
    }
}

extern "C" {
    /// `src/source/message_headers.c`: 0 when the message certainly has no headers (what
    /// `rd_kafka_message_headers` would answer with `NOENT`), 1 when it may have some.
    fn streamscore_message_may_have_headers(msg: *const rd::rd_kafka_message_t) -> std::ffi::c_int;
}

fn slice<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: librdkafka's pointer and length of a buffer that lives as long as its message.
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }
}

#[cfg(test)]
mod tests {
    //! The header shortcut against librdkafka's in-process mock cluster: every record's headers
    //! as `rd_kafka_message_headers` gives them, and the parse skipped exactly for the records
    //! without any. The integration tests read mixed records through the fetch queue on the test
    //! broker.
    use std::time::{Duration, Instant};

    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    use super::*;
    use crate::testing::{assigned_consumer, mock_cluster};

    type Pairs = Vec<(String, Option<Vec<u8>>)>;

    fn pairs<H: Headers>(headers: &H) -> Pairs {
        headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect()
    }

    fn may_have_headers(m: &FetchedMessage<'_>) -> bool {
        // SAFETY: a live message.
        unsafe { streamscore_message_may_have_headers(m.msg) != 0 }
    }

    #[test]
    fn headers_come_back_as_librdkafka_parses_them_and_records_without_any_skip_the_parse() {
        let (_owner, bootstrap) = mock_cluster(&["h"]);
        let many = |n: usize| {
            (0..n).fold(OwnedHeaders::new(), |h, i| {
                h.insert(Header { key: &format!("k{i}"), value: Some(format!("v{i}").as_bytes()) })
            })
        };
        // (headers sent, headers expected back). 64 headers: the count's zigzag varint starts with
        // 0x80 (a continuation byte with zero low bits), which must not pass for a count of 0.
        let cases: Vec<(Option<OwnedHeaders>, Option<Pairs>)> = vec![
            (None, None),
            (Some(OwnedHeaders::new()), None),
            (
                Some(OwnedHeaders::new().insert(Header { key: "trace", value: Some(&[0u8, 255, 7][..]) })),
                Some(vec![("trace".into(), Some(vec![0, 255, 7]))]),
            ),
            (
                Some(
                    OwnedHeaders::new()
                        .insert(Header { key: "null-valued", value: None::<&[u8]> })
                        .insert(Header { key: "dup", value: Some("a") })
                        .insert(Header { key: "dup", value: Some("") }),
                ),
                Some(vec![
                    ("null-valued".into(), None),
                    ("dup".into(), Some(b"a".to_vec())),
                    ("dup".into(), Some(vec![])),
                ]),
            ),
            (Some(many(64)), Some((0..64).map(|i| (format!("k{i}"), Some(format!("v{i}").into_bytes()))).collect())),
            (None, None),
        ];
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
        for (i, (headers, _)) in cases.iter().enumerate() {
            let payload = format!("value-{i}");
            let mut record = BaseRecord::<(), _>::to("h").payload(&payload);
            if let Some(h) = headers {
                record = record.headers(h.clone());
            }
            producer.send(record).map_err(|(e, _)| e).expect("enqueued");
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");

        let consumer = assigned_consumer(&bootstrap, "fetch-headers-test", &["h"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < cases.len() && Instant::now() < deadline {
            let Some(polled) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = polled.expect("consume");
            let (_, expected) = &cases[m.offset() as usize];
            let view = FetchedMessage::from(&m);
            // Before anything parsed them: the shortcut answers exactly the records without headers.
            assert_eq!(may_have_headers(&view), expected.is_some(), "record {}", m.offset());
            assert_eq!(view.headers().as_ref().map(pairs), *expected, "record {}", m.offset());
            // librdkafka's own answer for the same record agrees.
            assert_eq!(m.headers().map(pairs), *expected, "librdkafka, record {}", m.offset());
            // Once parsed, the headers are librdkafka's and read the same.
            assert_eq!(view.headers().as_ref().map(pairs), *expected, "record {} again", m.offset());
            seen += 1;
        }
        assert_eq!(seen, cases.len(), "read {seen} of {} records", cases.len());
        drop(consumer);
    }

    #[test]
    fn the_topic_memo_names_every_message_and_asks_once_per_run_of_a_topic() {
        let (_owner, bootstrap) = mock_cluster(&["alpha", "beta-topic"]);
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
        for t in ["alpha", "alpha", "alpha", "beta-topic", "beta-topic"] {
            producer.send(BaseRecord::<(), _>::to(t).payload(t)).map_err(|(e, _)| e).expect("enqueued");
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        let consumer = assigned_consumer(&bootstrap, "fetch-topic-memo-test", &["alpha", "beta-topic"]);
        // All five alive at once, as the messages of one read are.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut held = Vec::new();
        while held.len() < 5 && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                held.push(m.expect("consume"));
            }
        }
        assert_eq!(held.len(), 5, "read {} of 5 records", held.len());
        let by_topic = |t: &str| held.iter().filter(|m| m.topic() == t).collect::<Vec<_>>();
        let (alpha, beta) = (by_topic("alpha"), by_topic("beta-topic"));
        // Runs: alpha, alpha, beta, beta, alpha: three runs, three lookups.
        let order = [alpha[0], alpha[1], beta[0], beta[1], alpha[2]];
        let mut asked = Vec::new();
        let mut memo = TopicMemo::new();
        let named: Vec<String> = order
            .iter()
            .map(|m| {
                memo.name(&FetchedMessage::from(*m), |name| {
                    asked.push(name.to_owned());
                    name.to_owned()
                })
                .clone()
            })
            .collect();
        assert_eq!(named, ["alpha", "alpha", "beta-topic", "beta-topic", "alpha"]);
        assert_eq!(asked, ["alpha", "beta-topic", "alpha"]);
        drop(held);
        drop(consumer);
    }
}
