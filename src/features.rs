//! Manifest-driven feature extraction: a decoded `Transaction` record → one float32 model row.
//!
//! Everything that can be decided once (field positions, column offsets, type checks against the
//! reader schema) is decided in [`FeatureExtractor::new`]; [`FeatureExtractor::extract`] is the
//! generic path's per-event step and allocates nothing (identity strings up to [`IdText::INLINE`]
//! bytes, which covers UUIDs and typical ids, are stored inline); the pipeline's batches keep
//! identity strings in an [`IdArena`].

use std::collections::HashMap;

use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::model::manifest::{Manifest, OnNull, Transform};
use crate::outcome::{DeadLetterReason, Rejection};

/// Identity fields of the input event, copied to the scored output: the owned form, as
/// [`FeatureExtractor::extract`] and [`crate::codec::Decoder::decode_features`] return them. The
/// pipeline's batches keep them as [`IdSpans`] into their [`IdArena`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowIdentity {
    /// `event_id` (a UUID, as its hyphenated lowercase text).
    pub event_id: IdText,
    /// `transaction_id`.
    pub transaction_id: IdText,
    /// `event_time`, milliseconds since the Unix epoch (UTC).
    pub event_time_ms: i64,
}

/// An identity string that lives inline up to [`IdText::INLINE`] bytes (a hyphenated UUID is
/// 36), so an owned [`RowIdentity`] of typical ids costs no allocation. Longer text (allowed, the
/// schema does not bound it) goes to the heap. Reads as `&str` through `Deref`.
#[derive(Clone)]
pub struct IdText(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Inline { len: u8, bytes: [u8; IdText::INLINE] },
    Heap(Box<str>),
}

impl IdText {
    pub const INLINE: usize = 46;

    pub fn new(text: &str) -> Self {
        let b = text.as_bytes();
        if b.len() <= Self::INLINE {
            let mut bytes = [0u8; Self::INLINE];
            bytes[..b.len()].copy_from_slice(b);
            Self(IdRepr::Inline { len: b.len() as u8, bytes })
        } else {
            Self(IdRepr::Heap(text.into()))
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `Inline` is only built by `IdText::new`, from all `len` bytes of a `&str`
            // (never a prefix), and never mutated: the bytes are valid UTF-8. Checking them again
            // on every read cost ~1% of the service's CPU (perf), for ids read several times
            // per event.
            IdRepr::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..usize::from(*len)]) },
            IdRepr::Heap(s) => s,
        }
    }
}

impl Default for IdText {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::ops::Deref for IdText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for IdText {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl PartialEq for IdText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for IdText {}

impl PartialEq<str> for IdText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for IdText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An identity string as a decoder found it: text borrowed from the payload (or from the decode
/// plan's defaults), or a uuid read from its 16 bytes (written as text only where it is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdStr<'a> {
    Text(&'a str),
    Uuid(apache_avro::Uuid),
}

impl IdStr<'_> {
    /// Calls `f` with the text (a uuid as its hyphenated lowercase form, as `Uuid::to_string`
    /// writes it, without the formatting machinery).
    fn with_text<T>(self, f: impl FnOnce(&str) -> T) -> T {
        match self {
            IdStr::Text(text) => f(text),
            IdStr::Uuid(u) => f(u.hyphenated().encode_lower(&mut apache_avro::Uuid::encode_buffer())),
        }
    }
}

/// The identity fields of a decoded event, borrowing where the decoder could
/// ([`crate::codec::Decoder::decode_features_into`] stores them in a batch's [`IdArena`]
/// without building owned strings first); [`RowIdentityRef::owned`] gives a [`RowIdentity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowIdentityRef<'a> {
    pub event_id: IdStr<'a>,
    pub transaction_id: &'a str,
    pub event_time_ms: i64,
}

impl RowIdentityRef<'_> {
    /// The owned form.
    pub fn owned(&self) -> RowIdentity {
        RowIdentity {
            event_id: self.event_id.with_text(IdText::new),
            transaction_id: IdText::new(self.transaction_id),
            event_time_ms: self.event_time_ms,
        }
    }
}

impl RowIdentity {
    /// The borrowed form (what [`IdArena::store`] takes).
    pub fn borrowed(&self) -> RowIdentityRef<'_> {
        RowIdentityRef {
            event_id: IdStr::Text(&self.event_id),
            transaction_id: &self.transaction_id,
            event_time_ms: self.event_time_ms,
        }
    }
}

/// The identity strings of a batch's inputs, back to back in one reused buffer: storing an
/// event's ids costs a copy into it and no allocation per event (also for ids too long to be
/// inline in an [`IdText`]), and a batch entry holds two [`IdSpan`]s instead of two inline
/// strings (an entry of 128 instead of 184 bytes). Building the inline strings on the decoding
/// thread and moving them on to the entry read back bytes just written in other widths, which
/// stalled the decoder (a quarter of its samples in `perf`, ~2% of the process).
#[derive(Debug, Default)]
pub struct IdArena(String);

/// Where one identity string lies in its batch's [`IdArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpan {
    start: usize,
    len: usize,
}

/// A stored [`RowIdentityRef`]: the spans of its strings in an [`IdArena`] and the event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpans {
    pub event_id: IdSpan,
    pub transaction_id: IdSpan,
    pub event_time_ms: i64,
}

