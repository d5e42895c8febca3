//! Writer schemas by Confluent schema id, from local files and/or a Schema Registry, each checked
//! once against the reader schema and cached for the life of the process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, NamespaceRef, ResolvedSchema, UuidSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SuppliedSchema};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{parse_schema, CodecError};
use crate::outcome::{DeadLetterReason, Rejection};

/// How to reach a Confluent-compatible Schema Registry.
#[derive(Clone)]
pub struct RegistrySettings {
    /// Base URL, e.g. `http://localhost:8081`.
    pub url: String,
    /// Basic-auth user (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: the API secret).
    pub password: Option<String>,
    /// Bearer token; used instead of basic auth when set.
    pub bearer_token: Option<String>,
    /// Limit for one registry request (connect + response).
    pub timeout: Duration,
}

impl fmt::Debug for RegistrySettings {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a writer schema came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    /// A configured local `.avsc` file.
    Local(PathBuf),
    /// The schema registry at this URL.
    Registry(String),
}

impl fmt::Display for SchemaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "local file {}", p.display()),
            Self::Registry(url) => write!(f, "schema registry {url}"),
        }
    }
}

/// A writer schema that can be read with the reader schema, ready to decode bodies.
pub struct WriterSchema {
    /// Confluent schema id.
    pub id: u32,
    /// Where it came from.
    pub source: SchemaSource,
    /// `Full`, or `Partial` when some values may fail to resolve (e.g. an enum symbol the
    /// reader lacks); those events are dead-lettered as `schema_mismatch`.
    pub compatibility: Compatibility,
    schema: &'static Schema,
    /// Writer-only datum reader: built once, because building one walks the whole schema.
    datum: GenericDatumReader<'static>,
}

impl WriterSchema {
    /// The writer schema.
    pub fn schema(&self) -> &Schema {
        self.schema
    }

    /// Decodes one body with the writer schema (no resolution).
    pub(crate) fn read<R: std::io::Read>(&self, body: &mut R) -> apache_avro::AvroResult<Value> {
        self.datum.read_value(body)
    }
}

impl fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterSchema")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("compatibility", &self.compatibility)
            .field("schema", &self.schema.canonical_form())
            .finish()
    }
}

/// Cached outcome of looking up one id: schemas are immutable by id, so both a usable schema and
/// a mismatch are final. Registry outages are never cached.
type Entry = Result<Arc<WriterSchema>, Rejection>;

/// Resolves schema ids to writer schemas checked against the reader schema.
pub struct SchemaStore {
    /// Leaked once per store so that datum readers can borrow it for `'static` (see [`leak`]).
    reader: &'static Schema,
    reader_names: ResolvedSchema<'static>,
    local: BTreeMap<u32, (PathBuf, Schema)>,
    registry: Option<Registry>,
    cache: RwLock<HashMap<u32, Entry>>,
}

struct Registry {
    settings: SrSettings,
    url: String,
    timeout: Duration,
    handle: Handle,
}

impl SchemaStore {
    /// Builds a store: local schema files are read and parsed now (a bad file is a start-up error);
    /// registry schemas are fetched on first use, on `handle`'s runtime.
    ///
    /// `handle` is required when `registry` is set.
    pub fn new(
        reader: Schema,
        local: &BTreeMap<u32, PathBuf>,
        registry: Option<RegistrySettings>,
        handle: Option<Handle>,
    ) -> Result<Self, CodecError> {
        let reader = leak(reader);
        let reader_names = ResolvedSchema::try_from(reader)
            .map_err(|source| CodecError::SchemaParse { what: "reader schema".into(), source })?;
        let mut loaded = BTreeMap::new();
        for (&id, path) in local {
            let text = std::fs::read_to_string(path)
                .map_err(|source| CodecError::SchemaFile { path: path.clone(), source })?;
            let schema = Schema::parse_str(&text).map_err(|source| CodecError::SchemaParse {
                what: format!("{} (local schema id {id})", path.display()),
                source,
            })?;
            loaded.insert(id, (path.clone(), schema));
        }
        let registry = match registry {
            None => None,
            Some(cfg) => {
                let handle = handle.ok_or_else(|| CodecError::Registry {
                    url: cfg.url.clone(),
                    detail: "a schema registry is configured but no tokio runtime handle was given to the schema store"
                        .into(),
                })?;
                let mut b = SrSettings::new_builder(cfg.url.trim_end_matches('/').to_string());
                b.set_timeout(cfg.timeout);
                if let Some(token) = &cfg.bearer_token {
                    b.set_token_authorization(token);
                } else if let Some(user) = &cfg.username {
                    b.set_basic_authorization(user, cfg.password.as_deref());
                }
                let settings = b.build().map_err(|e| CodecError::Registry {
                    url: cfg.url.clone(),
                    detail: format!("cannot build the registry client: {e}"),
                })?;
                Some(Registry { settings, url: cfg.url, timeout: cfg.timeout, handle })
            }
        };
        Ok(Self { reader, reader_names, local: loaded, registry, cache: RwLock::new(HashMap::new()) })
    }

