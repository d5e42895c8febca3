//! The fast path: an Avro body straight into a feature row, without building a `Value`.
//!
//! A [`FastPlan`] is built once per (writer schema, manifest) pair. It walks the writer's fields
//! in writer order and gives each an op: *skip* (decode and validate, keep nothing) for fields
//! the reader does not have, or *read* for reader fields, which applies the writer→reader
//! resolution apache-avro would apply (promotions, union branches, enum symbols by name) and
//! hands the resolved value to the features and identity fields that use it. Reader fields the
//! writer lacks take their reader default, resolved once when planning. The reads of the shape
//! event schemas mostly have (the writer's type is the reader's, maybe in a union with null; one
//! feature or identity field uses the value) are *fused*: read and written in one step, by
//! [`Fused`], without the resolved value's hand-off (~20% fewer instructions per record).
//!
//! The plan reproduces the generic path (`Decoder::decode` then `FeatureExtractor::extract`)
//! reason for reason, which decides the order in which failures are reported:
//! 1. anything the body does not decode to (bad varints, lengths, UTF-8, enum or union indexes,
//!    uuids, truncation, trailing bytes, the allocation caps) → `undecodable`, even when an
//!    earlier field already failed to resolve, because apache-avro decodes the whole body before
//!    resolving it;
//! 2. any value that does not resolve to the reader schema → `schema_mismatch`;
//! 3. the identity fields, then the features in manifest order → the first `missing_feature` or
//!    `invalid_feature`, as `FeatureExtractor::extract` reports them.
//!
//! [`FastPlan::new`] returns `None` for what it does not support (the caller then uses the
//! generic path): `big-decimal`, uuids stored as bytes or fixed in a field the reader reads,
//! reader fields of complex types (records, arrays, maps, fixed, multi-branch unions) that the
//! writer also has, and the few resolutions whose rules are unusual (an array into `bytes`, a
//! fixed into `string`). The equivalence is checked by the differential tests in `fast_tests.rs`.

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, NamesRef, NamespaceRef, RecordSchema, ResolvedSchema, UuidSchema};
use apache_avro::types::Value;
use apache_avro::util::{max_allocation_bytes, DEFAULT_MAX_ALLOCATION_BYTES};
use apache_avro::{Schema, Uuid};

use crate::features::{self, FeatureExtractor, IdStr, RowIdentityRef};
use crate::model::manifest::{FeatureSpec, Manifest, OnNull, Transform};
use crate::outcome::{DeadLetterReason, Rejection};

const MS_PER_HOUR: i64 = 3_600_000;
/// Most schema nodes one plan compiles (named types are inlined where they are used, so a
/// schema that reuses a type at every level could otherwise blow up); beyond it, no plan.
const MAX_NODES: usize = 4096;
/// Deepest nesting a plan compiles; the store already refuses writer schemas deeper than 32.
const MAX_DEPTH: usize = 64;

const EVENT_ID: &str = "event_id";
const TRANSACTION_ID: &str = "transaction_id";
const EVENT_TIME: &str = "event_time";

/// A decoder specialised for one writer schema and one manifest.
#[derive(Debug)]
pub struct FastPlan {
    /// One op per writer field, in writer order.
    ops: Vec<Op>,
    /// Reader fields the writer does not have: their resolved reader defaults.
    defaults: Vec<Constant>,
    /// A reader field the writer lacks has no usable default: every decodable body is a mismatch.
    default_mismatch: bool,
    layout: Layout,
    /// apache-avro's allocation cap. It is set once per process (the first call of
    /// `max_allocation_bytes` fixes it), so reading it when planning equals reading it per value.
    cap: usize,
}

/// What planning needs from the manifest and the reader schema; independent of the writer.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    steps: Vec<StepPlan>,
    columns: usize,
    reader: Vec<ReaderField>,
}

/// One reader field: its type and who uses its value.
#[derive(Debug, Clone)]
struct ReaderField {
    name: String,
    /// `None`: a type the plan cannot resolve into (usable only when the writer lacks the field).
    kind: Option<ReaderKind>,
    uses: Uses,
    /// What the field takes when the writer lacks it.
    default: FieldDefault,
}

/// A reader field's default, resolved as apache-avro resolves a record that lacks the field.
#[derive(Debug, Clone)]
enum FieldDefault {
    /// No default, or one that does not resolve: every decodable body is a mismatch.
    Mismatch,
    Value(Owned),
    /// A default of a shape the plan does not hold, for a field a feature or identity uses.
    Unsupported,
}

#[derive(Debug, Clone, Default)]
struct Uses {
    /// Indexes into `Layout::steps`.
    steps: Vec<usize>,
    ident: Option<Ident>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ident {
    EventId,
    TransactionId,
    EventTime,
}

/// A reader field's type, `null` branch removed.
#[derive(Debug, Clone)]
struct ReaderKind {
    ty: ReaderType,
    /// `["null", T]` (either order), or `"null"` itself.
    nullable: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum ReaderType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Enum { symbols: Vec<String>, default: Option<u32> },
    TimestampMillis,
    Uuid,
}

/// One feature, as `FeatureExtractor` plans it.
#[derive(Debug, Clone)]
struct StepPlan {
    source: String,
    transform: Transform,
    reject: bool,
    default: f32,
    flag: bool,
    offset: usize,
    width: usize,
    categories: Categories,
    other: Option<usize>,
    /// `one_hot` of an enum: reader symbol index → column within the feature.
    symbol_columns: Vec<Option<usize>>,
}

#[derive(Debug)]
enum Op {
    Skip(Node),
    Read {
        read: FieldRead,
        field: usize,
    },
    /// A `Read` of the common shape, read and written in one step (see [`Fused`]).
    Fused(Fused),
}

/// A reader default, resolved at planning time.
#[derive(Debug)]
struct Constant {
    value: Owned,
    field: usize,
}

#[derive(Debug, Clone)]
enum Owned {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Text(String),
    Symbol(u32),
    Uuid(Uuid),
    Other,
}

/// How to decode and validate a writer value whose content is not kept.
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    /// `int` and the int-based logical types (zigzag varint within i32).
    Int,
    /// `long` and the long-based logical types.
    Long,
    Float,
    Double,
    /// `bytes`, `decimal` on bytes.
    Bytes,
    String,
    /// `uuid` on a string: must parse.
    UuidString,
    /// `uuid` on bytes: must be 16 bytes long.
    UuidBytes,
    Fixed(usize),
    /// A type apache-avro can never decode (a uuid fixed not of size 16, a duration not of size 12).
    Fail,
    Enum(usize),
    Array {
        items: Box<Node>,
        items_take_bytes: bool,
    },
    Map(Box<Node>),
    Union(Vec<Node>),
    Record(Vec<Node>),
}

/// A writer scalar read for a reader field.
#[derive(Debug, Clone, Copy)]
enum Leaf {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// An enum of this many symbols.
    Enum(usize),
    TimestampMillis,
    Uuid,
}

/// Writer value → reader value, as apache-avro's `Value::resolve` does it.
#[derive(Debug)]
enum Conv {
    Null,
    Bool,
    Int,
    LongToInt,
    Long,
    Float,
    Double,
    /// apache-avro reads the strings "NaN", "INF", "Infinity", "-INF", "-Infinity" into floats.
    SpecialFloat {
        double: bool,
    },
    String,
    Bytes,
    /// Writer symbol index → reader symbol index (the reader enum's default for unknown symbols).
    Enum(Vec<Option<u32>>),
    StringToEnum {
        symbols: Vec<String>,
        default: Option<u32>,
    },
    Timestamp,
    Uuid,
    Mismatch,
}

#[derive(Debug)]
enum FieldRead {
    Leaf(Scalar),
    /// A writer type no reader type in the plan's reach resolves from: decode, then mismatch.
    Mismatch(Node),
    Union(Vec<Branch>),
}

#[derive(Debug)]
enum Branch {
    Leaf(Scalar),
    Mismatch(Node),
}

