//! Avro binary encoding of outputs.
//!
//! Scored records are written by hand (one per input event, so this is a hot path): primitives
//! straight into a reused buffer, no `Value` tree, no allocation. Shadow results (one per input
//! while a challenger runs in shadow) are written the same way. Low-rate records (drift reports)
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

/// Appends the Confluent header and the Avro body of `rec` (schema `ScoredTransaction`) and
/// returns the record's bytes (the part appended). The sink sends that slice: taking it from
/// the buffer after the call instead read back, in one 16-byte load, the length just stored (a
/// store-forwarding stall per record, `perf annotate`).
pub fn encode_scored<'o>(out: &'o mut Vec<u8>, schema_id: u32, rec: &ScoredRecord) -> &'o [u8] {
    let start = out.len();
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
    &out[start..]
}

/// One shadow result, in the field order of `schemas/shadow_score.avsc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowRecord<'a> {
    pub event_id: &'a str,
    pub transaction_id: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub model_name: &'a str,
    pub champion_version: &'a str,
    pub champion_score: f32,
    pub champion_label: bool,
    pub challenger_name: &'a str,
    pub challenger_version: &'a str,
    pub challenger_score: f32,
    pub challenger_label: bool,
    pub challenger_threshold: f32,
    pub scored_at_ms: i64,
}

/// Appends the Confluent header and the Avro body of `rec` (schema `ShadowScore`) and returns
/// the record's bytes: written by hand like scored records, since shadow mode produces one per
/// input.
pub fn encode_shadow<'o>(out: &'o mut Vec<u8>, schema_id: u32, rec: &ShadowRecord) -> &'o [u8] {
    let start = out.len();
    write_frame_header(out, schema_id);
    put_str(out, rec.event_id);
    put_str(out, rec.transaction_id);
    put_str(out, rec.source_topic);
    put_int(out, rec.source_partition);
    put_long(out, rec.source_offset);
    put_str(out, rec.model_name);
    put_str(out, rec.champion_version);
    put_f32(out, rec.champion_score);
    put_bool(out, rec.champion_label);
    put_str(out, rec.challenger_name);
    put_str(out, rec.challenger_version);
    put_f32(out, rec.challenger_score);
    put_bool(out, rec.challenger_label);
    put_f32(out, rec.challenger_threshold);
    put_long(out, rec.scored_at_ms);
    &out[start..]
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

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;

    #[test]
    fn encode_shadow_round_trips_through_apache_avro() {
        let rec = ShadowRecord {
            event_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            transaction_id: "tx-9",
            source_topic: "payments",
            source_partition: 2,
            source_offset: 77,
            model_name: "fraud_mlp",
            champion_version: "1",
            champion_score: 0.25,
            champion_label: true,
            challenger_name: "fraud_mlp",
            challenger_version: "2",
            challenger_score: 0.125,
            challenger_label: false,
            challenger_threshold: 0.5,
            scored_at_ms: 1_700_000_000_123,
        };
        let mut out = b"x".to_vec();
        let record = encode_shadow(&mut out, 4, &rec).to_vec();
        assert_eq!(record, &out[1..], "returns what it appended");
        assert_eq!(out[..2], [b'x', 0]);
        assert_eq!(u32::from_be_bytes([out[2], out[3], out[4], out[5]]), 4);
        let schema = super::super::parse_schema(super::super::SHADOW_SCORE_SCHEMA).unwrap();
        let mut body = &out[6..];
        let v = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut body).unwrap();
        assert!(body.is_empty(), "encoder wrote {} bytes too many", body.len());
        let Value::Record(fields) = v else { panic!("not a record") };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("event_id"), Value::Uuid(rec.event_id.parse().unwrap()));
        assert_eq!(get("source_offset"), Value::Long(77));
        assert_eq!(get("champion_version"), Value::String("1".into()));
        assert_eq!(get("champion_score"), Value::Float(0.25));
        assert_eq!(get("challenger_version"), Value::String("2".into()));
        assert_eq!(get("challenger_score"), Value::Float(0.125));
        assert_eq!(get("challenger_label"), Value::Boolean(false));
        assert_eq!(get("challenger_threshold"), Value::Float(0.5));
        assert_eq!(get("scored_at"), Value::TimestampMillis(1_700_000_000_123));
        assert_eq!(fields.len(), 15);
    }

    #[test]
    fn shadow_subject_and_local_id() {
        assert_eq!(super::super::shadow_subject("mon"), "mon-io.streamscore.monitoring.ShadowScore");
        assert_eq!(super::super::local_shadow_schema_id(2, 3), 4);
        assert_eq!(super::super::local_shadow_schema_id(9, 3), 10);
    }
}