    /// The reader schema.
    pub fn reader(&self) -> &Schema {
        self.reader
    }

    pub(crate) fn reader_names(&self) -> &ResolvedSchema<'static> {
        &self.reader_names
    }

    /// The writer schema for `id`, checked against the reader schema.
    ///
    /// Synchronous: on a registry cache miss it blocks the calling thread on the runtime handle
    /// given at construction (bounded by the registry timeout). Call it from a plain thread; from
    /// inside a multi-threaded runtime it moves to `block_in_place`.
    pub fn writer(&self, id: u32) -> Result<Arc<WriterSchema>, Rejection> {
        if let Some(entry) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return entry.clone();
        }
        let (entry, cache) = self.load(id);
        if cache {
            self.cache.write().unwrap_or_else(|e| e.into_inner()).entry(id).or_insert_with(|| entry.clone());
        }
        entry
    }

    /// Looks `id` up (local first, then the registry); the flag says whether the result is final.
    fn load(&self, id: u32) -> (Entry, bool) {
        if let Some((path, schema)) = self.local.get(&id) {
            return (self.check(id, SchemaSource::Local(path.clone()), schema.clone()), true);
        }
        let Some(reg) = &self.registry else {
            return (
                Err(Rejection::new(
                    DeadLetterReason::UnknownSchema,
                    format!(
                        "schema id {id} is not among the local schemas (ids {:?}) and no schema registry is configured",
                        self.local.keys().collect::<Vec<_>>()
                    ),
                )),
                false,
            );
        };
        match reg.fetch(id) {
            Ok(schema) => (self.check(id, SchemaSource::Registry(reg.url.clone()), schema), true),
            // A mismatch-type failure (unparseable or unsupported schema) is final too.
            Err(r) if r.reason == DeadLetterReason::SchemaMismatch => (Err(r), true),
            // Unknown ids are not cached: producers may register the id right after we asked.
            Err(r) => (Err(r), false),
        }
    }

    /// Checks `schema` against the reader schema and builds its datum reader.
    ///
    /// [`vet`] runs first: it refuses the schemas a crafted body could exploit, and it bounds the
    /// nesting depth before `can_read` (which recurses through the schema) ever sees it.
    fn check(&self, id: u32, source: SchemaSource, schema: Schema) -> Entry {
        vet(&schema).map_err(|problem| {
            Rejection::new(DeadLetterReason::SchemaMismatch, format!("writer schema id {id} ({source}) {problem}"))
        })?;
        let compatibility = SchemaCompatibility::can_read(&schema, self.reader).map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!(
                    "writer schema id {id} ({source}) cannot be read as {}: {}",
                    self.reader_name(),
                    clip(&e.to_string())
                ),
            )
        })?;
        let schema = leak(schema);
        let datum = GenericDatumReader::builder(schema).build().map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("writer schema id {id} ({source}) has unresolvable names: {}", clip(&e.to_string())),
            )
        })?;
        Ok(Arc::new(WriterSchema { id, source, compatibility, schema, datum }))
    }

    fn reader_name(&self) -> String {
        match self.reader {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
        }
    }

    /// Registers `schema_json` under `subject` (`POST /subjects/{subject}/versions`) and returns its
    /// id; the registry answers the existing id when the schema is already registered.
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, CodecError> {
        parse_schema(schema_json)?;
        let Some(reg) = &self.registry else {
            return Err(CodecError::NoRegistry { subject: subject.to_string() });
        };
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema_json.to_string());
        let call = post_schema(&reg.settings, subject.to_string(), supplied);
        match tokio::time::timeout(reg.timeout, call).await {
            Ok(Ok(registered)) => Ok(registered.id),
            Ok(Err(e)) => Err(CodecError::Registry {
                url: reg.url.clone(),
                detail: format!("registering subject {subject:?} failed: {}", sr_error_text(&e)),
            }),
            Err(_) => Err(CodecError::Registry {
                url: reg.url.clone(),
                detail: format!("registering subject {subject:?} timed out after {:?}", reg.timeout),
            }),
        }
    }

    /// Whether a schema registry is configured.
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }
}