/// A decoded writer scalar.
#[derive(Debug, Clone, Copy)]
enum Written<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(&'a [u8]),
    Str(&'a str),
    Symbol(u32),
    Timestamp(i64),
    Uuid(UuidValue<'a>),
}

/// A uuid as read: its text when that is already what `Uuid::to_string` writes (hyphenated,
/// lower case: nearly every event's, recognised without parsing it), else the parsed value.
#[derive(Debug, Clone, Copy)]
enum UuidValue<'a> {
    Text(&'a str),
    Value(Uuid),
}

/// A value of the reader's type (timestamps are `Long`, enums their reader symbol index).
#[derive(Debug, Clone, Copy)]
enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Text(&'a str),
    Symbol(u32),
    Uuid(UuidValue<'a>),
    /// Bytes: no feature or identity field takes them.
    Other,
}

impl Owned {
    fn resolved(&self) -> Resolved<'_> {
        match self {
            Owned::Null => Resolved::Null,
            Owned::Bool(b) => Resolved::Bool(*b),
            Owned::Int(v) => Resolved::Int(*v),
            Owned::Long(v) => Resolved::Long(*v),
            Owned::Float(v) => Resolved::Float(*v),
            Owned::Double(v) => Resolved::Double(*v),
            Owned::Text(s) => Resolved::Text(s),
            Owned::Symbol(i) => Resolved::Symbol(*i),
            Owned::Uuid(u) => Resolved::Uuid(UuidValue::Value(*u)),
            Owned::Other => Resolved::Other,
        }
    }
}

impl Layout {
    /// The feature layout of `manifest` over `reader`, checked against `extractor` (which must
    /// have been built from the same manifest and reader). `None`: not supported, or they differ.
    pub(crate) fn new(reader: &Schema, manifest: &Manifest, extractor: &FeatureExtractor) -> Option<Layout> {
        let Schema::Record(record) = reader else { return None };
        let mut fields: Vec<ReaderField> = record
            .fields
            .iter()
            .map(|f| ReaderField {
                name: f.name.clone(),
                kind: reader_kind(&f.schema),
                uses: Uses::default(),
                default: FieldDefault::Mismatch,
            })
            .collect();
        for (name, ident) in
            [(EVENT_ID, Ident::EventId), (TRANSACTION_ID, Ident::TransactionId), (EVENT_TIME, Ident::EventTime)]
        {
            let &i = record.lookup.get(name)?;
            let ty = &fields[i].kind.as_ref()?.ty;
            let ok = match ident {
                Ident::EventId => matches!(ty, ReaderType::String | ReaderType::Uuid),
                Ident::TransactionId => matches!(ty, ReaderType::String),
                Ident::EventTime => matches!(ty, ReaderType::TimestampMillis | ReaderType::Long),
            };
            if !ok {
                return None;
            }
            fields[i].uses.ident = Some(ident);
        }
        let mut steps = Vec::with_capacity(manifest.features.len());
        let mut offset = 0;
        for spec in &manifest.features {
            let &i = record.lookup.get(&spec.source)?;
            let step = step_plan(spec, fields[i].kind.as_ref()?, offset)?;
            fields[i].uses.steps.push(steps.len());
            steps.push(step);
            offset += spec.width();
        }
        if offset != extractor.num_columns() || manifest.derived_columns() != extractor.column_names() {
            return None;
        }
        let names = ResolvedSchema::try_from(reader).ok()?;
        for field in &mut fields {
            let used = !field.uses.steps.is_empty() || field.uses.ident.is_some();
            field.default = match reader_default(record, &field.name, names.get_names()) {
                None => FieldDefault::Mismatch,
                Some(value) => match owned(value, field.kind.as_ref(), used) {
                    Some(v) => FieldDefault::Value(v),
                    None => FieldDefault::Unsupported,
                },
            };
        }
        Some(Layout { steps, columns: offset, reader: fields })
    }
}

impl StepPlan {
    /// A one-hot feature's column for a text: its category's, else the `other` column, if any.
    #[inline]
    fn text_column(&self, text: &str) -> Option<usize> {
        self.categories.position(text).or(self.other)
    }

    /// A one-hot feature's column for a reader enum symbol, if it has one.
    #[inline]
    fn symbol_column(&self, symbol: u32) -> Option<usize> {
        self.symbol_columns.get(symbol as usize).copied().flatten()
    }
}

fn step_plan(spec: &FeatureSpec, kind: &ReaderKind, offset: usize) -> Option<StepPlan> {
    let accepted = match spec.transform {
        Transform::Numeric | Transform::Log1p => {
            matches!(kind.ty, ReaderType::Int | ReaderType::Long | ReaderType::Float | ReaderType::Double)
        }
        Transform::Boolean => kind.ty == ReaderType::Boolean,
        Transform::OneHot => matches!(kind.ty, ReaderType::String | ReaderType::Enum { .. }),
        Transform::HourOfDay => matches!(kind.ty, ReaderType::TimestampMillis | ReaderType::Long),
    };
    let width = spec.value_columns();
    // Null-ness is read back from the first value column's missing mark, so every feature needs one.
    if !accepted || width == 0 {
        return None;
    }
    let other = (spec.transform == Transform::OneHot && spec.other).then_some(spec.categories.len());
    // Like the extractor's category map, where a repeated category's last column wins.
    let column_of = |text: &str| spec.categories.iter().rposition(|c| c == text).or(other);
    let symbol_columns = match &kind.ty {
        ReaderType::Enum { symbols, .. } if spec.transform == Transform::OneHot => {
            symbols.iter().map(|s| column_of(s)).collect()
        }
        _ => Vec::new(),
    };
    Some(StepPlan {
        source: spec.source.clone(),
        transform: spec.transform,
        reject: spec.on_null == OnNull::Reject,
        default: spec.default,
        flag: spec.missing_flag,
        offset,
        width,
        categories: Categories::new(&spec.categories),
        other,
        symbol_columns,
    })
}

/// A one-hot feature's categories, looked up as the extractor's map does (a repeated category's
/// last column wins). Category strings are mostly short codes (currencies, countries), so those
/// of at most 7 bytes are also kept packed into one word with their length: a lookup of a short
/// string compares words, not strings.
#[derive(Debug, Clone)]
struct Categories {
    names: Vec<String>,
    /// Open-addressed table of the packed names (`pack(name)`): (word, its last column), with
    /// [`NEVER`](Categories::NEVER) in empty slots; a power of two, at least twice as many slots
    /// as names (so a probe always ends). A lookup hashes the word and mostly compares once,
    /// instead of scanning every category per one-hot field and event (a feature over the ~250
    /// ISO country codes would compare up to 250 words).
    slots: Vec<(u64, u32)>,
    /// `64 − log2(slots.len())`: the hash keeps the product's top bits.
    shift: u32,
}

impl Categories {
    /// No packed string has its top byte above 7 (its length).
    const NEVER: u64 = u64::MAX;

    fn new(names: &[String]) -> Self {
        let size = (2 * names.len()).next_power_of_two().max(8);
        let mut slots = vec![(Self::NEVER, 0u32); size];
        let shift = 64 - size.trailing_zeros();
        for (column, name) in names.iter().enumerate() {
            let Some(w) = Self::pack(name.as_bytes()) else { continue };
            let mut i = Self::slot(w, shift);
            // A repeated category's last column wins, as in the generic extractor.
            while slots[i].0 != Self::NEVER && slots[i].0 != w {
                i = (i + 1) & (size - 1);
            }
            slots[i] = (w, column as u32);
        }
        Categories { names: names.to_vec(), slots, shift }
    }

    /// The home slot of packed word `w` (Fibonacci hashing: the top bits of w · 2^64/φ).
    #[inline]
    fn slot(w: u64, shift: u32) -> usize {
        (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
    }

    /// The bytes of a string of at most 7 bytes, little-endian, with its length in the top byte:
    /// equal words if and only if equal strings. Read as two possibly overlapping loads (the
    /// overlap ORs a byte onto itself).
    #[inline]
    fn pack(b: &[u8]) -> Option<u64> {
        let n = b.len();
        let bytes = match n {
            0 => 0,
            1 => u64::from(b[0]),
            2..=3 => {
                let (lo, hi) = (u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[n - 2], b[n - 1]]));
                u64::from(lo) | u64::from(hi) << (8 * (n - 2))
            }
            4..=7 => {
                let (lo, hi) = (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]),
                );
                u64::from(lo) | u64::from(hi) << (8 * (n - 4))
            }
            _ => return None,
        };
        Some(bytes | (n as u64) << 56)
    }

    /// The column of `text` within the feature, if it is one of the categories.
    #[inline]
    fn position(&self, text: &str) -> Option<usize> {
        match Self::pack(text.as_bytes()) {
            Some(w) => {
                let mask = self.slots.len() - 1;
                let mut i = Self::slot(w, self.shift);
                loop {
                    let (k, column) = self.slots[i];
                    if k == w {
                        return Some(column as usize);
                    }
                    if k == Self::NEVER {
                        return None;
                    }
                    i = (i + 1) & mask;
                }
            }
            None => self.names.iter().rposition(|c| c == text),
        }
    }
}

/// The reader type of a field, if the plan can resolve into it.
fn reader_kind(schema: &Schema) -> Option<ReaderKind> {
    let (inner, nullable) = match schema {
        Schema::Union(u) => {
            let non_null: Vec<&Schema> = u.variants().iter().filter(|s| !matches!(s, Schema::Null)).collect();
            match non_null.as_slice() {
                [] => (&Schema::Null, true),
                [one] if non_null.len() < u.variants().len() => (*one, true),
                _ => return None,
            }
        }
        s => (s, matches!(s, Schema::Null)),
    };
    let ty = match inner {
        Schema::Null => ReaderType::Null,
        Schema::Boolean => ReaderType::Boolean,
        Schema::Int => ReaderType::Int,
        Schema::Long => ReaderType::Long,
        Schema::Float => ReaderType::Float,
        Schema::Double => ReaderType::Double,
        Schema::Bytes => ReaderType::Bytes,
        Schema::String => ReaderType::String,
        Schema::Enum(e) => ReaderType::Enum {
            symbols: e.symbols.clone(),
            default: e
                .default
                .as_ref()
                .and_then(|d| e.symbols.iter().position(|s| s == d))
                .and_then(|i| u32::try_from(i).ok()),
        },
        Schema::TimestampMillis => ReaderType::TimestampMillis,
        Schema::Uuid(UuidSchema::String) => ReaderType::Uuid,
        _ => return None,
    };
    Some(ReaderKind { ty, nullable })
}

