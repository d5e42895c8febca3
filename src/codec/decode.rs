//! Decoding framed input payloads to `Value::Record`s of the reader schema.

use std::io::Read;
use std::sync::Arc;

use apache_avro::types::Value;

use super::store::clip;
use super::{split_frame, SchemaStore};
use crate::outcome::{DeadLetterReason, Rejection};

/// Default cap on one message's size.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Smallest allocation cap a decoder asks apache-avro for. The cap counts decoded memory (an
/// array item is a 56-byte `Value`), so a cap equal to a tiny message limit would make arrays of a
/// few dozen items undecodable; 64 KiB is still far too small to hurt.
const MIN_ALLOCATION_CAP: usize = 64 * 1024;

/// Decodes Confluent-framed Avro payloads into values of the store's reader schema.
///
/// What bounds the work and memory of one hostile payload:
/// - its size: payloads over `max_message_bytes` are refused unread;
/// - apache-avro's allocation cap (see [`Decoder::new`]): a string, bytes, array or map is
///   allocated for its claimed length *before* the bytes are read, so a 20-byte body claiming a
///   2^62-byte string must fail the cap rather than reach the allocator;
/// - the writer schema, vetted by the store: not recursive, at most
///   `MAX_WRITER_SCHEMA_DEPTH` levels deep (so the decoder's recursion is bounded), and no
///   array of zero-byte items (so every decoded item costs at least one body byte, and the values
///   decoded are bounded by the body's length).
pub struct Decoder {
    store: Arc<SchemaStore>,
    max_message_bytes: usize,
}

impl Decoder {
    /// A decoder over `store`; payloads larger than `max_message_bytes` are rejected unread.
    ///
    /// Also caps apache-avro's allocation for one decoded string, bytes, array or map at
    /// `max_message_bytes` (at least 64 KiB): nothing decoded can be larger than the message it
    /// came in. That cap is a process-wide set-once (`apache_avro::util::max_allocation_bytes`):
    /// the first call wins and later calls, with any value, return the first value unchanged;
    /// apache-avro itself sets its 512 MiB default on the first decode that allocates if nobody
    /// called it before. `pipeline::run` sets it from the same config before anything decodes. A
    /// process that builds decoders with different limits (tests) gets the first value, and a
    /// warning when that value is looser than this decoder wants or too tight for its messages.
    pub fn new(store: Arc<SchemaStore>, max_message_bytes: usize) -> Self {
        let wanted = max_message_bytes.max(MIN_ALLOCATION_CAP);
        let cap = apache_avro::util::max_allocation_bytes(wanted);
        if cap > wanted || cap < max_message_bytes {
            tracing::warn!(
                allocation_cap = cap,
                max_message_bytes,
                "apache-avro's allocation cap was already set to another value in this process; it is set once, so \
                 this decoder's strings, bytes, arrays and maps are capped at that value instead"
            );
        }
        Self { store, max_message_bytes }
    }

    /// The schema store.
    pub fn store(&self) -> &Arc<SchemaStore> {
        &self.store
    }

    /// Frame → writer schema → decode with the writer schema → resolve to the reader schema.
    ///
    /// Never panics on any input. Errors: `Truncated`/`BadMagic` (frame), `UnknownSchema`,
    /// `RegistryUnavailable`, `SchemaMismatch` (writer schema, or a value that does not resolve),
    /// `Undecodable` (oversized, body does not decode, or bytes left after the record).
    pub fn decode(&self, payload: &[u8]) -> Result<Value, Rejection> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::new(
                DeadLetterReason::Undecodable,
                format!("message is {} bytes, above max_message_bytes = {}", payload.len(), self.max_message_bytes),
            ));
        }
        let (id, body) = split_frame(payload)?;
        let writer = self.store.writer(id)?;

        // Decode and resolve separately, so a body that does not decode (Undecodable) is told
        // apart from a decoded value the reader schema cannot take (SchemaMismatch).
        let mut input = Exact { rest: body, short: false };
        let written = writer.read(&mut input).map_err(|e| {
            Rejection::new(
                DeadLetterReason::Undecodable,
                format!(
                    "body of {} bytes does not decode with writer schema id {id}: {}",
                    body.len(),
                    clip(&e.to_string())
                ),
            )
        })?;
        // apache-avro turns a string cut short by the end of input into a null instead of an
        // error; `short` catches that and any other read past the end.
        if input.short {
            return Err(Rejection::new(
                DeadLetterReason::Undecodable,
                format!("body of {} bytes ends inside the record (writer schema id {id})", body.len()),
            ));
        }
        if !input.rest.is_empty() {
            return Err(Rejection::new(
                DeadLetterReason::Undecodable,
                format!(
                    "{} trailing bytes after the record in a body of {} bytes (writer schema id {id})",
                    input.rest.len(),
                    body.len()
                ),
            ));
        }
        written.resolve_with_names(self.store.reader(), self.store.reader_names().get_names()).map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!(
                    "value written with schema id {id} does not resolve to the reader schema: {}",
                    clip(&e.to_string())
                ),
            )
        })
    }
}

/// A slice reader that remembers whether anyone asked for more bytes than were left.
struct Exact<'a> {
    rest: &'a [u8],
    short: bool,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.short = true;
        }
        self.rest.read(buf)
    }
}