impl Registry {
    /// Fetches and parses schema `id`. Errors: UnknownSchema (the registry says 404),
    /// SchemaMismatch (not a usable Avro schema), RegistryUnavailable (anything else).
    fn fetch(&self, id: u32) -> Result<Schema, Rejection> {
        let call = async { tokio::time::timeout(self.timeout, get_schema_by_id(id, &self.settings)).await };
        let in_runtime = Handle::try_current().map(|h| h.runtime_flavor());
        let result = match in_runtime {
            Err(_) => self.handle.block_on(call),
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.handle.block_on(call)),
            Ok(_) => {
                return Err(Rejection::new(
                    DeadLetterReason::RegistryUnavailable,
                    format!("cannot fetch schema id {id} from {}: the lookup was called on a single-threaded async runtime, where it would block it", self.url),
                ))
            }
        };
        let registered = match result {
            Err(_) => {
                return Err(Rejection::new(
                    DeadLetterReason::RegistryUnavailable,
                    format!("schema registry {} did not answer for schema id {id} within {:?}", self.url, self.timeout),
                ))
            }
            Ok(Err(e)) if is_not_found(&e) => {
                return Err(Rejection::new(
                    DeadLetterReason::UnknownSchema,
                    format!(
                        "schema id {id} is not among the local schemas and schema registry {} does not know it",
                        self.url
                    ),
                ))
            }
            Ok(Err(e)) => {
                return Err(Rejection::new(
                    DeadLetterReason::RegistryUnavailable,
                    format!("schema registry {} failed for schema id {id}: {}", self.url, sr_error_text(&e)),
                ))
            }
            Ok(Ok(s)) => s,
        };
        if registered.schema_type != SchemaType::Avro {
            return Err(Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("schema id {id} in {} is a {:?} schema, not Avro", self.url, registered.schema_type),
            ));
        }
        if !registered.references.is_empty() {
            return Err(Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("schema id {id} in {} uses schema references, which streamscore does not support", self.url),
            ));
        }
        Schema::parse_str(&registered.schema).map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("schema id {id} from {} does not parse as Avro: {e}", self.url),
            )
        })
    }
}

/// The registry answered 404 (Confluent error codes 404xx) for the id.
fn is_not_found(e: &SRCError) -> bool {
    let raw = std::error::Error::source(e).and_then(|s| s.downcast_ref::<RawError>());
    raw.is_some_and(|r| r.error_code / 100 == 404) || e.error.contains("status 404")
}

fn sr_error_text(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{} ({cause})", e.error),
        None => e.error.clone(),
    }
}

/// Deepest writer schema accepted, counted as apache-avro's decoder recurses: one level per
/// record, array, map, union, named reference and leaf on the way down.
///
/// apache-avro's decoder has no depth limit of its own (`decode_internal` recurses once per level,
/// as do value resolution and `Drop` of the decoded value), so the schema is what bounds the stack.
/// `decode_internal`'s frame is large: about 32 KiB per level in a debug build, about 2 KiB in a
/// release build (measured, rustc 1.95), so 32 levels need about 1.1 MiB in debug, within the
/// 2 MiB of a default thread, and about 75 KiB in release. Real event
/// schemas nest a handful of levels (a nullable field of a nested record is three: record, union,
/// record). tests/poison.rs decodes a value this deep on a small thread stack.
pub(crate) const MAX_WRITER_SCHEMA_DEPTH: usize = 32;

/// Refuses writer schemas that a crafted body could turn into a crash or unbounded work, whatever
/// the reader schema:
///
/// - recursive schemas (a named type that contains itself, directly or through other types):
///   apache-avro decodes them by plain recursion with no depth limit, so a body of a few KB of
///   "one more level" bytes overflows the stack, which aborts the process;
/// - schemas nesting deeper than [`MAX_WRITER_SCHEMA_DEPTH`] (e.g. a long chain of named types,
///   each referring to the previous one: not recursive, but as deep as the chain is long);
/// - arrays whose items can encode in zero bytes (`null`, `fixed` of size 0, records of only
///   such fields): apache-avro caps one array's count at `max_allocation_bytes / size_of::<Value>()`
///   but a body can claim that many items for free, and nested in an outer array of which every
///   item costs one byte, that is billions of values. Every other array item, and every map
///   entry (its key has a length), costs at least one byte, so the items decoded are bounded by
///   the body's length.
///
/// The walk is linear in the schema's size (named types are visited once) and never recurses
/// deeper than the limit itself.
fn vet(schema: &Schema) -> Result<(), String> {
    let resolved =
        ResolvedSchema::try_from(schema).map_err(|e| format!("has unresolvable names: {}", clip(&e.to_string())))?;
    let mut vet = Vet { names: resolved.get_names(), seen: HashMap::new() };
    vet.walk(schema, None, 1).map(|_| ())
}