impl FastPlan {
    /// Plans decoding bodies written with `writer` straight into `extractor`'s rows, where
    /// `extractor` was built from `manifest` and `reader`. `None` where the plan does not support
    /// the schemas (see the module doc): use the generic path.
    pub fn new(
        writer: &Schema,
        reader: &Schema,
        manifest: &Manifest,
        extractor: &FeatureExtractor,
    ) -> Option<FastPlan> {
        FastPlan::with_layout(writer, &Layout::new(reader, manifest, extractor)?)
    }

    pub(crate) fn with_layout(writer: &Schema, layout: &Layout) -> Option<FastPlan> {
        let Schema::Record(record) = writer else { return None };
        let resolved = ResolvedSchema::try_from(writer).ok()?;
        let mut compiler = Compiler { names: resolved.get_names(), budget: MAX_NODES };
        let root = record.name.fully_qualified_name(None);
        let ns = root.namespace();
        let reader_index: HashMap<&str, usize> =
            layout.reader.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();

        let mut seen = vec![false; layout.reader.len()];
        let mut writer_names = std::collections::HashSet::new();
        let mut ops = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            if !writer_names.insert(field.name.as_str()) {
                return None;
            }
            match reader_index.get(field.name.as_str()) {
                None => ops.push(Op::Skip(compiler.node(&field.schema, ns, 1)?)),
                Some(&i) => {
                    seen[i] = true;
                    let kind = layout.reader[i].kind.as_ref()?;
                    let read = compiler.field_read(&field.schema, ns, kind)?;
                    ops.push(Fused::plan(&read, i, layout).unwrap_or(Op::Read { read, field: i }));
                }
            }
        }

        let mut defaults = Vec::new();
        let mut default_mismatch = false;
        for (i, rf) in layout.reader.iter().enumerate().filter(|(i, _)| !seen[*i]) {
            match &rf.default {
                FieldDefault::Mismatch => default_mismatch = true,
                FieldDefault::Unsupported => return None,
                FieldDefault::Value(value) => {
                    if !rf.uses.steps.is_empty() || rf.uses.ident.is_some() {
                        defaults.push(Constant { value: value.clone(), field: i });
                    }
                }
            }
        }
        let cap = max_allocation_bytes(DEFAULT_MAX_ALLOCATION_BYTES);
        Some(FastPlan { ops, defaults, default_mismatch, layout: layout.clone(), cap })
    }

    /// Columns per row.
    pub fn num_columns(&self) -> usize {
        self.layout.columns
    }

    /// What each writer field's op is: `skip`, `read`, or the fused kind (`?`: in a union with
    /// null), e.g. `Number?`. For tests that check which ops the plans they run hold.
    #[cfg(test)]
    pub(crate) fn op_kinds(&self) -> Vec<String> {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Skip(_) => "skip".to_string(),
                Op::Read { .. } => "read".to_string(),
                Op::Fused(f) => {
                    let kind = format!("{:?}", f.kind);
                    let name = kind.split([' ', '(']).next().unwrap_or_default();
                    format!("{name}{}", if f.null_branch.is_some() { "?" } else { "" })
                }
            })
            .collect()
    }

    /// Decodes one Avro body (no Confluent header) into `out[..F]` and `missing[..F]`, exactly as
    /// the generic decode + extract would, and returns the identity fields.
    ///
    /// Allocates nothing: the identity strings are borrowed from `body` (or from the plan's
    /// defaults). Bounds every claimed length by the bytes left (and by apache-avro's allocation
    /// cap, so a length the generic path refuses is refused here).
    ///
    /// # Panics
    /// If `out` or `missing` is shorter than [`num_columns`](Self::num_columns).
    pub fn decode<'a>(
        &'a self,
        body: &'a [u8],
        out: &mut [f32],
        missing: &mut [bool],
    ) -> Result<RowIdentityRef<'a>, Rejection> {
        let n = self.layout.columns;
        let (out, missing) = (&mut out[..n], &mut missing[..n]);
        let mut row = Row { out, missing, ids: Ids::default(), mismatch: self.default_mismatch, suspect: false };
        for c in &self.defaults {
            row.deliver(&self.layout, c.field, c.value.resolved());
        }
        let mut cur = Cursor { buf: body, pos: 0, cap: self.cap };
        for op in &self.ops {
            let result = match op {
                Op::Skip(node) => skip(node, &mut cur),
                Op::Read { read, field } => read_field(read, &mut cur).map(|v| match v {
                    Some(v) => row.deliver(&self.layout, *field, v),
                    None => row.mismatch = true,
                }),
                Op::Fused(fused) => fused.read(&self.layout, &mut cur, &mut row),
            };
            if let Err(Bad(what)) = result {
                return Err(Rejection::new(
                    DeadLetterReason::Undecodable,
                    format!(
                        "body of {} bytes does not decode with its writer schema: {what} at byte {}",
                        body.len(),
                        cur.pos
                    ),
                ));
            }
        }
        if cur.pos < body.len() {
            return Err(Rejection::new(
                DeadLetterReason::Undecodable,
                format!("{} trailing bytes after the record in a body of {} bytes", body.len() - cur.pos, body.len()),
            ));
        }
        if row.mismatch {
            return Err(Rejection::new(
                DeadLetterReason::SchemaMismatch,
                "a value does not resolve to the reader schema (a null for a required field, an enum symbol the \
                 reader lacks, a long out of int range, bytes that are not UTF-8, a string that is not a uuid, or a \
                 reader field without a default)",
            ));
        }
        let Ids { event_id, transaction_id, event_time } = row.ids;
        let identity = RowIdentityRef {
            event_id: event_id.ok_or_else(|| identity_missing(EVENT_ID))?,
            transaction_id: transaction_id.ok_or_else(|| identity_missing(TRANSACTION_ID))?,
            event_time_ms: event_time.ok_or_else(|| identity_missing(EVENT_TIME))?,
        };
        // Every column of every step was written above (or the row is a mismatch), each write
        // noting whether it could fail these checks; most rows skip the scan.
        if !row.suspect {
            return Ok(identity);
        }
        for step in &self.layout.steps {
            if step.reject && row.missing[step.offset] {
                return Err(Rejection::new(
                    DeadLetterReason::MissingFeature,
                    format!("field `{}` is null or absent and the model requires it", step.source),
                ));
            }
            // One-hot columns hold only 0 and 1 (see `Row::write`).
            if step.transform == Transform::OneHot {
                continue;
            }
            for (j, v) in row.out[step.offset..step.offset + step.width].iter().enumerate() {
                if !v.is_finite() {
                    return Err(Rejection::new(
                        DeadLetterReason::InvalidFeature,
                        format!("column {} is {v} (from field `{}`)", step.offset + j, step.source),
                    ));
                }
            }
        }
        Ok(identity)
    }
}

fn identity_missing(name: &str) -> Rejection {
    Rejection::new(DeadLetterReason::MissingFeature, format!("identity field `{name}` is null"))
}

/// The value a reader field the writer lacks takes, resolved as apache-avro resolves a record
/// without that field; `None` when that fails (no default, or one that does not resolve).
fn reader_default(reader: &RecordSchema, name: &str, names: &NamesRef<'_>) -> Option<Value> {
    let field = reader.fields.iter().find(|f| f.name == name)?;
    field.default.as_ref()?;
    let mut one = reader.clone();
    one.fields = vec![field.clone()];
    one.lookup = [(name.to_string(), 0)].into_iter().collect();
    let schema = Schema::Record(one);
    match Value::Record(vec![]).resolve_with_names(&schema, names).ok()? {
        Value::Record(mut fields) => fields.pop().map(|(_, v)| v),
        _ => None,
    }
}

/// A resolved default as the plan holds it; `None` if a used field's default has a shape the plan
/// does not know.
fn owned(value: Value, kind: Option<&ReaderKind>, used: bool) -> Option<Owned> {
    let value = match value {
        Value::Union(_, v) => *v,
        v => v,
    };
    Some(match value {
        Value::Null => Owned::Null,
        Value::Boolean(b) => Owned::Bool(b),
        Value::Int(v) => Owned::Int(v),
        Value::Long(v) | Value::TimestampMillis(v) => Owned::Long(v),
        Value::Float(v) => Owned::Float(v),
        Value::Double(v) => Owned::Double(v),
        Value::String(s) => Owned::Text(s),
        Value::Enum(i, _) if matches!(kind.map(|k| &k.ty), Some(ReaderType::Enum { .. })) => Owned::Symbol(i),
        Value::Uuid(u) => Owned::Uuid(u),
        _ if !used => Owned::Other,
        _ => return None,
    })
}

// ---------------------------------------------------------------- planning the writer side

struct Compiler<'n, 's> {
    names: &'n NamesRef<'s>,
    budget: usize,
}

