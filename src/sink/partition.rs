//! Partitions for keyed records, computed the way librdkafka's configured partitioner computes
//! them, so that a run of records can be produced with explicit partitions.
//!
//! Left to librdkafka (`RD_KAFKA_PARTITION_UA`), every record runs its partitioner: a hash of
//! the key, a reference taken and dropped on the partition, a clock reading and a counter:
//! ~4% of streamscore's CPU in `perf`, at one record per input. Records produced to a known
//! partition skip all of that, and a run grouped by partition enqueues each partition's
//! records back to back ([`OutputTopic::produce_run`](super::OutputTopic::produce_run)).
//!
//! The hash is librdkafka's own function for the producer's `partitioner` setting, so a key
//! lands where librdkafka would put it. The partition count is librdkafka's own view too, with
//! no metadata request of ours: the topic handle gets a partitioner callback that runs the
//! configured function and notes the count librdkafka passes it. librdkafka calls it for every
//! record it partitions itself, and each run leaves its first keyed record to it, so a change
//! of the topic's partition count (librdkafka's metadata refresh) reaches the rest of that run.
//!
//! Only the partitioners that spread records without a key at random (`consistent_random`, the
//! default, `murmur2_random` and `fnv1a_random`) get this: with a partitioner callback
//! librdkafka sends records without a key to its sticky partitioner, which is what these three
//! do as well. With another setting (`random`, or one that maps records without a key to one
//! partition) every record is left to librdkafka. One difference remains: under
//! `consistent_random`, a record with an empty (not null) key goes to a random partition
//! instead of the sticky one (librdkafka only recognises its built-in function for that).

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use rdkafka::bindings as rd;

/// librdkafka's partitioner signature.
type PartitionerFn =
    unsafe extern "C" fn(*const rd::rd_kafka_topic_t, *const c_void, usize, i32, *mut c_void, *mut c_void) -> i32;

/// librdkafka's "unassigned partition" (`RD_KAFKA_PARTITION_UA`): the partitioner picks one.
pub const PARTITION_UA: i32 = -1;

/// What the partitioner callback shares with the producing thread. Lives as long as the
/// process: librdkafka may call the callback from its own threads for records still queued
/// after the handle that installed it is gone (one per topic handle taken: a few bytes).
struct Probe {
    hash: PartitionerFn,
    /// The topic's partition count as librdkafka last passed it (0: not seen yet).
    count: AtomicI32,
}

/// The partitioner callback: librdkafka's configured function, noting the partition count.
unsafe extern "C" fn probing_partitioner(
    rkt: *const rd::rd_kafka_topic_t,
    key: *const c_void,
    key_len: usize,
    partition_cnt: i32,
    rkt_opaque: *mut c_void,
    msg_opaque: *mut c_void,
) -> i32 {
    // SAFETY: `rkt_opaque` is the `'static` probe installed with this callback (`topic_conf`).
    let probe = unsafe { &*(rkt_opaque as *const Probe) };
    probe.count.store(partition_cnt, Ordering::Relaxed);
    // SAFETY: librdkafka's own partitioner, called as librdkafka would call it.
    unsafe { (probe.hash)(rkt, key, key_len, partition_cnt, ptr::null_mut(), msg_opaque) }
}

/// Partitions keyed records of one topic handle as its partitioner would.
#[derive(Clone, Copy)]
pub struct KeyPartitioner {
    probe: &'static Probe,
}

impl KeyPartitioner {
    /// The partition count librdkafka last used for this topic; 0 until it has partitioned a
    /// record itself (its metadata of the topic may not have arrived yet).
    pub fn count(&self) -> i32 {
        self.probe.count.load(Ordering::Relaxed)
    }

    /// The partition of a record with a non-empty `key` among the [`count`](Self::count)
    /// partitions; [`PARTITION_UA`] (librdkafka decides) for a null or empty key or an unknown
    /// count.
    pub fn partition(&self, rkt: *const rd::rd_kafka_topic_t, key: Option<&[u8]>) -> i32 {
        let (ptr, len) = key.map_or((ptr::null(), 0), |k| (k.as_ptr().cast(), k.len()));
        self.partition_raw(rkt, ptr, len, self.count())
    }