/// What [`vet`] knows about a named type.
#[derive(Clone, Copy)]
enum Seen {
    /// Being walked: meeting it again means the schema is recursive.
    Open,
    /// Walked: its depth (levels from the type itself down) and whether it can encode in zero bytes.
    Done { depth: usize, empty: bool },
}

struct Vet<'a, 's> {
    names: &'a NamesRef<'s>,
    seen: HashMap<Name, Seen>,
}

impl Vet<'_, '_> {
    /// Walks `schema` at `level` (1 = the root) the way apache-avro's `decode_internal` does,
    /// including how it qualifies names. Returns (levels from `schema` down, can encode in zero bytes).
    fn walk(&mut self, schema: &Schema, ns: NamespaceRef, level: usize) -> Result<(usize, bool), String> {
        if level > MAX_WRITER_SCHEMA_DEPTH {
            return Err(too_deep());
        }
        Ok(match schema {
            Schema::Null => (1, true),
            Schema::Fixed(f) => (1, f.size == 0),
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Fixed(f) => (2, f.size == 0),
                InnerDecimalSchema::Bytes => (2, false),
            },
            // A uuid decodes through a nested string, bytes or fixed (which must be 16 bytes).
            Schema::Uuid(UuidSchema::String | UuidSchema::Bytes | UuidSchema::Fixed(_)) | Schema::BigDecimal => {
                (2, false)
            }
            Schema::Array(a) => {
                let (depth, empty) = self.walk(&a.items, ns, level + 1)?;
                if empty {
                    return Err(format!(
                        "has an array whose items ({}) encode in zero bytes, so a few body bytes could claim \
                         billions of them; such arrays are not accepted",
                        kind(&a.items)
                    ));
                }
                (depth + 1, false)
            }
            Schema::Map(m) => (self.walk(&m.types, ns, level + 1)?.0 + 1, false),
            Schema::Union(u) => {
                let mut depth = 0;
                for variant in u.variants() {
                    depth = depth.max(self.walk(variant, ns, level + 1)?.0);
                }
                (depth + 1, false)
            }
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(ns).into_owned();
                self.seen.insert(name.clone(), Seen::Open);
                let (mut depth, mut empty) = (0, true);
                for field in &r.fields {
                    let (d, e) = self.walk(&field.schema, name.namespace(), level + 1)?;
                    depth = depth.max(d);
                    empty &= e;
                }
                let depth = depth + 1;
                self.seen.insert(name, Seen::Done { depth, empty });
                (depth, empty)
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns).into_owned();
                match self.seen.get(&name).copied() {
                    Some(Seen::Open) => {
                        return Err(format!(
                            "is recursive (type {} contains itself); recursive schemas are not accepted, because \
                             apache-avro decodes them with unbounded recursion",
                            name.fullname(None)
                        ))
                    }
                    Some(Seen::Done { depth, empty }) => {
                        if level + depth > MAX_WRITER_SCHEMA_DEPTH {
                            return Err(too_deep());
                        }
                        (depth + 1, empty)
                    }
                    None => {
                        let Some(&target) = self.names.get(&name) else {
                            return Err(format!("refers to type {}, which it does not define", name.fullname(None)));
                        };
                        let (depth, empty) = self.walk(target, name.namespace(), level + 1)?;
                        (depth + 1, empty)
                    }
                }
            }
            // Every other type reads at least one byte and contains nothing.
            _ => (1, false),
        })
    }
}

fn too_deep() -> String {
    format!("nests deeper than {MAX_WRITER_SCHEMA_DEPTH} levels; such schemas are not accepted")
}

fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {} of size {}", f.name.fullname(None), f.size),
        Schema::Ref { name } => name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// Longest library error text copied into a rejection detail. Details become a dead-letter header,
/// and apache-avro's messages can quote a whole value or schema.
pub(crate) const MAX_DETAIL_CHARS: usize = 512;

/// `text`, cut to [`MAX_DETAIL_CHARS`] bytes at a character boundary.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_DETAIL_CHARS {
        return text.into();
    }
    let mut end = MAX_DETAIL_CHARS;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len()).into()
}