impl<'s> Compiler<'_, 's> {
    fn spend(&mut self, depth: usize) -> Option<()> {
        self.budget = self.budget.checked_sub(1)?;
        (depth <= MAX_DEPTH).then_some(())
    }

    /// How to decode and validate a value of `schema` that nobody reads, qualifying names the way
    /// apache-avro's `decode_internal` does.
    fn node(&mut self, schema: &'s Schema, ns: NamespaceRef, depth: usize) -> Option<Node> {
        self.spend(depth)?;
        Some(match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Node::Bytes,
                InnerDecimalSchema::Fixed(f) => Node::Fixed(f.size),
            },
            Schema::Uuid(UuidSchema::String) => Node::UuidString,
            Schema::Uuid(UuidSchema::Bytes) => Node::UuidBytes,
            Schema::Uuid(UuidSchema::Fixed(f)) if f.size == 16 => Node::Fixed(16),
            Schema::Uuid(UuidSchema::Fixed(_)) => Node::Fail,
            Schema::Duration(f) if f.size == 12 => Node::Fixed(12),
            Schema::Duration(_) => Node::Fail,
            Schema::Fixed(f) => Node::Fixed(f.size),
            Schema::Enum(e) => Node::Enum(e.symbols.len()),
            Schema::Array(a) => {
                let items = self.node(&a.items, ns, depth + 1)?;
                Node::Array { items_take_bytes: items.takes_bytes(), items: Box::new(items) }
            }
            Schema::Map(m) => Node::Map(Box::new(self.node(&m.types, ns, depth + 1)?)),
            Schema::Union(u) => {
                Node::Union(u.variants().iter().map(|v| self.node(v, ns, depth + 1)).collect::<Option<_>>()?)
            }
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(ns);
                let inner = name.namespace();
                Node::Record(r.fields.iter().map(|f| self.node(&f.schema, inner, depth + 1)).collect::<Option<_>>()?)
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let target = *self.names.get(name.as_ref())?;
                self.node(target, name.namespace(), depth + 1)?
            }
            _ => return None,
        })
    }

    /// `schema` with references followed.
    fn deref(&self, schema: &'s Schema, ns: NamespaceRef) -> Option<&'s Schema> {
        match schema {
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let target: &'s Schema = self.names.get(name.as_ref())?;
                // A named type's own name is fully qualified, so its namespace no longer matters.
                match target {
                    Schema::Ref { .. } => None,
                    s => Some(s),
                }
            }
            s => Some(s),
        }
    }

    /// How to read a writer field into the reader field of type `kind`.
    fn field_read(&mut self, schema: &'s Schema, ns: NamespaceRef, kind: &ReaderKind) -> Option<FieldRead> {
        if let Schema::Union(u) = schema {
            let branches = u
                .variants()
                .iter()
                .map(|v| match self.leaf_or_node(v, ns, kind)? {
                    Ok((leaf, conv)) => Some(Branch::Leaf(Scalar::new(leaf, conv))),
                    Err(node) => Some(Branch::Mismatch(node)),
                })
                .collect::<Option<_>>()?;
            return Some(FieldRead::Union(branches));
        }
        Some(match self.leaf_or_node(schema, ns, kind)? {
            Ok((leaf, conv)) => FieldRead::Leaf(Scalar::new(leaf, conv)),
            Err(node) => FieldRead::Mismatch(node),
        })
    }

    /// A scalar the plan resolves (with its conversion), or a node to decode before a mismatch.
    fn leaf_or_node(
        &mut self,
        schema: &'s Schema,
        ns: NamespaceRef,
        kind: &ReaderKind,
    ) -> Option<Result<(Leaf, Conv), Node>> {
        let target = self.deref(schema, ns)?;
        let (leaf, writer_symbols) = match target {
            Schema::Null => (Leaf::Null, None),
            Schema::Boolean => (Leaf::Boolean, None),
            Schema::Int => (Leaf::Int, None),
            Schema::Long => (Leaf::Long, None),
            Schema::Float => (Leaf::Float, None),
            Schema::Double => (Leaf::Double, None),
            Schema::Bytes => (Leaf::Bytes, None),
            Schema::String => (Leaf::String, None),
            Schema::Enum(e) => (Leaf::Enum(e.symbols.len()), Some(&e.symbols)),
            Schema::TimestampMillis => (Leaf::TimestampMillis, None),
            Schema::Uuid(UuidSchema::String) => (Leaf::Uuid, None),
            // A uuid on bytes or fixed resolves into a reader uuid: not planned.
            Schema::Uuid(_) | Schema::BigDecimal => return None,
            other => {
                // An array resolves into bytes and a fixed into a string (apache-avro extensions):
                // not planned. Every other non-scalar writer type fails to resolve into the
                // scalar reader types of a plan.
                if matches!(
                    (&kind.ty, other),
                    (ReaderType::Bytes, Schema::Array(_)) | (ReaderType::String, Schema::Fixed(_))
                ) {
                    return None;
                }
                return Some(Err(self.node(schema, ns, 1)?));
            }
        };
        Some(Ok((leaf, conv(leaf, writer_symbols.map(|s| s.as_slice()), kind))))
    }
}

/// The conversion apache-avro applies to a writer `leaf` read into a reader field of `kind`.
fn conv(leaf: Leaf, writer_symbols: Option<&[String]>, kind: &ReaderKind) -> Conv {
    use Leaf as L;
    use ReaderType as R;
    if let L::Null = leaf {
        return if kind.nullable { Conv::Null } else { Conv::Mismatch };
    }
    match (&kind.ty, leaf) {
        (R::Boolean, L::Boolean) => Conv::Bool,
        (R::Int, L::Int) => Conv::Int,
        (R::Int, L::Long) => Conv::LongToInt,
        (R::Long, L::Int | L::Long) => Conv::Long,
        (R::Float, L::Int | L::Long | L::Float | L::Double) => Conv::Float,
        (R::Double, L::Int | L::Long | L::Float | L::Double) => Conv::Double,
        (R::Float, L::String) => Conv::SpecialFloat { double: false },
        (R::Double, L::String) => Conv::SpecialFloat { double: true },
        (R::String, L::String | L::Bytes) => Conv::String,
        (R::Bytes, L::String | L::Bytes) => Conv::Bytes,
        (R::Enum { symbols, default }, L::Enum(_)) => Conv::Enum(
            writer_symbols
                .unwrap_or_default()
                .iter()
                .map(|s| symbols.iter().position(|r| r == s).and_then(|i| u32::try_from(i).ok()).or(*default))
                .collect(),
        ),
        (R::Enum { symbols, default }, L::String) => Conv::StringToEnum { symbols: symbols.clone(), default: *default },
        (R::TimestampMillis, L::Int | L::Long | L::TimestampMillis) => Conv::Timestamp,
        (R::Uuid, L::Uuid | L::String) => Conv::Uuid,
        _ => Conv::Mismatch,
    }
}

impl Node {
    /// Whether every value of this type takes at least one body byte.
    fn takes_bytes(&self) -> bool {
        match self {
            Node::Null => false,
            Node::Fixed(n) => *n > 0,
            Node::Record(fields) => fields.iter().any(Node::takes_bytes),
            _ => true,
        }
    }
}

// ---------------------------------------------------------------- decoding

/// Why a body does not decode (the detail of an `undecodable` rejection).
struct Bad(&'static str);

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// apache-avro's allocation cap ([`FastPlan::cap`]).
    cap: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, Bad> {
        let b = *self.buf.get(self.pos).ok_or(Bad("the body ends inside a value"))?;
        self.pos += 1;
        Ok(b)
    }

    /// apache-avro's varint: at most 10 bytes, bits past 64 dropped.
    #[inline]
    fn long(&mut self) -> Result<i64, Bad> {
        // Most varints of an event are one byte (lengths, union branches, small numbers).
        if let Some(&b) = self.buf.get(self.pos) {
            if b & 0x80 == 0 {
                self.pos += 1;
                return Ok(i64::from(b >> 1) ^ -i64::from(b & 1));
            }
        }
        self.long_multi_byte()
    }

    #[inline(never)]
    fn long_multi_byte(&mut self) -> Result<i64, Bad> {
        let mut z = 0u64;
        for j in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7F) << (j * 7);
            if b & 0x80 == 0 {
                return Ok(if z & 1 == 0 { (z >> 1) as i64 } else { !(z >> 1) as i64 });
            }
        }
        Err(Bad("a varint is longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, Bad> {
        i32::try_from(self.long()?).map_err(|_| Bad("an int is out of range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.remaining() {
            return Err(Bad("a value is longer than the bytes left"));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn boolean(&mut self) -> Result<bool, Bad> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Bad("a boolean is neither 0 nor 1")),
        }
    }

    fn float(&mut self) -> Result<f32, Bad> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn double(&mut self) -> Result<f64, Bad> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// A bytes/string length, refused like apache-avro's `decode_len` does.
    fn len(&mut self) -> Result<usize, Bad> {
        let len = usize::try_from(self.long()?).map_err(|_| Bad("a length is negative"))?;
        if len > self.cap {
            return Err(Bad("a length is above the allocation cap"));
        }
        Ok(len)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, Bad> {
        let b = self.bytes()?;
        if is_ascii(b) {
            // SAFETY: ASCII is UTF-8. (The check is cheaper than full validation on the short,
            // mostly ASCII strings of events.)
            return Ok(unsafe { std::str::from_utf8_unchecked(b) });
        }
        std::str::from_utf8(b).map_err(|_| Bad("a string is not UTF-8"))
    }

    /// One array or map block's item count (0 ends the sequence), checked like apache-avro's
    /// `decode_seq_len` plus its cap on the items decoded so far (`total`), `item` bytes each.
    fn block(&mut self, total: &mut usize, item: usize) -> Result<usize, Bad> {
        let raw = self.long()?;
        let count = match raw {
            0 => return Ok(0),
            r if r < 0 => {
                self.long()?;
                r.checked_neg().ok_or(Bad("a block count overflows"))?
            }
            r => r,
        };
        let count = usize::try_from(count).map_err(|_| Bad("a block count is out of range"))?;
        let cap = self.cap;
        if count > cap {
            return Err(Bad("a block count is above the allocation cap"));
        }
        *total = total.checked_add(count).ok_or(Bad("a block count overflows"))?;
        if total.checked_mul(item).is_none_or(|bytes| bytes > cap) {
            return Err(Bad("a collection is above the allocation cap"));
        }
        Ok(count)
    }
}

/// `b.is_ascii()`, for the short strings of events (codes and ids, mostly 2 to 32 bytes) in two
/// or four possibly overlapping word loads instead of the general routine's alignment handling.
#[inline]
fn is_ascii(b: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word =
        |at: usize| b.get(at..at + 8).and_then(|w| w.first_chunk::<8>()).map_or(HIGH, |w| u64::from_ne_bytes(*w));
    match b.len() {
        0 => true,
        n @ 1..=3 => (b[0] | b[n / 2] | b[n - 1]) & 0x80 == 0,
        4..=7 => match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
            (Some(lo), Some(hi)) => (u32::from_ne_bytes(*lo) | u32::from_ne_bytes(*hi)) & 0x8080_8080 == 0,
            _ => b.is_ascii(),
        },
        n @ 8..=16 => (word(0) | word(n - 8)) & HIGH == 0,
        n @ 17..=32 => (word(0) | word(8) | word(n - 16) | word(n - 8)) & HIGH == 0,
        _ => b.is_ascii(),
    }
}