impl IdArena {
    /// Appends `id`'s strings; the spans read them back ([`IdArena::get`]) until the next
    /// [`IdArena::clear`].
    pub fn store(&mut self, id: RowIdentityRef<'_>) -> IdSpans {
        let start = self.0.len();
        id.event_id.with_text(|text| self.0.push_str(text));
        let event_id = IdSpan { start, len: self.0.len() - start };
        let start = self.0.len();
        self.0.push_str(id.transaction_id);
        let transaction_id = IdSpan { start, len: self.0.len() - start };
        IdSpans { event_id, transaction_id, event_time_ms: id.event_time_ms }
    }

    /// The string at `span` (a span this arena returned since its last clear).
    ///
    /// # Panics
    /// If `span` does not lie in the arena (a span of another arena, or from before a clear).
    pub fn get(&self, span: IdSpan) -> &str {
        &self.0[span.start..span.start + span.len]
    }

    /// The identity stored as `spans`.
    pub fn identity(&self, spans: &IdSpans) -> RowIdentityRef<'_> {
        RowIdentityRef {
            event_id: IdStr::Text(self.get(spans.event_id)),
            transaction_id: self.get(spans.transaction_id),
            event_time_ms: spans.event_time_ms,
        }
    }

    /// Forgets every string, keeping the buffer's capacity.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// The manifest does not fit the reader schema.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("model manifest {manifest} does not fit the reader schema {schema} ({} problem(s)); fix the manifest's features or the reader schema:\n  - {}", problems.len(), problems.join("\n  - "))]
    Incompatible {
        /// `name/version` of the manifest.
        manifest: String,
        /// Full name of the reader schema.
        schema: String,
        problems: Vec<String>,
    },
}

/// Identity field names in the reader schema.
const EVENT_ID: &str = "event_id";
const TRANSACTION_ID: &str = "transaction_id";
const EVENT_TIME: &str = "event_time";

const MS_PER_HOUR: i64 = 3_600_000;

/// ln(1 + x), as the `log1p` transform computes it (both decoders use this one function, so
/// their rows stay equal bit for bit).
///
/// Kahan's formulation on top of `ln`: with u = 1 + x rounded, ln(u) · x / (u − 1) is within a
/// few ulps of ln(1 + x) (Goldberg, "What every computer scientist should know about
/// floating-point arithmetic", theorem 4), and the error of u cancels in x / (u − 1). libm's `ln`
/// is table driven and branch-light, while its `log1p` branches on the magnitude of x: this
/// costs about half as much (8.5 against 16 ns per call in a loop on the development machine;
/// three features of the shipped model take it per event). Every f32 column it wrote in
/// `tests::log1p_matches_libm` (two million values) is the one `f64::ln_1p` gives, and the f64
/// results are within 4 ulps. IEEE cases as `ln_1p`: NaN below −1 and for NaN, −∞ at −1, +∞ at
/// +∞, x itself where 1 + x rounds to 1 (±0, tiny and subnormal x).
#[inline]
pub fn log1p(x: f64) -> f64 {
    let u = 1.0 + x;
    if u == 1.0 || u == f64::INFINITY {
        x
    } else {
        u.ln() * (x / (u - 1.0))
    }
}

/// One feature, resolved against the reader schema.
#[derive(Debug)]
struct Step {
    source: String,
    /// Position of `source` in the reader record (a resolved `Value::Record` has reader order).
    field: usize,
    transform: Transform,
    on_null: OnNull,
    default: f32,
    missing_flag: bool,
    /// First column of this feature in the row.
    offset: usize,
    /// Value columns (without the missing flag).
    width: usize,
    /// `one_hot`: category → column within the feature.
    categories: HashMap<String, usize>,
    /// `one_hot`: column of `__other__` within the feature.
    other: Option<usize>,
}

/// Builds model rows from decoded `Transaction` records, as one manifest says.
#[derive(Debug)]
pub struct FeatureExtractor {
    steps: Vec<Step>,
    columns: Vec<String>,
    event_id: usize,
    transaction_id: usize,
    event_time: usize,
}