/// Gives a schema a `'static` lifetime by leaking it.
///
/// apache-avro's datum readers borrow their schemas, and building one walks the schema, so we
/// build each once and keep it. A store owns the reader schema and every writer schema it accepts
/// for the life of the process anyway (schemas are immutable by id and never evicted), so leaking
/// costs nothing extra: memory is bounded by the number of distinct valid schema ids seen.
fn leak(schema: Schema) -> &'static Schema {
    Box::leak(Box::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vet_json(json: &str) -> Result<(), String> {
        vet(&Schema::parse_str(json).unwrap())
    }

    #[test]
    fn recursion_is_found_directly_and_through_other_types() {
        for json in [
            r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#,
            r#"{"type":"record","name":"T","fields":[{"name":"kids","type":{"type":"array","items":"T"}}]}"#,
            r#"{"type":"record","name":"A","namespace":"n","fields":[{"name":"b","type":{"type":"record","name":"B",
                "fields":[{"name":"m","type":{"type":"map","values":["null","n.A"]}}]}}]}"#,
        ] {
            let err = vet_json(json).unwrap_err();
            assert!(err.contains("recursive"), "{err}");
        }
    }

    #[test]
    fn shared_named_types_are_not_recursion() {
        // The same named type used twice, side by side and nested: a DAG, not a cycle.
        vet_json(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
                {"name":"b","type":"P"},
                {"name":"c","type":{"type":"array","items":{"type":"record","name":"Q","fields":[{"name":"p","type":"P"}]}}},
                {"name":"d","type":{"type":"map","values":"Q"}}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn depth_counts_like_the_decoder_and_is_checked_through_references() {
        let nested = |levels: usize| {
            let mut t = r#""int""#.to_string();
            for _ in 0..levels {
                t = format!(r#"{{"type":"array","items":{t}}}"#);
            }
            format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{t}}}]}}"#)
        };
        // Record (1) + arrays + int (1).
        vet_json(&nested(MAX_WRITER_SCHEMA_DEPTH - 2)).unwrap();
        assert!(vet_json(&nested(MAX_WRITER_SCHEMA_DEPTH - 1)).unwrap_err().contains("deeper"));

        // A chain of named records C0..Cn, each holding the previous one by reference: shallow
        // JSON, but field `ck` decodes 2k + 3 levels deep (R, Ck, ref, Ck-1, ref, ..., C0, int).
        let chain = |n: usize, extra: &str| {
            let mut fields =
                vec![r#"{"name":"c0","type":{"type":"record","name":"C0","fields":[{"name":"v","type":"int"}]}}"#
                    .to_string()];
            for i in 1..n {
                fields.push(format!(
                    r#"{{"name":"c{i}","type":{{"type":"record","name":"C{i}","fields":[{{"name":"v","type":"C{}"}}]}}}}"#,
                    i - 1
                ));
            }
            format!(r#"{{"type":"record","name":"R","fields":[{}{extra}]}}"#, fields.join(","))
        };
        vet_json(&chain(15, "")).unwrap();
        assert!(vet_json(&chain(16, "")).unwrap_err().contains("deeper"));
        // A reference to an already walked type, from deeper down: C9 is 20 levels; under `a`
        // arrays (levels 2 to a + 1) and the reference (a + 2) it ends at level a + 22.
        let arrays_of_c9 = |a: usize| {
            let t = (0..a).fold(r#""C9""#.to_string(), |t, _| format!(r#"{{"type":"array","items":{t}}}"#));
            format!(r#",{{"name":"deep","type":{t}}}"#)
        };
        vet_json(&chain(10, &arrays_of_c9(10))).unwrap();
        assert!(vet_json(&chain(10, &arrays_of_c9(11))).unwrap_err().contains("deeper"));
    }

    #[test]
    fn arrays_of_zero_byte_items_are_refused_and_maps_are_not() {
        for items in [
            r#""null""#,
            r#"{"type":"fixed","name":"F","size":0}"#,
            r#"{"type":"record","name":"E","fields":[]}"#,
            r#"{"type":"record","name":"E","fields":[{"name":"n","type":"null"},{"name":"e","type":{"type":"record","name":"E2","fields":[]}}]}"#,
        ] {
            let json = format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":{{"type":"array","items":{items}}}}}]}}"#
            );
            assert!(vet_json(&json).unwrap_err().contains("zero bytes"), "{items}");
        }
        for ok in [
            r#"{"type":"array","items":["null","int"]}"#,
            r#"{"type":"array","items":{"type":"fixed","name":"F","size":1}}"#,
            r#"{"type":"array","items":{"type":"array","items":"int"}}"#,
            r#"{"type":"map","values":"null"}"#,
        ] {
            let json = format!(r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":{ok}}}]}}"#);
            vet_json(&json).unwrap();
        }
    }

    #[test]
    fn clip_cuts_at_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_DETAIL_CHARS);
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_DETAIL_CHARS + 40, "{}", clipped.len());
        assert!(clipped.ends_with(&format!("… ({} bytes in all)", long.len())), "{clipped}");
    }
}