fn skip(node: &Node, cur: &mut Cursor<'_>) -> Result<(), Bad> {
    match node {
        Node::Null => {}
        Node::Boolean => {
            cur.boolean()?;
        }
        Node::Int => {
            cur.int()?;
        }
        Node::Long => {
            cur.long()?;
        }
        Node::Float => {
            cur.take(4)?;
        }
        Node::Double => {
            cur.take(8)?;
        }
        Node::Bytes => {
            cur.bytes()?;
        }
        Node::String => {
            cur.string()?;
        }
        Node::UuidString => {
            uuid(cur)?;
        }
        Node::UuidBytes => {
            if cur.bytes()?.len() != 16 {
                return Err(Bad("a uuid is not 16 bytes"));
            }
        }
        Node::Fixed(n) => {
            cur.take(*n)?;
        }
        Node::Fail => return Err(Bad("the writer schema has a type that never decodes")),
        Node::Enum(n) => {
            symbol(cur, *n)?;
        }
        Node::Array { items, items_take_bytes } => {
            let mut total = 0;
            loop {
                let count = cur.block(&mut total, size_of::<Value>())?;
                if count == 0 {
                    break;
                }
                if *items_take_bytes && count > cur.remaining() {
                    return Err(Bad("an array claims more items than bytes left"));
                }
                for _ in 0..count {
                    skip(items, cur)?;
                }
            }
        }
        Node::Map(values) => {
            let mut total = 0;
            loop {
                let count = cur.block(&mut total, size_of::<(String, Value)>())?;
                if count == 0 {
                    break;
                }
                // Every entry's key length takes a byte.
                if count > cur.remaining() {
                    return Err(Bad("a map claims more entries than bytes left"));
                }
                for _ in 0..count {
                    cur.string()?;
                    skip(values, cur)?;
                }
            }
        }
        Node::Union(branches) => skip(&branches[branch(cur, branches.len())?], cur)?,
        Node::Record(fields) => {
            for f in fields {
                skip(f, cur)?;
            }
        }
    }
    Ok(())
}

fn symbol(cur: &mut Cursor<'_>, symbols: usize) -> Result<u32, Bad> {
    let i = cur.int()?;
    match usize::try_from(i) {
        Ok(u) if u < symbols => Ok(i as u32),
        _ => Err(Bad("an enum index is out of range")),
    }
}

fn branch(cur: &mut Cursor<'_>, branches: usize) -> Result<usize, Bad> {
    match usize::try_from(cur.long()?) {
        Ok(i) if i < branches => Ok(i),
        _ => Err(Bad("a union index is out of range")),
    }
}

/// A uuid string: its text when that is the canonical form (lower-case, hyphenated: what
/// `Uuid::to_string` writes, so the identity needs no re-encoding; recognised without parsing),
/// else parsed from its bytes (a uuid that parses is ASCII, hence UTF-8). Anything else is
/// checked as the generic path does it: UTF-8 first, then the uuid syntax.
fn uuid<'a>(cur: &mut Cursor<'a>) -> Result<UuidValue<'a>, Bad> {
    let start = cur.pos;
    let b = cur.bytes()?;
    if canonical_uuid(b) {
        // SAFETY: canonical uuid text is ASCII (hex digits and hyphens).
        return Ok(UuidValue::Text(unsafe { std::str::from_utf8_unchecked(b) }));
    }
    if let Ok(u) = Uuid::try_parse_ascii(b) {
        return Ok(UuidValue::Value(u));
    }
    cur.pos = start;
    let text = cur.string()?;
    Ok(UuidValue::Value(text.parse().map_err(|_| Bad("a uuid string does not parse"))?))
}

/// Whether `text` is what `Uuid::to_string` writes: 36 bytes, hyphens at 8, 13, 18 and 23, and
/// lower-case hex digits everywhere else. Every such text parses as a uuid, and of the texts
/// that parse, exactly these are canonical (tests `canonical_uuid_text_is_what_to_string_writes`,
/// `canonical_uuid_agrees_with_parse_and_print_byte_by_byte`).
/// Checked eight bytes at a time: the 32 digits gathered into four words, each byte tested for
/// `0-9` and `a-f` with carry-free additions (the bytes are ASCII first, so no byte's sum
/// reaches the next byte).
#[inline]
fn canonical_uuid(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    /// A byte of `w` has its top bit set where that byte is in `lo..hi` (`w` ASCII).
    #[inline(always)]
    fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
        w.wrapping_add(u64::from(0x80 - lo) * ONES) & !w.wrapping_add(u64::from(0x80 - hi) * ONES)
    }
    #[inline(always)]
    fn lower_hex(w: u64) -> bool {
        w & HIGH == 0 && (in_range(w, b'0', b'9' + 1) | in_range(w, b'a', b'f' + 1)) & HIGH == HIGH
    }
    let Ok(t) = <&[u8; 36]>::try_from(text) else { return false };
    let word =
        |a: usize| u64::from_le_bytes([t[a], t[a + 1], t[a + 2], t[a + 3], t[a + 4], t[a + 5], t[a + 6], t[a + 7]]);
    let halves = |a: usize, b: usize| {
        u64::from_le_bytes([t[a], t[a + 1], t[a + 2], t[a + 3], t[b], t[b + 1], t[b + 2], t[b + 3]])
    };
    t[8] == b'-'
        && t[13] == b'-'
        && t[18] == b'-'
        && t[23] == b'-'
        && lower_hex(word(0))
        && lower_hex(halves(9, 14))
        && lower_hex(halves(19, 24))
        && lower_hex(word(28))
}

/// Reads a field; `Ok(None)` when its value does not resolve to the reader type.
fn read_field<'a>(read: &FieldRead, cur: &mut Cursor<'a>) -> Result<Option<Resolved<'a>>, Bad> {
    let scalar = match read {
        FieldRead::Leaf(scalar) => scalar,
        FieldRead::Mismatch(node) => return skip(node, cur).map(|_| None),
        FieldRead::Union(branches) => match &branches[branch(cur, branches.len())?] {
            Branch::Leaf(scalar) => scalar,
            Branch::Mismatch(node) => return skip(node, cur).map(|_| None),
        },
    };
    scalar.read(cur)
}

/// A writer scalar and its conversion to the reader's type. The pairs event schemas mostly hold
/// (the writer's type is the reader's) are read and resolved in one step; every other pair goes
/// through [`read_leaf`] and [`resolve`], which they equal.
#[derive(Debug)]
enum Scalar {
    Null,
    Bool,
    Int,
    Long,
    Double,
    Text,
    /// A `timestamp-millis` into a `timestamp-millis`.
    Timestamp,
    Uuid,
    /// An enum of `symbols` symbols; writer symbol index → reader symbol index.
    Enum {
        symbols: usize,
        map: Vec<Option<u32>>,
    },
    General(Leaf, Conv),
}

impl Scalar {
    fn new(leaf: Leaf, conv: Conv) -> Scalar {
        match (leaf, conv) {
            (Leaf::Null, Conv::Null) => Scalar::Null,
            (Leaf::Boolean, Conv::Bool) => Scalar::Bool,
            (Leaf::Int, Conv::Int) => Scalar::Int,
            (Leaf::Long, Conv::Long) => Scalar::Long,
            (Leaf::Double, Conv::Double) => Scalar::Double,
            (Leaf::String, Conv::String) => Scalar::Text,
            (Leaf::TimestampMillis, Conv::Timestamp) => Scalar::Timestamp,
            (Leaf::Uuid, Conv::Uuid) => Scalar::Uuid,
            (Leaf::Enum(symbols), Conv::Enum(map)) => Scalar::Enum { symbols, map },
            (leaf, conv) => Scalar::General(leaf, conv),
        }
    }