    /// The partition of a key as librdkafka holds it (`key_len` bytes at `key`, readable when
    /// `key_len > 0`) among `count` partitions (a run reads [`count`](Self::count) once), or
    /// [`PARTITION_UA`] as [`partition`](Self::partition) says.
    pub fn partition_raw(
        &self,
        rkt: *const rd::rd_kafka_topic_t,
        key: *const c_void,
        key_len: usize,
        count: i32,
    ) -> i32 {
        if key_len == 0 || count <= 0 {
            return PARTITION_UA;
        }
        // SAFETY: librdkafka's partitioner reads `key_len` bytes of `key` (readable: the
        // caller's contract); for a non-empty key it only hashes (no topic state, no opaques).
        unsafe { (self.probe.hash)(rkt, key, key_len, count, ptr::null_mut(), ptr::null_mut()) }
    }

    /// Test hook: pretend librdkafka passed `count` (a topic that shrank under a stale count).
    #[cfg(test)]
    pub fn pretend_count(&self, count: i32) {
        self.probe.count.store(count, Ordering::Relaxed);
    }
}

/// The configuration for a new topic handle of client `rk`: a copy of its default topic
/// settings (which `rd_kafka_topic_new` takes over), with the probing partitioner when the
/// configured partitioner is one that [`KeyPartitioner`] can follow.
///
/// # Safety
/// `rk` must be a live client handle.
pub unsafe fn topic_conf(rk: *mut rd::rd_kafka_t) -> (*mut rd::rd_kafka_topic_conf_t, Option<KeyPartitioner>) {
    // SAFETY: a live client (the caller's contract); the copy is ours.
    let conf = unsafe { rd::rd_kafka_default_topic_conf_dup(rk) };
    if conf.is_null() {
        return (conf, None);
    }
    // SAFETY: a valid conf; the value is read into a buffer of the size given. A setting that
    // cannot be read is not followed.
    let hash: Option<PartitionerFn> = match unsafe { configured_partitioner(conf) }.as_deref() {
        // Unset (an empty value): librdkafka's default.
        Some("") | Some("consistent_random") => Some(rd::rd_kafka_msg_partitioner_consistent_random),
        Some("murmur2_random") => Some(rd::rd_kafka_msg_partitioner_murmur2_random),
        Some("fnv1a_random") => Some(rd::rd_kafka_msg_partitioner_fnv1a_random),
        Some(_) | None => None,
    };
    let Some(hash) = hash else {
        return (conf, None);
    };
    let probe: &'static Probe = Box::leak(Box::new(Probe { hash, count: AtomicI32::new(0) }));
    // SAFETY: a valid conf; the opaque outlives every topic made from it (`'static`).
    unsafe {
        rd::rd_kafka_topic_conf_set_partitioner_cb(conf, Some(probing_partitioner));
        rd::rd_kafka_topic_conf_set_opaque(conf, probe as *const Probe as *mut c_void);
    }
    (conf, Some(KeyPartitioner { probe }))
}

/// The `partitioner` setting of `conf`, if it has one.
unsafe fn configured_partitioner(conf: *const rd::rd_kafka_topic_conf_t) -> Option<String> {
    let mut buf = [0 as c_char; 64];
    let mut size = buf.len();
    // SAFETY: `buf` holds `size` bytes; librdkafka writes a NUL-terminated value that fits or
    // reports the size it needs (then the value is not one of ours anyway).
    let res = unsafe { rd::rd_kafka_topic_conf_get(conf, c"partitioner".as_ptr(), buf.as_mut_ptr(), &mut size) };
    if res != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK || size > buf.len() {
        return None;
    }
    // SAFETY: NUL-terminated within `buf` (checked size).
    Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
