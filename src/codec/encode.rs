//! Avro binary encoding of outputs.
//!
//! Scored records are written by hand (one per input event, so this is a hot path): primitives
//! straight into a reused buffer, no `Value` tree, no allocation. Low-rate records (drift reports)
//! go through apache-avro.

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use super::{write_frame_header, CodecError};

/// One scored event, in the field order of `schemas/scored_transaction.avsc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredRecord<'a> {
    pub event_id: &'a str,
    pub transaction_id: &'a str,
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub score: f32,
    pub label: bool,
    pub threshold: f32,
    pub cache_hit: bool,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event_time_ms: i64,
    pub scored_at_ms: i64,
}

/// Appends the Confluent header and the Avro body of `rec` (schema `ScoredTransaction`).
pub fn encode_scored(out: &mut Vec<u8>, schema_id: u32, rec: &ScoredRecord) {
    write_frame_header(out, schema_id);
    put_str(out, rec.event_id);
    put_str(out, rec.transaction_id);
    put_str(out, rec.model_name);
    put_str(out, rec.model_version);
    put_f32(out, rec.score);
    put_bool(out, rec.label);
    put_f32(out, rec.threshold);
    put_bool(out, rec.cache_hit);
    put_str(out, rec.source_topic);
    put_int(out, rec.source_partition);
    put_long(out, rec.source_offset);
    put_long(out, rec.event_time_ms);
    put_long(out, rec.scored_at_ms);
}

/// Appends the Confluent header and `value` encoded with `schema` (validated first).
/// On error `out` is left as it was.
pub fn encode_value(out: &mut Vec<u8>, schema_id: u32, schema: &Schema, value: Value) -> Result<(), CodecError> {
    let start = out.len();
    write_frame_header(out, schema_id);
    let result = GenericDatumWriter::builder(schema).build().and_then(|w| w.write_value(out, value));
    if let Err(source) = result {
        out.truncate(start);
        return Err(CodecError::Encode { what: schema_name(schema), source });
    }
    Ok(())
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

/// Avro `long`: zigzag, then base-128 varint, least significant group first.
pub fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro `int` (same encoding as `long`).
pub fn put_int(out: &mut Vec<u8>, n: i32) {
    put_long(out, i64::from(n));
}

/// Avro `string`/`bytes`: length as a long, then the bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// Avro `float`: 4 bytes little-endian.
pub fn put_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Avro `double`: 8 bytes little-endian.
pub fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Avro `boolean`: one byte.
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// Avro union branch index (a long).
pub fn put_union_index(out: &mut Vec<u8>, index: u32) {
    put_long(out, i64::from(index));
}