    /// Reads the value; `Ok(None)` when it does not resolve to the reader type.
    #[inline]
    fn read<'a>(&self, cur: &mut Cursor<'a>) -> Result<Option<Resolved<'a>>, Bad> {
        Ok(Some(match self {
            Scalar::Null => Resolved::Null,
            Scalar::Bool => Resolved::Bool(cur.boolean()?),
            Scalar::Int => Resolved::Int(cur.int()?),
            Scalar::Long | Scalar::Timestamp => Resolved::Long(cur.long()?),
            Scalar::Double => Resolved::Double(cur.double()?),
            Scalar::Text => Resolved::Text(cur.string()?),
            Scalar::Uuid => Resolved::Uuid(uuid(cur)?),
            Scalar::Enum { symbols, map } => match map.get(symbol(cur, *symbols)? as usize) {
                Some(&Some(reader)) => Resolved::Symbol(reader),
                _ => return Ok(None),
            },
            Scalar::General(leaf, conv) => return Ok(resolve(conv, read_leaf(*leaf, cur)?)),
        }))
    }
}

fn read_leaf<'a>(leaf: Leaf, cur: &mut Cursor<'a>) -> Result<Written<'a>, Bad> {
    Ok(match leaf {
        Leaf::Null => Written::Null,
        Leaf::Boolean => Written::Bool(cur.boolean()?),
        Leaf::Int => Written::Int(cur.int()?),
        Leaf::Long => Written::Long(cur.long()?),
        Leaf::Float => Written::Float(cur.float()?),
        Leaf::Double => Written::Double(cur.double()?),
        Leaf::Bytes => Written::Bytes(cur.bytes()?),
        Leaf::String => Written::Str(cur.string()?),
        Leaf::Enum(n) => Written::Symbol(symbol(cur, n)?),
        Leaf::TimestampMillis => Written::Timestamp(cur.long()?),
        Leaf::Uuid => Written::Uuid(uuid(cur)?),
    })
}

/// apache-avro's `Value::resolve` for the pairs a plan holds; `None` is a resolution error.
fn resolve<'a>(conv: &Conv, w: Written<'a>) -> Option<Resolved<'a>> {
    use Written as W;
    Some(match (conv, w) {
        (Conv::Null, W::Null) => Resolved::Null,
        (Conv::Bool, W::Bool(b)) => Resolved::Bool(b),
        (Conv::Int, W::Int(v)) => Resolved::Int(v),
        (Conv::LongToInt, W::Long(v)) => Resolved::Int(i32::try_from(v).ok()?),
        (Conv::Long, W::Int(v)) => Resolved::Long(i64::from(v)),
        (Conv::Long, W::Long(v)) => Resolved::Long(v),
        (Conv::Float, W::Int(v)) => Resolved::Float(v as f32),
        (Conv::Float, W::Long(v)) => Resolved::Float(v as f32),
        (Conv::Float, W::Float(v)) => Resolved::Float(v),
        (Conv::Float, W::Double(v)) => Resolved::Float(v as f32),
        (Conv::Double, W::Int(v)) => Resolved::Double(f64::from(v)),
        (Conv::Double, W::Long(v)) => Resolved::Double(v as f64),
        (Conv::Double, W::Float(v)) => Resolved::Double(f64::from(v)),
        (Conv::Double, W::Double(v)) => Resolved::Double(v),
        (Conv::SpecialFloat { double }, W::Str(s)) => {
            let f = match s {
                "NaN" => f32::NAN,
                "INF" | "Infinity" => f32::INFINITY,
                "-INF" | "-Infinity" => f32::NEG_INFINITY,
                _ => return None,
            };
            if *double {
                Resolved::Double(f64::from(f))
            } else {
                Resolved::Float(f)
            }
        }
        (Conv::String, W::Str(s)) => Resolved::Text(s),
        (Conv::String, W::Bytes(b)) => Resolved::Text(std::str::from_utf8(b).ok()?),
        (Conv::Bytes, W::Str(_) | W::Bytes(_)) => Resolved::Other,
        (Conv::Enum(map), W::Symbol(i)) => Resolved::Symbol((*map.get(i as usize)?)?),
        (Conv::StringToEnum { symbols, default }, W::Str(s)) => {
            Resolved::Symbol(match symbols.iter().position(|r| r == s) {
                Some(i) => u32::try_from(i).ok()?,
                None => (*default)?,
            })
        }
        (Conv::Timestamp, W::Int(v)) => Resolved::Long(i64::from(v)),
        (Conv::Timestamp, W::Long(v) | W::Timestamp(v)) => Resolved::Long(v),
        (Conv::Uuid, W::Uuid(u)) => Resolved::Uuid(u),
        (Conv::Uuid, W::Str(s)) if canonical_uuid(s.as_bytes()) => Resolved::Uuid(UuidValue::Text(s)),
        (Conv::Uuid, W::Str(s)) => Resolved::Uuid(UuidValue::Value(s.parse().ok()?)),
        _ => return None,
    })
}

// ---------------------------------------------------------------- fused reads

/// A reader field of the shape event schemas mostly have, read and written in one step: the
/// writer's type is the reader's (alone, or in a two-branch union with `null`, either order),
/// and one feature or one identity field uses it (a timestamp: an `hour_of_day` feature, the
/// event time, or both). The value goes from the body straight into its columns, without a
/// [`Resolved`] handed through [`Row::deliver`]; a null still goes through `deliver`, as every
/// value of an [`Op::Read`] does. Everything else stays an `Op::Read`.
///
/// Equal to the `Op::Read` it replaces, body for body: the same bytes are read by the same
/// `Cursor` calls (so the same `undecodable` details), an enum symbol the reader lacks is the
/// same mismatch, and the columns are written by the same [`Row`] methods. The differential tests
/// (`fast_tests.rs`) compare every kind against the generic path.
#[derive(Debug)]
struct Fused {
    kind: FusedKind,
    /// The `null` branch of a `["null", T]` / `[T, "null"]` writer union; `None`: not a union.
    null_branch: Option<usize>,
    /// The reader field (a null is delivered to its users).
    field: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Int,
    Long,
    Double,
}

#[derive(Debug)]
enum FusedKind {
    /// `numeric` or `log1p` of an int, long or double.
    Number { number: Number, log1p: bool, step: usize },
    /// `boolean` of a boolean.
    Boolean { step: usize },
    /// `one_hot` of a string.
    OneHotText { step: usize },
    /// `one_hot` of an enum of `symbols` symbols: writer symbol → its column (`Some(None)`: no
    /// column), or `None` where the reader lacks the symbol and has no default (a mismatch).
    OneHotEnum { symbols: usize, columns: Vec<Option<Option<usize>>>, step: usize },
    /// A long or timestamp-millis: an `hour_of_day` feature and/or the event time.
    Time { step: Option<usize>, event_time: bool },
    /// The event id, from a uuid.
    EventIdUuid,
    /// The event id or the transaction id, from a string.
    IdText(Ident),
    /// A field nobody uses, of the reader's own type: decoded and validated, not kept.
    Skip(Skipped),
}

/// The value of an unused field, checked as [`skip`] checks the same [`Node`].
#[derive(Debug, Clone, Copy)]
enum Skipped {
    Boolean,
    Int,
    Long,
    Double,
    Text,
    Uuid,
}