impl FeatureExtractor {
    /// Plans the extraction; fails, listing every problem, if a feature's source field is absent
    /// from `reader` or has a type its transform cannot take.
    pub fn new(manifest: &Manifest, reader: &Schema) -> Result<Self, FeatureError> {
        let label = format!("{}/{}", manifest.name, manifest.version);
        let Schema::Record(record) = reader else {
            return Err(FeatureError::Incompatible {
                manifest: label,
                schema: "(not a record)".into(),
                problems: vec!["the reader schema is not a record".into()],
            });
        };
        let mut problems = Vec::new();

        let mut identity = |name: &str, ok: fn(&Schema) -> bool, want: &str| -> usize {
            match record.lookup.get(name) {
                Some(&i) if ok(&record.fields[i].schema) => i,
                Some(&i) => {
                    problems.push(format!(
                        "identity field `{name}` is {} in the reader schema, expected {want}",
                        kind(&record.fields[i].schema)
                    ));
                    usize::MAX
                }
                None => {
                    problems.push(format!("identity field `{name}` is not in the reader schema"));
                    usize::MAX
                }
            }
        };
        let event_id =
            identity(EVENT_ID, |s| matches!(strip_null(s).0, Schema::String | Schema::Uuid(_)), "a string or uuid");
        let transaction_id = identity(TRANSACTION_ID, |s| matches!(strip_null(s).0, Schema::String), "a string");
        let event_time = identity(
            EVENT_TIME,
            |s| matches!(strip_null(s).0, Schema::TimestampMillis | Schema::Long),
            "a timestamp-millis",
        );

        let mut steps = Vec::with_capacity(manifest.features.len());
        let mut offset = 0;
        for (i, spec) in manifest.features.iter().enumerate() {
            let at = format!("features[{i}] (source `{}`, {})", spec.source, spec.transform);
            let width = spec.value_columns();
            let Some(&field) = record.lookup.get(&spec.source) else {
                problems.push(format!(
                    "{at}: field `{}` is not in the reader schema {} (fields: {})",
                    spec.source,
                    record.name.fullname(None),
                    record.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
                offset += spec.width();
                continue;
            };
            let (schema, _nullable) = strip_null(&record.fields[field].schema);
            let accepted = match spec.transform {
                Transform::Numeric | Transform::Log1p => {
                    matches!(schema, Schema::Int | Schema::Long | Schema::Float | Schema::Double)
                }
                Transform::Boolean => matches!(schema, Schema::Boolean),
                Transform::OneHot => matches!(schema, Schema::String | Schema::Enum(_)),
                Transform::HourOfDay => matches!(schema, Schema::TimestampMillis | Schema::Long),
            };
            if !accepted {
                problems.push(format!(
                    "{at}: field `{}` is {} in the reader schema, which {} cannot take",
                    spec.source,
                    kind(&record.fields[field].schema),
                    spec.transform
                ));
            }
            if let (Transform::OneHot, Schema::Enum(e)) = (spec.transform, schema) {
                for c in &spec.categories {
                    if !e.symbols.contains(c) {
                        problems.push(format!(
                            "{at}: category {c:?} is not a symbol of enum {} ({})",
                            e.name.fullname(None),
                            e.symbols.join(", ")
                        ));
                    }
                }
            }
            steps.push(Step {
                source: spec.source.clone(),
                field,
                transform: spec.transform,
                on_null: spec.on_null,
                default: spec.default,
                missing_flag: spec.missing_flag,
                offset,
                width,
                categories: spec.categories.iter().enumerate().map(|(j, c)| (c.clone(), j)).collect(),
                other: (spec.transform == Transform::OneHot && spec.other).then_some(spec.categories.len()),
            });
            offset += spec.width();
        }

        let columns = manifest.derived_columns();
        if columns.len() != manifest.columns.len() || offset != columns.len() {
            problems.push(format!(
                "features produce {} columns but the manifest lists {}",
                columns.len(),
                manifest.columns.len()
            ));
        }

        if !problems.is_empty() {
            return Err(FeatureError::Incompatible { manifest: label, schema: record.name.fullname(None), problems });
        }
        Ok(Self { steps, columns, event_id, transaction_id, event_time })
    }

    /// Columns per row (`F`).
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Column names, in row order (equal to the manifest's `columns`).
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// Fills `out[..F]` and `missing[..F]` and returns the identity fields.
    ///
    /// `missing[c]` is true where column `c` is a value column of a feature whose source was null
    /// (so it holds the manifest default); the `_missing` flag column itself is never marked.
    ///
    /// # Panics
    /// If `out` or `missing` is shorter than [`num_columns`](Self::num_columns).
    pub fn extract(&self, record: &Value, out: &mut [f32], missing: &mut [bool]) -> Result<RowIdentity, Rejection> {
        let n = self.columns.len();
        let (out, missing) = (&mut out[..n], &mut missing[..n]);
        let Value::Record(fields) = record else {
            return Err(Rejection::new(DeadLetterReason::Undecodable, "decoded value is not a record"));
        };

        let identity = RowIdentity {
            event_id: match field(fields, self.event_id, EVENT_ID) {
                Some(Value::Uuid(u)) => IdStr::Uuid(*u).with_text(IdText::new),
                Some(Value::String(s)) => IdText::new(s),
                other => return Err(identity_missing(EVENT_ID, other)),
            },
            transaction_id: match field(fields, self.transaction_id, TRANSACTION_ID) {
                Some(Value::String(s)) => IdText::new(s),
                other => return Err(identity_missing(TRANSACTION_ID, other)),
            },
            event_time_ms: match field(fields, self.event_time, EVENT_TIME) {
                Some(Value::TimestampMillis(t) | Value::Long(t)) => *t,
                other => return Err(identity_missing(EVENT_TIME, other)),
            },
        };

        for step in &self.steps {
            let cols = &mut out[step.offset..step.offset + step.width];
            let miss = &mut missing[step.offset..step.offset + step.width];
            let value = field(fields, step.field, &step.source);
            let is_null = matches!(value, None | Some(Value::Null));
            if is_null {
                if step.on_null == OnNull::Reject {
                    return Err(Rejection::new(
                        DeadLetterReason::MissingFeature,
                        format!("field `{}` is null or absent and the model requires it", step.source),
                    ));
                }
                let fill = if step.transform == Transform::OneHot { 0.0 } else { step.default };
                cols.fill(fill);
                miss.fill(true);
            } else {
                miss.fill(false);
                // `value` is Some and not Null here.
                step.apply(value.unwrap_or(&Value::Null), cols)?;
            }
            if step.missing_flag {
                let c = step.offset + step.width;
                out[c] = if is_null { 1.0 } else { 0.0 };
                missing[c] = false;
            }
            for (j, v) in cols_of(out, step).iter().enumerate() {
                if !v.is_finite() {
                    return Err(Rejection::new(
                        DeadLetterReason::InvalidFeature,
                        format!(
                            "column `{}` is {v} (from field `{}` = {})",
                            self.columns[step.offset + j],
                            step.source,
                            describe(value)
                        ),
                    ));
                }
            }
        }
        Ok(identity)
    }
}

fn cols_of<'a>(out: &'a [f32], step: &Step) -> &'a [f32] {
    &out[step.offset..step.offset + step.width]
}

impl Step {
    /// Writes the value columns for a non-null value.
    fn apply(&self, value: &Value, cols: &mut [f32]) -> Result<(), Rejection> {
        match self.transform {
            Transform::Numeric => cols[0] = self.number(value)? as f32,
            Transform::Log1p => cols[0] = log1p(self.number(value)?) as f32,
            Transform::Boolean => match value {
                Value::Boolean(b) => cols[0] = if *b { 1.0 } else { 0.0 },
                other => return Err(self.unexpected(other)),
            },
            Transform::HourOfDay => match value {
                Value::TimestampMillis(t) | Value::Long(t) => cols[0] = t.div_euclid(MS_PER_HOUR).rem_euclid(24) as f32,
                other => return Err(self.unexpected(other)),
            },
            Transform::OneHot => {
                let text = match value {
                    Value::String(s) => s.as_str(),
                    Value::Enum(_, s) => s.as_str(),
                    other => return Err(self.unexpected(other)),
                };
                cols.fill(0.0);
                if let Some(&j) = self.categories.get(text) {
                    cols[j] = 1.0;
                } else if let Some(j) = self.other {
                    cols[j] = 1.0;
                }
            }
        }
        Ok(())
    }

