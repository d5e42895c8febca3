//! Decoding framed input payloads to `Value::Record`s of the reader schema.

use std::io::Read;
use std::sync::Arc;

use apache_avro::types::Value;

use super::{split_frame, SchemaStore};
use crate::outcome::{DeadLetterReason, Rejection};

/// Default cap on one message's size.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Decodes Confluent-framed Avro payloads into values of the store's reader schema.
pub struct Decoder {
    store: Arc<SchemaStore>,
    max_message_bytes: usize,
}

impl Decoder {
    /// A decoder over `store`; payloads larger than `max_message_bytes` are rejected unread.
    pub fn new(store: Arc<SchemaStore>, max_message_bytes: usize) -> Self {
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
                format!("body of {} bytes does not decode with writer schema id {id}: {e}", body.len()),
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
                format!("value written with schema id {id} does not resolve to the reader schema: {e}"),
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