impl Fused {
    /// The op that reads reader field `field` with `read` in one step, if there is one: a
    /// [`Fused`] read, or, for a field nobody uses whose writer type is the reader's (so every
    /// value resolves), a skip that decodes and validates the same bytes.
    fn plan(read: &FieldRead, field: usize, layout: &Layout) -> Option<Op> {
        let (scalar, null_branch) = match read {
            FieldRead::Leaf(scalar) => (scalar, None),
            FieldRead::Union(branches) => match branches.as_slice() {
                [Branch::Leaf(Scalar::Null), Branch::Leaf(scalar)] => (scalar, Some(0)),
                [Branch::Leaf(scalar), Branch::Leaf(Scalar::Null)] => (scalar, Some(1)),
                _ => return None,
            },
            FieldRead::Mismatch(_) => return None,
        };
        let uses = &layout.reader[field].uses;
        if uses.steps.is_empty() && uses.ident.is_none() {
            // Read and validated as `skip` would (a null branch delivers a null nobody uses).
            let skipped = match scalar {
                Scalar::Null => return Some(Op::Skip(Node::Null)),
                Scalar::Bool => Skipped::Boolean,
                Scalar::Int => Skipped::Int,
                Scalar::Long | Scalar::Timestamp => Skipped::Long,
                Scalar::Double => Skipped::Double,
                Scalar::Text => Skipped::Text,
                Scalar::Uuid => Skipped::Uuid,
                Scalar::Enum { .. } | Scalar::General(..) => return None,
            };
            return Some(Op::Fused(Fused { kind: FusedKind::Skip(skipped), null_branch, field }));
        }
        let step = match uses.steps.as_slice() {
            [] => None,
            &[s] => Some((s, &layout.steps[s])),
            _ => return None,
        };
        let kind = match (step, uses.ident, scalar) {
            (Some((s, plan)), None, Scalar::Int | Scalar::Long | Scalar::Double)
                if matches!(plan.transform, Transform::Numeric | Transform::Log1p) =>
            {
                let number = match scalar {
                    Scalar::Int => Number::Int,
                    Scalar::Long => Number::Long,
                    _ => Number::Double,
                };
                FusedKind::Number { number, log1p: plan.transform == Transform::Log1p, step: s }
            }
            (Some((s, plan)), None, Scalar::Bool) if plan.transform == Transform::Boolean => {
                FusedKind::Boolean { step: s }
            }
            (Some((s, plan)), None, Scalar::Text) if plan.transform == Transform::OneHot => {
                FusedKind::OneHotText { step: s }
            }
            (Some((s, plan)), None, Scalar::Enum { symbols, map }) if plan.transform == Transform::OneHot => {
                let columns = map.iter().map(|reader| reader.map(|r| plan.symbol_column(r))).collect();
                FusedKind::OneHotEnum { symbols: *symbols, columns, step: s }
            }
            (step, ident, Scalar::Long | Scalar::Timestamp)
                if step.is_none_or(|(_, plan)| plan.transform == Transform::HourOfDay)
                    && matches!(ident, None | Some(Ident::EventTime))
                    && (step.is_some() || ident.is_some()) =>
            {
                FusedKind::Time { step: step.map(|(s, _)| s), event_time: ident.is_some() }
            }
            (None, Some(Ident::EventId), Scalar::Uuid) => FusedKind::EventIdUuid,
            (None, Some(ident @ (Ident::EventId | Ident::TransactionId)), Scalar::Text) => FusedKind::IdText(ident),
            _ => return None,
        };
        Some(Op::Fused(Fused { kind, null_branch, field }))
    }

    /// Reads the field's value from `cur` into `row`.
    #[inline]
    fn read<'a>(&'a self, layout: &'a Layout, cur: &mut Cursor<'a>, row: &mut Row<'_, 'a>) -> Result<(), Bad> {
        if let Some(null) = self.null_branch {
            if branch(cur, 2)? == null {
                row.deliver(layout, self.field, Resolved::Null);
                return Ok(());
            }
        }
        let steps = &layout.steps;
        match &self.kind {
            FusedKind::Number { number, log1p, step } => {
                let v = match number {
                    Number::Int => f64::from(cur.int()?),
                    Number::Long => cur.long()? as f64,
                    Number::Double => cur.double()?,
                };
                row.column(&steps[*step], if *log1p { features::log1p(v) } else { v } as f32, false);
            }
            FusedKind::Boolean { step } => row.column(&steps[*step], f32::from(u8::from(cur.boolean()?)), false),
            FusedKind::OneHotText { step } => {
                let step = &steps[*step];
                let text = cur.string()?;
                row.one_hot(step, step.text_column(text), false);
            }
            FusedKind::OneHotEnum { symbols, columns, step } => match columns.get(symbol(cur, *symbols)? as usize) {
                Some(&Some(column)) => row.one_hot(&steps[*step], column, false),
                _ => row.mismatch = true,
            },
            FusedKind::Time { step, event_time } => {
                let t = cur.long()?;
                if let Some(step) = step {
                    row.column(&steps[*step], hour_of_day(t), false);
                }
                if *event_time {
                    row.ids.event_time = Some(t);
                }
            }
            FusedKind::EventIdUuid => row.ids.event_id = Some(uuid_id(uuid(cur)?)),
            FusedKind::IdText(ident) => {
                let text = cur.string()?;
                match ident {
                    Ident::TransactionId => row.ids.transaction_id = Some(text),
                    _ => row.ids.event_id = Some(IdStr::Text(text)),
                }
            }
            FusedKind::Skip(skipped) => match skipped {
                Skipped::Boolean => {
                    cur.boolean()?;
                }
                Skipped::Int => {
                    cur.int()?;
                }
                Skipped::Long => {
                    cur.long()?;
                }
                Skipped::Double => {
                    cur.take(8)?;
                }
                Skipped::Text => {
                    cur.string()?;
                }
                Skipped::Uuid => {
                    uuid(cur)?;
                }
            },
        }
        Ok(())
    }
}

/// The hour of the day (UTC) of a timestamp in milliseconds, as `hour_of_day` writes it.
#[inline]
fn hour_of_day(t: i64) -> f32 {
    t.div_euclid(MS_PER_HOUR).rem_euclid(24) as f32
}

/// The event id of a uuid: its own text when it is already canonical, else the uuid (stored as
/// what `Uuid::to_string` writes).
#[inline]
fn uuid_id(u: UuidValue<'_>) -> IdStr<'_> {
    match u {
        UuidValue::Text(text) => IdStr::Text(text),
        UuidValue::Value(u) => IdStr::Uuid(u),
    }
}

// ---------------------------------------------------------------- writing the row

/// The identity fields read so far, borrowed from the body or the plan.
#[derive(Default)]
struct Ids<'a> {
    event_id: Option<IdStr<'a>>,
    transaction_id: Option<&'a str>,
    event_time: Option<i64>,
}

struct Row<'r, 'a> {
    out: &'r mut [f32],
    missing: &'r mut [bool],
    ids: Ids<'a>,
    mismatch: bool,
    /// A column written this decode may fail the final checks (a non-finite value, or a null
    /// for a feature that rejects nulls); only then are the columns scanned.
    suspect: bool,
}

impl<'a> Row<'_, 'a> {
    /// Hands reader field `field`'s value to the features and identity field that use it.
    #[inline(always)]
    fn deliver(&mut self, layout: &Layout, field: usize, value: Resolved<'a>) {
        let uses = &layout.reader[field].uses;
        for &s in &uses.steps {
            self.write(&layout.steps[s], value);
        }
        match uses.ident {
            None => {}
            Some(Ident::EventId) => {
                self.ids.event_id = match value {
                    Resolved::Uuid(u) => Some(uuid_id(u)),
                    Resolved::Text(s) => Some(IdStr::Text(s)),
                    _ => None,
                }
            }
            Some(Ident::TransactionId) => {
                self.ids.transaction_id = match value {
                    Resolved::Text(s) => Some(s),
                    _ => None,
                }
            }
            Some(Ident::EventTime) => {
                self.ids.event_time = match value {
                    Resolved::Long(t) => Some(t),
                    _ => None,
                }
            }
        }
    }

    /// Writes one feature's columns as `FeatureExtractor::extract` does; nulls are marked in
    /// `missing` (also for `reject` features: the final pass turns those into rejections).
    #[inline]
    fn write(&mut self, step: &StepPlan, value: Resolved<'_>) {
        let is_null = matches!(value, Resolved::Null);
        if step.transform == Transform::OneHot {
            let column = match value {
                Resolved::Text(s) => step.text_column(s),
                Resolved::Symbol(i) => step.symbol_column(i),
                _ => None,
            };
            self.one_hot(step, column, is_null);
        } else {
            let x = match (step.transform, value) {
                (_, Resolved::Null) => step.default,
                (Transform::Numeric, v) => number(v) as f32,
                (Transform::Log1p, v) => features::log1p(number(v)) as f32,
                (Transform::Boolean, Resolved::Bool(b)) => f32::from(u8::from(b)),
                (Transform::HourOfDay, Resolved::Long(t)) => hour_of_day(t),
                _ => f32::NAN,
            };
            self.column(step, x, is_null);
        }
    }

    /// A one-hot feature's columns: 1 in `column` (none: all 0).
    #[inline(always)]
    fn one_hot(&mut self, step: &StepPlan, column: Option<usize>, is_null: bool) {
        let o = step.offset;
        let cols = &mut self.out[o..o + step.width];
        fill_short(cols, 0.0);
        fill_short(&mut self.missing[o..o + step.width], is_null);
        self.suspect |= is_null & step.reject;
        if let Some(j) = column {
            cols[j] = 1.0;
        }
        self.flag(step, is_null);
    }

    /// The value column of every other transform (they have one).
    #[inline(always)]
    fn column(&mut self, step: &StepPlan, x: f32, is_null: bool) {
        self.out[step.offset] = x;
        self.missing[step.offset] = is_null;
        self.suspect |= !x.is_finite() | (is_null & step.reject);
        self.flag(step, is_null);
    }

    /// The feature's missing flag column, if it has one (it is never missing itself).
    #[inline(always)]
    fn flag(&mut self, step: &StepPlan, is_null: bool) {
        if step.flag {
            let c = step.offset + step.width;
            self.out[c] = f32::from(u8::from(is_null));
            self.missing[c] = false;
        }
    }
}

/// `s.fill(v)` without a call to `memset` for the few columns of a one-hot feature: up to 8
/// elements are written as two fixed-size, possibly overlapping stores (a `memset` call per
/// feature and array cost more than the stores themselves).
#[inline(always)]
fn fill_short<T: Copy>(s: &mut [T], v: T) {
    #[inline(always)]
    fn put<T: Copy, const N: usize>(s: &mut [T], at: usize, v: T) {
        s[at..at + N].copy_from_slice(&[v; N]);
    }
    match s.len() {
        0 => {}
        1 => s[0] = v,
        n @ 2..=3 => {
            put::<T, 2>(s, 0, v);
            put::<T, 2>(s, n - 2, v);
        }
        n @ 4..=8 => {
            put::<T, 4>(s, 0, v);
            put::<T, 4>(s, n - 4, v);
        }
        _ => s.fill(v),
    }
}

