//! Writer schemas by Confluent schema id, from local files and/or a Schema Registry, each checked
//! once against the reader schema and cached for the life of the process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
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
    fn check(&self, id: u32, source: SchemaSource, schema: Schema) -> Entry {
        let compatibility = SchemaCompatibility::can_read(&schema, self.reader).map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("writer schema id {id} ({source}) cannot be read as {}: {e}", self.reader_name()),
            )
        })?;
        let schema = leak(schema);
        let datum = GenericDatumReader::builder(schema).build().map_err(|e| {
            Rejection::new(
                DeadLetterReason::SchemaMismatch,
                format!("writer schema id {id} ({source}) has unresolvable names: {e}"),
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

/// Gives a schema a `'static` lifetime by leaking it.
///
/// apache-avro's datum readers borrow their schemas, and building one walks the schema, so we
/// build each once and keep it. A store owns the reader schema and every writer schema it accepts
/// for the life of the process anyway (schemas are immutable by id and never evicted), so leaking
/// costs nothing extra: memory is bounded by the number of distinct valid schema ids seen.
fn leak(schema: Schema) -> &'static Schema {
    Box::leak(Box::new(schema))
}
