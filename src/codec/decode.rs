//! Decoding framed input payloads to `Value::Record`s of the reader schema.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, RwLock};

use apache_avro::types::Value;

use super::fast::{FastPlan, Layout};
use super::store::clip;
use super::{split_frame, SchemaStore};
use crate::features::{FeatureExtractor, IdArena, IdSpans, RowIdentity, RowIdentityRef};
use crate::model::manifest::Manifest;
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
    /// Set by [`Decoder::with_features`]: what [`Decoder::decode_features`] needs.
    features: Option<Features>,
}

/// One model's feature extraction, and a fast plan per writer schema id for it.
struct Features {
    extractor: Arc<FeatureExtractor>,
    /// `None` when the manifest or reader schema is outside what fast plans support.
    layout: Option<Layout>,
    /// Planned once per schema id (ids are immutable, like the store's cache); `None`: the
    /// writer schema is outside what fast plans support, so its events take the generic path.
    plans: RwLock<HashMap<u32, Option<Arc<FastPlan>>>>,
}

/// The fast plan of the schema id a caller decoded last ([`Decoder::decode_features_into`]).
#[derive(Default)]
pub struct LastPlan(Option<(u32, Arc<FastPlan>)>);

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
        Self { store, max_message_bytes, features: None }
    }

    /// A decoder like [`Decoder::new`] that can also decode straight to feature rows
    /// ([`Decoder::decode_features`]) for `extractor`, which must have been built from `manifest`
    /// and the store's reader schema.
    pub fn with_features(
        store: Arc<SchemaStore>,
        max_message_bytes: usize,
        manifest: &Manifest,
        extractor: Arc<FeatureExtractor>,
    ) -> Self {
        let layout = Layout::new(store.reader(), manifest, &extractor);
        if layout.is_none() {
            tracing::warn!(
                model = %format!("{}/{}", manifest.name, manifest.version),
                "the model's features are outside what the fast decoder supports; every event takes the generic \
                 decode + extract path"
            );
        }
        let features = Features { extractor, layout, plans: RwLock::new(HashMap::new()) };
        Self { features: Some(features), ..Self::new(store, max_message_bytes) }
    }

    /// The feature extractor given to [`Decoder::with_features`].
    pub fn extractor(&self) -> Option<&Arc<FeatureExtractor>> {
        self.features.as_ref().map(|f| &f.extractor)
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

impl Decoder {
    /// Frame → writer schema → feature row: fills `out[..F]` and `missing[..F]` and returns the
    /// identity fields, with the same outcome (row, flags, identity, or rejection reason) as
    /// [`decode`](Self::decode) followed by [`FeatureExtractor::extract`].
    ///
    /// Uses a [`FastPlan`] for the payload's schema id (planned on the id's first event) that
    /// reads the body straight into the row; schemas a plan does not support take the generic
    /// path.
    ///
    /// # Panics
    /// If the decoder was not built with [`Decoder::with_features`], or `out` or `missing` is
    /// shorter than the extractor's column count.
    pub fn decode_features(
        &self,
        payload: &[u8],
        out: &mut [f32],
        missing: &mut [bool],
    ) -> Result<RowIdentity, Rejection> {
        self.decode_features_then(&mut LastPlan::default(), payload, out, missing, |id| id.owned())
    }

    /// [`decode_features`](Self::decode_features) for a caller that decodes event after event
    /// with this decoder into batches (the source thread): the identity strings go straight into
    /// the batch's `ids` (no owned strings built in between), and `last` keeps the plan of the
    /// last schema id, so consecutive events of one schema id skip the shared plan map (its lock
    /// and lookup). `last` must only ever be used with this decoder. Nothing is stored in `ids`
    /// when the event is rejected.
    pub fn decode_features_into(
        &self,
        last: &mut LastPlan,
        payload: &[u8],
        out: &mut [f32],
        missing: &mut [bool],
        ids: &mut IdArena,
    ) -> Result<IdSpans, Rejection> {
        self.decode_features_then(last, payload, out, missing, |id| ids.store(id))
    }

    /// Decodes as [`decode_features`](Self::decode_features) does and hands the identity of an
    /// event that decoded to `finish`.
    fn decode_features_then<T>(
        &self,
        last: &mut LastPlan,
        payload: &[u8],
        out: &mut [f32],
        missing: &mut [bool],
        finish: impl FnOnce(RowIdentityRef<'_>) -> T,
    ) -> Result<T, Rejection> {
        let features =
            self.features.as_ref().expect("decode_features needs a decoder built with Decoder::with_features");
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::new(
                DeadLetterReason::Undecodable,
                format!("message is {} bytes, above max_message_bytes = {}", payload.len(), self.max_message_bytes),
            ));
        }
        let (id, body) = split_frame(payload)?;
        if let Some((last_id, plan)) = &last.0 {
            if *last_id == id {
                return plan.decode(body, out, missing).map(finish);
            }
        }
        let cached = features.plans.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        let plan = match cached {
            Some(plan) => plan,
            None => {
                // Only ids the store accepts are planned (its errors are not final for every id).
                let writer = self.store.writer(id)?;
                let plan = features
                    .layout
                    .as_ref()
                    .and_then(|layout| FastPlan::with_layout(writer.schema(), layout))
                    .map(Arc::new);
                features.plans.write().unwrap_or_else(|e| e.into_inner()).entry(id).or_insert(plan).clone()
            }
        };
        match plan {
            Some(plan) => {
                let decoded = plan.decode(body, out, missing).map(finish);
                last.0 = Some((id, plan));
                decoded
            }
            None => {
                let value = self.decode(payload)?;
                features.extractor.extract(&value, out, missing).map(|id| finish(id.borrowed()))
            }
        }
    }

    /// Whether events of schema id `id` take the fast path (`None`: not planned yet).
    pub fn is_fast(&self, id: u32) -> Option<bool> {
        let features = self.features.as_ref()?;
        features.plans.read().unwrap_or_else(|e| e.into_inner()).get(&id).map(Option::is_some)
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