/// The numeric value, as the extractor widens it (types outside the plan's reach are NaN, so
/// they fail as `invalid_feature`; the layout never lets them reach a numeric feature).
fn number(value: Resolved<'_>) -> f64 {
    match value {
        Resolved::Int(v) => f64::from(v),
        Resolved::Long(v) => v as f64,
        Resolved::Float(v) => f64::from(v),
        Resolved::Double(v) => v,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::{Categories, Cursor, Schema, Value};

    /// The short-string ASCII check agrees with `is_ascii` for every length up to 40 with a
    /// non-ASCII byte at each position (and none), at two offsets into a larger buffer.
    #[test]
    fn short_ascii_check_agrees_with_std() {
        let mut buf = [b'a'; 48];
        for start in [0, 3] {
            for n in 0..=40 {
                assert!(super::is_ascii(&buf[start..start + n]), "length {n}");
                for at in 0..n {
                    for high in [0x80u8, 0xC3, 0xFF] {
                        buf[start + at] = high;
                        let s = &buf[start..start + n];
                        assert_eq!(super::is_ascii(s), s.is_ascii(), "length {n}, byte {high:#x} at {at}");
                        assert!(!super::is_ascii(s), "length {n}, byte {high:#x} at {at}");
                        buf[start + at] = b'a';
                    }
                }
            }
        }
    }

    /// The varint reader gives what apache-avro encodes, for one-byte and longer values, both
    /// signs and the extremes; and refuses a truncated or over-long varint.
    #[test]
    fn varints_read_as_apache_avro_writes_them() {
        let mut values: Vec<i64> = (-200..=200).collect();
        for shift in 0..63 {
            let v = 1i64 << shift;
            values.extend([v, v - 1, v + 1, -v, -v - 1, -v + 1]);
        }
        values.extend([i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1]);
        for v in values {
            let bytes = GenericDatumWriter::builder(&Schema::Long)
                .build()
                .and_then(|w| w.write_value_to_vec(Value::Long(v)))
                .expect("encodes");
            let mut cur = Cursor { buf: &bytes, pos: 0, cap: usize::MAX };
            assert_eq!(cur.long().ok(), Some(v), "{v}: {bytes:?}");
            assert_eq!(cur.pos, bytes.len(), "{v}: every byte read");
            let mut cut = Cursor { buf: &bytes[..bytes.len() - 1], pos: 0, cap: usize::MAX };
            assert!(cut.long().is_err(), "{v}: a truncated varint is refused");
        }
        let eleven = [0x80u8; 11];
        assert!(Cursor { buf: &eleven, pos: 0, cap: usize::MAX }.long().is_err(), "over 10 bytes");
    }

    /// Packed lookups find what comparing the strings finds (the last equal category), for
    /// short and long names, duplicates, the empty string, NUL bytes and multi-byte UTF-8.
    #[test]
    fn category_lookup_equals_comparing_the_strings() {
        let names: Vec<String> = ["EUR", "USD", "EUR", "", "a", "a\0", "seven77", "eight888", "ECOMMERCE", "é", "日本"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let categories = Categories::new(&names);
        let probes = [
            "EUR",
            "USD",
            "GBP",
            "",
            "a",
            "a\0",
            "a\0\0",
            "\0",
            "seven77",
            "seven7",
            "eight888",
            "eight88",
            "ECOMMERCE",
            "ECOMMERC",
            "é",
            "e",
            "日本",
            "日",
            "EU",
            "EURO",
        ];
        for probe in probes {
            let expected = names.iter().rposition(|c| c == probe);
            assert_eq!(categories.position(probe), expected, "{probe:?}");
        }
        assert_eq!(categories.position("EUR"), Some(2), "a repeated category's last column wins");
    }

    /// For every text that parses as a uuid, "canonical" means exactly "what `Uuid::to_string`
    /// writes" (so the identity can keep the text instead of re-encoding it).
    #[test]
    fn canonical_uuid_text_is_what_to_string_writes() {
        use super::{canonical_uuid, Uuid};
        for i in 0..200u128 {
            let u = Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834) ^ i);
            let hyphenated = u.to_string();
            let variants = [
                hyphenated.clone(),
                hyphenated.to_uppercase(),
                hyphenated.replacen(|c: char| c.is_ascii_lowercase(), "A", 1),
                u.simple().to_string(),
                u.braced().to_string(),
                u.urn().to_string(),
            ];
            for text in variants {
                let parsed: Uuid = text.parse().expect("a uuid form");
                assert_eq!(canonical_uuid(text.as_bytes()), parsed.to_string() == text, "{text}");
            }
        }
    }

    /// The word-wise check agrees with its definition (the text parses and `Uuid::to_string`
    /// writes it back) for every single-byte change of canonical texts, at every position and
    /// to every byte value, and for other lengths.
    #[test]
    fn canonical_uuid_agrees_with_parse_and_print_byte_by_byte() {
        use super::{canonical_uuid, Uuid};
        let reference = |b: &[u8]| Uuid::try_parse_ascii(b).is_ok_and(|u| u.hyphenated().to_string().as_bytes() == b);
        for seed in
            [0u128, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 0xa0f9_09fa_af00_9f9a_0a9f_f0a9_9a0f_a9f0]
        {
            let text = Uuid::from_u128(seed).hyphenated().to_string();
            assert!(canonical_uuid(text.as_bytes()), "{text}");
            for i in 0..36 {
                for byte in 0..=255u8 {
                    let mut b = text.clone().into_bytes();
                    b[i] = byte;
                    assert_eq!(canonical_uuid(&b), reference(&b), "byte {i} = {byte:#04x} in {text}");
                }
            }
            let b = text.as_bytes();
            for cut in [&b[..35], &b[1..], &b[..0], &b[..32]] {
                assert!(!canonical_uuid(cut));
            }
            let mut longer = b.to_vec();
            longer.push(b'0');
            assert!(!canonical_uuid(&longer));
            assert!(!canonical_uuid(Uuid::from_u128(seed).simple().to_string().as_bytes()));
        }
    }

    /// `fill_short` writes exactly what `fill` writes, for every length, and nothing around it.
    #[test]
    fn fill_short_fills_exactly_the_slice() {
        for n in 0..=20 {
            for (at, len) in [(0, n), (3, n)] {
                let mut a = vec![7.5f32; len + 8];
                let mut b = a.clone();
                super::fill_short(&mut a[at..at + len], 0.0);
                b[at..at + len].fill(0.0);
                assert_eq!(a, b, "len {len} at {at}");
                let mut m = vec![false; len + 8];
                super::fill_short(&mut m[at..at + len], true);
                assert_eq!(m.iter().filter(|&&x| x).count(), len);
                assert!(m[at..at + len].iter().all(|&x| x));
            }
        }
    }

    /// With many categories (so the table's probes collide and wrap), every lookup equals the
    /// scan for the last equal name: 2 000 random short names over a 3-letter alphabet (many
    /// repeated), probed with every name and with names of each length that are not categories.
    #[test]
    fn category_table_lookup_equals_the_scan_with_many_names() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(11);
        let mut name = |len: usize| (0..len).map(|_| ["a", "b", "\0"][rng.random_range(0..3)]).collect::<String>();
        for count in [1, 2, 7, 8, 9, 100, 2_000] {
            let names: Vec<String> = (0..count).map(|i| name(i % 9)).collect();
            let categories = Categories::new(&names);
            assert!(categories.slots.len() >= 2 * count && categories.slots.len().is_power_of_two());
            let probes: Vec<String> = names.iter().cloned().chain((0..200).map(|i| name(i % 10))).collect();
            for probe in &probes {
                let expected = names.iter().rposition(|c| c == probe);
                assert_eq!(categories.position(probe), expected, "{probe:?} among {count}");
            }
        }
    }

    #[test]
    fn packed_words_are_equal_only_for_equal_strings() {
        let short = [
            "",
            "\0",
            "\0\0",
            "a",
            "a\0",
            "\0a",
            "ab",
            "ba",
            "aba",
            "abb",
            "abc",
            "abcd",
            "abce",
            "bbcd",
            "abcde",
            "abcdf",
            "abcdef",
            "abcdeg",
            "abcdefg",
            "abcdefh",
            "bbcdefg",
            "abcdef\0",
            "\u{7f}",
            "\u{7f}\u{7f}\u{7f}",
        ];
        for x in short {
            for y in short {
                let (px, py) = (Categories::pack(x.as_bytes()), Categories::pack(y.as_bytes()));
                assert_eq!(px == py, x == y, "{x:?} vs {y:?}");
                // Byte i at bits 8i, the length in the top byte.
                let bytes = x.bytes().enumerate().fold(0u64, |w, (i, c)| w | u64::from(c) << (8 * i));
                assert_eq!(px, Some(bytes | (x.len() as u64) << 56), "{x:?}");
                assert_ne!(px, Some(Categories::NEVER));
            }
        }
        assert_eq!(Categories::pack(b"12345678"), None, "8 bytes do not fit beside the length");
    }
}