    fn number(&self, value: &Value) -> Result<f64, Rejection> {
        Ok(match value {
            Value::Int(v) => f64::from(*v),
            Value::Long(v) => *v as f64,
            Value::Float(v) => f64::from(*v),
            Value::Double(v) => *v,
            other => return Err(self.unexpected(other)),
        })
    }

    /// A value type the reader schema does not allow: only reachable if the record was not
    /// resolved to the reader schema the extractor was planned with.
    fn unexpected(&self, value: &Value) -> Rejection {
        Rejection::new(
            DeadLetterReason::InvalidFeature,
            format!("field `{}` holds {} which {} cannot take", self.source, describe(Some(value)), self.transform),
        )
    }
}

/// The field at `index` (reader order), falling back to a search by name; unions are unwrapped.
fn field<'a>(fields: &'a [(String, Value)], index: usize, name: &str) -> Option<&'a Value> {
    let value = match fields.get(index) {
        Some((n, v)) if n == name => v,
        _ => &fields.iter().find(|(n, _)| n == name)?.1,
    };
    Some(match value {
        Value::Union(_, inner) => inner,
        v => v,
    })
}

fn identity_missing(name: &str, value: Option<&Value>) -> Rejection {
    Rejection::new(DeadLetterReason::MissingFeature, format!("identity field `{name}` is {}", describe(value)))
}

fn describe(value: Option<&Value>) -> String {
    match value {
        None => "absent".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Int(v)) => v.to_string(),
        Some(Value::Long(v)) | Some(Value::TimestampMillis(v)) => v.to_string(),
        Some(Value::Float(v)) => v.to_string(),
        Some(Value::Double(v)) => v.to_string(),
        Some(Value::Boolean(v)) => v.to_string(),
        Some(Value::String(v)) | Some(Value::Enum(_, v)) => format!("{v:?}"),
        Some(Value::Union(_, v)) => describe(Some(v)),
        Some(other) => format!("a {:?} value", apache_avro::schema::SchemaKind::from(other)),
    }
}

/// A schema with a `null` branch removed: `["null", T]` → (T, true). Other unions stay as they are.
fn strip_null(schema: &Schema) -> (&Schema, bool) {
    if let Schema::Union(u) = schema {
        let non_null: Vec<&Schema> = u.variants().iter().filter(|s| !matches!(s, Schema::Null)).collect();
        let nullable = non_null.len() < u.variants().len();
        if non_null.len() == 1 {
            return (non_null[0], nullable);
        }
        return (schema, nullable);
    }
    (schema, matches!(schema, Schema::Null))
}

fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => format!("[{}]", u.variants().iter().map(kind).collect::<Vec<_>>().join(", ")),
        Schema::Record(RecordSchema { name, .. }) => format!("record {}", name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::Uuid(_) => "uuid".into(),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    const EVENT_UUID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    /// `log1p` against libm's `log1p` (`f64::ln_1p`): the IEEE cases give the same value, and over
    /// two million values of every magnitude (random bit patterns, amount-like decimals, whole
    /// counts and values in (−1, 0)) it is within 4 ulps in f64 and writes the very same f32 column.
    #[test]
    fn log1p_matches_libm() {
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for x in [
            f64::NAN,
            f64::NEG_INFINITY,
            -2.0,
            -1.0 - f64::EPSILON,
            -1.0,
            -0.0,
            0.0,
            f64::from_bits(1),
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            1e-300,
            1e-17,
            -1e-17,
            f64::MAX,
            f64::INFINITY,
        ] {
            assert!(same(log1p(x), x.ln_1p()), "log1p({x:e}) = {:e}, libm {:e}", log1p(x), x.ln_1p());
        }
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
        for i in 0..2_000_000u32 {
            let r: u64 = rng.random();
            let x = match i % 4 {
                // Positive finite doubles of every magnitude.
                0 => f64::from_bits((r >> 2) % 0x7FF0_0000_0000_0000),
                // Amounts with cents, up to 10^7.
                1 => (r % 1_000_000_000) as f64 / 100.0,
                // Whole counts (days, transactions).
                2 => (r % 1_000_000) as f64,
                // (−1, 0).
                _ => -((r >> 11) as f64 / (1u64 << 53) as f64),
            };
            let (ours, libm) = (log1p(x), x.ln_1p());
            let ulps = ours.to_bits().abs_diff(libm.to_bits());
            assert!(ulps <= 4, "log1p({x:e}) = {ours:e}, libm {libm:e}: {ulps} ulps apart");
            assert_eq!((ours as f32).to_bits(), (libm as f32).to_bits(), "f32 column of log1p({x:e})");
        }
    }

    fn reader() -> Schema {
        crate::codec::parse_schema(crate::codec::TRANSACTION_SCHEMA).unwrap()
    }

    /// A valid manifest from `features`: columns and reference are derived (shared with the
    /// codec's fast-path tests).
    pub(crate) fn manifest(features: serde_json::Value) -> Manifest {
        let mut m: Manifest = serde_json::from_value(json!({
            "format_version": 1, "name": "t", "version": "1", "model_file": "model.onnx",
            "sha256": "0".repeat(64),
            "input": {"name": "features"}, "output": {"name": "probabilities", "column": 1},
            "threshold": 0.5, "features": features, "columns": [],
            "reference": {"rows": 1, "columns": [], "score": {"name": "score", "edges": [], "counts": [1]}}
        }))
        .unwrap();
        m.columns = m.derived_columns();
        m.reference.columns = m
            .columns
            .iter()
            .map(|c| crate::model::manifest::Histogram { name: c.clone(), edges: vec![], counts: vec![1] })
            .collect();
        m.validate().unwrap();
        m
    }

    fn full_manifest() -> Manifest {
        manifest(json!([
            {"source": "amount", "transform": "numeric"},
            {"source": "amount", "transform": "log1p"},
            {"source": "channel", "transform": "one_hot", "categories": ["POS", "ECOMMERCE"], "other": true},
            {"source": "country", "transform": "one_hot", "categories": ["DE", "FR"]},
            {"source": "event_time", "transform": "hour_of_day"},
            {"source": "account_age_days", "transform": "numeric", "on_null": "default", "default": -1.0, "missing_flag": true},
            {"source": "distance_from_home_km", "transform": "log1p", "on_null": "default", "default": 7.0, "missing_flag": true},
            {"source": "new_device", "transform": "boolean", "on_null": "default", "missing_flag": true},
            {"source": "card_present", "transform": "boolean"}
        ]))
    }

    /// A `Transaction` as written by a producer using the reader schema itself, with some fields
    /// replaced, encoded and decoded back through apache-avro (so value shapes are realistic).
    fn txn(overrides: &[(&str, Value)]) -> Value {
        let schema = reader();
        let mut fields: Vec<(String, Value)> = vec![
            ("event_id".into(), Value::Uuid(EVENT_UUID.parse().unwrap())),
            ("transaction_id".into(), Value::String("tx-0123456789abcdef".into())),
            ("account_id".into(), Value::String("acc-1".into())),
            ("card_id".into(), Value::Union(0, Box::new(Value::Null))),
            ("merchant_id".into(), Value::String("m-1".into())),
            ("amount".into(), Value::Double(99.0)),
            ("currency".into(), Value::String("EUR".into())),
            ("merchant_category".into(), Value::String("5411".into())),
            ("channel".into(), Value::Enum(1, "ECOMMERCE".into())),
            ("country".into(), Value::String("FR".into())),
            ("event_time".into(), Value::TimestampMillis(5 * MS_PER_HOUR + 59 * 60_000)),
            ("account_age_days".into(), Value::Union(1, Box::new(Value::Int(12)))),
            ("distance_from_home_km".into(), Value::Union(1, Box::new(Value::Double(0.0)))),
            ("txn_count_1h".into(), Value::Union(0, Box::new(Value::Null))),
            ("card_present".into(), Value::Union(1, Box::new(Value::Boolean(false)))),
            ("new_device".into(), Value::Union(1, Box::new(Value::Boolean(true)))),
        ];
        for (name, v) in overrides {
            let slot = fields.iter_mut().find(|(n, _)| n == name).expect("known field");
            slot.1 = v.clone();
        }
        let bytes =
            GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(Value::Record(fields)).unwrap();
        GenericDatumReader::builder(&schema)
            .reader_schema(&schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap()
    }

    fn null() -> Value {
        Value::Union(0, Box::new(Value::Null))
    }

    fn some(v: Value) -> Value {
        Value::Union(1, Box::new(v))
    }

    fn run(fx: &FeatureExtractor, record: &Value) -> Result<(Vec<f32>, Vec<bool>, RowIdentity), Rejection> {
        // Poison the buffers so a column the extractor forgets to write shows up.
        let mut out = vec![f32::NAN; fx.num_columns() + 2];
        let mut missing = vec![true; fx.num_columns() + 2];
        let id = fx.extract(record, &mut out, &mut missing)?;
        out.truncate(fx.num_columns());
        missing.truncate(fx.num_columns());
        Ok((out, missing, id))
    }

    fn col(fx: &FeatureExtractor, row: &[f32], name: &str) -> f32 {
        row[fx.column_names().iter().position(|c| c == name).unwrap_or_else(|| panic!("no column {name}"))]
    }

    #[test]
    fn column_count_and_names_equal_the_manifest() {
        let m = full_manifest();
        let fx = FeatureExtractor::new(&m, &reader()).unwrap();
        assert_eq!(fx.num_columns(), m.num_columns());
        assert_eq!(fx.column_names(), &m.columns[..]);
        assert_eq!(fx.num_columns(), 15);
    }

    #[test]
    fn every_transform_on_a_complete_record() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let (row, missing, id) = run(&fx, &txn(&[])).unwrap();
        let expected: [(&str, f32); 15] = [
            ("amount", 99.0),
            ("amount_log1p", (100f64).ln() as f32),
            ("channel=POS", 0.0),
            ("channel=ECOMMERCE", 1.0),
            ("channel=__other__", 0.0),
            ("country=DE", 0.0),
            ("country=FR", 1.0),
            ("event_time_hour", 5.0),
            ("account_age_days", 12.0),
            ("account_age_days_missing", 0.0),
            ("distance_from_home_km_log1p", 0.0),
            ("distance_from_home_km_missing", 0.0),
            ("new_device", 1.0),
            ("new_device_missing", 0.0),
            ("card_present", 0.0),
        ];
        assert_eq!(expected.len(), fx.num_columns());
        for (name, v) in &expected {
            assert_eq!(col(&fx, &row, name), *v, "column {name}");
        }
        assert!(missing.iter().all(|m| !m));
        assert_eq!(
            id,
            RowIdentity {
                event_id: EVENT_UUID.into(),
                transaction_id: "tx-0123456789abcdef".into(),
                event_time_ms: 5 * MS_PER_HOUR + 59 * 60_000,
            }
        );
    }

    #[test]
    fn the_id_arena_reads_back_what_it_stored() {
        let mut arena = IdArena::default();
        let texts = ["", "tx-1", EVENT_UUID, &"é".repeat(23), &"x".repeat(IdText::INLINE + 1), &"y".repeat(5000)];
        let uuid = apache_avro::Uuid::parse_str(EVENT_UUID).unwrap();
        let mut stored = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let event_id = if i % 2 == 0 { IdStr::Text(text) } else { IdStr::Uuid(uuid) };
            let id =
                RowIdentityRef { event_id, transaction_id: texts[texts.len() - 1 - i], event_time_ms: i as i64 - 3 };
            stored.push((arena.store(id), id.owned()));
        }
        // Every span still reads back after later stores, in any order.
        for (spans, owned) in stored.iter().rev() {
            assert_eq!(arena.identity(spans).owned(), *owned);
            assert_eq!(arena.identity(spans), owned.borrowed(), "read back as text");
        }
        let (spans, _) = stored[1];
        assert_eq!(arena.get(spans.event_id), EVENT_UUID, "a uuid is stored as its hyphenated lowercase text");
        arena.clear();
        let spans = arena.store(RowIdentityRef { event_id: IdStr::Text("e"), transaction_id: "t", event_time_ms: 0 });
        assert_eq!((arena.get(spans.event_id), arena.get(spans.transaction_id)), ("e", "t"), "cleared, then reused");
        assert_eq!(spans.event_id, IdSpan { start: 0, len: 1 }, "clear forgets everything stored before");
    }

    #[test]
    fn an_owned_identity_and_its_borrowed_form_convert_both_ways() {
        let uuid = apache_avro::Uuid::parse_str(EVENT_UUID).unwrap();
        let borrowed = RowIdentityRef { event_id: IdStr::Uuid(uuid), transaction_id: "tx-9", event_time_ms: 42 };
        let owned = borrowed.owned();
        assert_eq!(
            owned,
            RowIdentity { event_id: EVENT_UUID.into(), transaction_id: "tx-9".into(), event_time_ms: 42 }
        );
        assert_eq!(owned.borrowed(), RowIdentityRef { event_id: IdStr::Text(EVENT_UUID), ..borrowed });
        assert_eq!(owned.borrowed().owned(), owned);
    }

    #[test]
    fn id_text_is_inline_up_to_its_limit_and_reads_back_exactly() {
        for text in ["", "tx-1", EVENT_UUID, &"é".repeat(23), &"x".repeat(IdText::INLINE), &"y".repeat(200)] {
            let id = IdText::new(text);
            assert_eq!(id.as_str(), text);
            assert_eq!(&*id, text);
            assert_eq!(id, IdText::from(text));
            assert_eq!(format!("{id}"), text);
            assert_eq!(matches!(id.0, IdRepr::Inline { .. }), text.len() <= IdText::INLINE, "{text}");
        }
    }

    #[test]
    fn uuid_logical_type_decodes_as_uuid_and_a_string_event_id_also_works() {
        let record = txn(&[]);
        let Value::Record(fields) = &record else { panic!() };
        // apache-avro 0.22 decodes {"type":"string","logicalType":"uuid"} as Value::Uuid.
        assert!(matches!(fields[0], (ref n, Value::Uuid(_)) if n == "event_id"), "{:?}", fields[0]);

        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let mut fields = fields.clone();
        fields[0].1 = Value::String("not-necessarily-a-uuid".into());
        let (_, _, id) = run(&fx, &Value::Record(fields)).unwrap();
        assert_eq!(id.event_id, "not-necessarily-a-uuid");
    }

    #[test]
    fn nulls_take_defaults_and_set_missing_flags() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let record = txn(&[("account_age_days", null()), ("distance_from_home_km", null()), ("new_device", null())]);
        let (row, missing, _) = run(&fx, &record).unwrap();
        let names = fx.column_names();
        let idx = |n: &str| names.iter().position(|c| c == n).unwrap();
        // Defaults are used as is (log1p's default is not transformed).
        assert_eq!(col(&fx, &row, "account_age_days"), -1.0);
        assert_eq!(col(&fx, &row, "distance_from_home_km_log1p"), 7.0);
        assert_eq!(col(&fx, &row, "new_device"), 0.0);
        for flag in ["account_age_days_missing", "distance_from_home_km_missing", "new_device_missing"] {
            assert_eq!(col(&fx, &row, flag), 1.0, "{flag}");
            assert!(!missing[idx(flag)], "the flag column itself is never marked missing");
        }
        for value_col in ["account_age_days", "distance_from_home_km_log1p", "new_device"] {
            assert!(missing[idx(value_col)], "{value_col}");
        }
        assert_eq!(missing.iter().filter(|m| **m).count(), 3);
    }

    #[test]
    fn null_one_hot_with_default_is_all_zero_and_missing() {
        let m = manifest(json!([
            {"source": "card_id", "transform": "one_hot", "categories": ["c1", "c2"], "other": true,
             "on_null": "default", "default": 5.0, "missing_flag": true}
        ]));
        let fx = FeatureExtractor::new(&m, &reader()).unwrap();
        let (row, missing, _) = run(&fx, &txn(&[("card_id", null())])).unwrap();
        assert_eq!(row, [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(missing, [true, true, true, false]);
        let (row, missing, _) = run(&fx, &txn(&[("card_id", some(Value::String("c2".into())))])).unwrap();
        assert_eq!(row, [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(missing, [false; 4]);
    }

    #[test]
    fn null_with_reject_is_missing_feature_naming_the_field() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let err = run(&fx, &txn(&[("card_present", null())])).unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::MissingFeature);
        assert!(err.detail.contains("card_present"), "{}", err.detail);
    }

    #[test]
    fn one_hot_unknown_values_go_to_other_or_nowhere() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let (row, _, _) =
            run(&fx, &txn(&[("channel", Value::Enum(4, "MOTO".into())), ("country", Value::String("US".into()))]))
                .unwrap();
        assert_eq!(col(&fx, &row, "channel=POS"), 0.0);
        assert_eq!(col(&fx, &row, "channel=ECOMMERCE"), 0.0);
        assert_eq!(col(&fx, &row, "channel=__other__"), 1.0);
        assert_eq!(col(&fx, &row, "country=DE"), 0.0);
        assert_eq!(col(&fx, &row, "country=FR"), 0.0);
        // Exact text comparison: case matters.
        let (row, _, _) = run(&fx, &txn(&[("country", Value::String("de".into()))])).unwrap();
        assert_eq!(col(&fx, &row, "country=DE"), 0.0);
    }

    #[test]
    fn hour_of_day_uses_a_non_negative_modulo() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        for (t, hour) in [
            (0, 0.0),
            (MS_PER_HOUR - 1, 0.0),
            (MS_PER_HOUR, 1.0),
            (23 * MS_PER_HOUR, 23.0),
            (24 * MS_PER_HOUR, 0.0),
            (-1, 23.0),
            (-MS_PER_HOUR, 23.0),
            (-MS_PER_HOUR - 1, 22.0),
            (-24 * MS_PER_HOUR, 0.0),
            (i64::MIN, (i64::MIN.div_euclid(MS_PER_HOUR).rem_euclid(24)) as f32),
        ] {
            let (row, _, id) = run(&fx, &txn(&[("event_time", Value::TimestampMillis(t))])).unwrap();
            assert_eq!(col(&fx, &row, "event_time_hour"), hour, "t = {t}");
            assert_eq!(id.event_time_ms, t);
        }
    }

    #[test]
    fn nan_and_infinite_columns_are_invalid_feature_naming_the_column() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        for (amount, column) in [
            (f64::NAN, "`amount`"),
            (f64::INFINITY, "`amount`"),
            (1e300, "`amount`"), // finite in f64, infinite as f32
            (-2.0, "`amount_log1p`"),
            (-1.0, "`amount_log1p`"),
        ] {
            let err = run(&fx, &txn(&[("amount", Value::Double(amount))])).unwrap_err();
            assert_eq!(err.reason, DeadLetterReason::InvalidFeature, "amount {amount}");
            assert!(err.detail.contains(column), "amount {amount}: {}", err.detail);
        }
        let err = run(&fx, &txn(&[("distance_from_home_km", some(Value::Double(-3.0)))])).unwrap_err();
        assert!(err.detail.contains("distance_from_home_km_log1p") && err.detail.contains("-3"), "{}", err.detail);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_all_reported() {
        let m = manifest(json!([
            {"source": "no_such_field", "transform": "numeric"},
            {"source": "amount", "transform": "one_hot", "categories": ["1"]},
            {"source": "channel", "transform": "one_hot", "categories": ["POS", "CARRIER_PIGEON"]},
            {"source": "country", "transform": "hour_of_day"},
            {"source": "currency", "transform": "boolean"}
        ]));
        let err = FeatureExtractor::new(&m, &reader()).unwrap_err();
        let FeatureError::Incompatible { problems, .. } = &err;
        let all = problems.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        assert!(all.contains("`no_such_field` is not in the reader schema"), "{all}");
        assert!(all.contains("`amount` is double") && all.contains("one_hot cannot take"), "{all}");
        assert!(all.contains("CARRIER_PIGEON"), "{all}");
        assert!(all.contains("`country` is string") && all.contains("hour_of_day"), "{all}");
        assert!(all.contains("`currency`"), "{all}");
        assert!(err.to_string().contains("io.streamscore.payments.Transaction"), "{err}");
    }

    #[test]
    fn missing_identity_fields_are_missing_feature() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let Value::Record(fields) = txn(&[]) else { panic!() };
        for drop in [EVENT_ID, TRANSACTION_ID, EVENT_TIME] {
            let rec = Value::Record(fields.iter().filter(|(n, _)| n != drop).cloned().collect());
            let err = run(&fx, &rec).unwrap_err();
            assert_eq!(err.reason, DeadLetterReason::MissingFeature, "{drop}");
            assert!(err.detail.contains(drop), "{}", err.detail);
        }
    }

    #[test]
    fn fields_are_found_by_name_when_not_at_the_planned_index() {
        let fx = FeatureExtractor::new(&full_manifest(), &reader()).unwrap();
        let Value::Record(mut fields) = txn(&[]) else { panic!() };
        let (expected, _, _) = run(&fx, &Value::Record(fields.clone())).unwrap();
        fields.reverse();
        let (row, _, id) = run(&fx, &Value::Record(fields)).unwrap();
        assert_eq!(row, expected);
        assert_eq!(id.event_id, EVENT_UUID);
    }

    #[test]
    fn writer_with_other_field_order_and_an_extra_field_resolves_to_reader_order() {
        let reader = reader();
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"Transaction","namespace":"io.streamscore.payments","fields":[
              {"name":"note","type":"string"},
              {"name":"new_device","type":["null","boolean"]},
              {"name":"amount","type":"double"},
              {"name":"country","type":"string"},
              {"name":"channel","type":{"type":"enum","name":"Channel","symbols":["POS","ECOMMERCE","MOBILE","ATM","MOTO"]}},
              {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"merchant_category","type":"string"},
              {"name":"currency","type":"string"},
              {"name":"merchant_id","type":"string"},
              {"name":"account_id","type":"string"},
              {"name":"transaction_id","type":"string"},
              {"name":"event_id","type":{"type":"string","logicalType":"uuid"}},
              {"name":"card_present","type":["null","boolean"]}
            ]}"#,
        )
        .unwrap();
        let written = Value::Record(vec![
            ("note".into(), Value::String("ignored".into())),
            ("new_device".into(), some(Value::Boolean(false))),
            ("amount".into(), Value::Double(3.0)),
            ("country".into(), Value::String("DE".into())),
            ("channel".into(), Value::Enum(0, "POS".into())),
            ("event_time".into(), Value::TimestampMillis(-1)),
            ("merchant_category".into(), Value::String("5411".into())),
            ("currency".into(), Value::String("EUR".into())),
            ("merchant_id".into(), Value::String("m".into())),
            ("account_id".into(), Value::String("a".into())),
            ("transaction_id".into(), Value::String("tx".into())),
            ("event_id".into(), Value::Uuid(EVENT_UUID.parse().unwrap())),
            ("card_present".into(), some(Value::Boolean(true))),
        ]);
        let bytes = GenericDatumWriter::builder(&writer).build().unwrap().write_value_to_vec(written).unwrap();
        let decoded = GenericDatumReader::builder(&writer)
            .reader_schema(&reader)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        let Value::Record(fields) = &decoded else { panic!() };
        let Schema::Record(r) = &reader else { panic!() };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        let reader_names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, reader_names, "resolved record has reader order, extra field dropped");

        let fx = FeatureExtractor::new(&full_manifest(), &reader).unwrap();
        let (row, missing, id) = run(&fx, &decoded).unwrap();
        assert_eq!(col(&fx, &row, "amount"), 3.0);
        assert_eq!(col(&fx, &row, "channel=POS"), 1.0);
        assert_eq!(col(&fx, &row, "country=DE"), 1.0);
        assert_eq!(col(&fx, &row, "event_time_hour"), 23.0);
        assert_eq!(col(&fx, &row, "card_present"), 1.0);
        // Fields the writer lacks take the reader default (null) → manifest default + flag.
        assert_eq!(col(&fx, &row, "account_age_days"), -1.0);
        assert_eq!(col(&fx, &row, "account_age_days_missing"), 1.0);
        assert_eq!(missing.iter().filter(|m| **m).count(), 2);
        assert_eq!(id.transaction_id, "tx");
    }

    #[test]
    fn shipped_fraud_mlp_manifest_fits_the_reader_schema() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        let m = Manifest::from_dir(&dir).unwrap();
        let fx = FeatureExtractor::new(&m, &reader()).unwrap();
        assert_eq!(fx.num_columns(), m.num_columns());
        let (row, missing, _) = run(&fx, &txn(&[("txn_count_1h", null())])).unwrap();
        assert_eq!(col(&fx, &row, "txn_count_1h_missing"), 1.0);
        assert_eq!(col(&fx, &row, "channel=ECOMMERCE"), 1.0);
        assert_eq!(col(&fx, &row, "amount_log1p"), (100f64).ln() as f32);
        assert_eq!(missing.iter().filter(|m| **m).count(), 1);
    }
}
