//! Tests of the store, the decoder and the encoders together (the parts need each other).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use proptest::prelude::*;

use super::*;
use crate::outcome::DeadLetterReason;

const EVENT_UUID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

fn reader() -> Schema {
    parse_schema(TRANSACTION_SCHEMA).unwrap()
}

/// Fields of a Transaction in reader order, all set.
fn txn_fields() -> Vec<(String, Value)> {
    vec![
        ("event_id".into(), Value::Uuid(EVENT_UUID.parse().unwrap())),
        ("transaction_id".into(), Value::String("tx-0123456789abcdef".into())),
        ("account_id".into(), Value::String("acc-1".into())),
        ("card_id".into(), Value::Union(1, Box::new(Value::String("card-7".into())))),
        ("merchant_id".into(), Value::String("m-1".into())),
        ("amount".into(), Value::Double(12.34)),
        ("currency".into(), Value::String("EUR".into())),
        ("merchant_category".into(), Value::String("5411".into())),
        ("channel".into(), Value::Enum(3, "ATM".into())),
        ("country".into(), Value::String("DE".into())),
        ("event_time".into(), Value::TimestampMillis(1_700_000_000_000)),
        ("account_age_days".into(), Value::Union(1, Box::new(Value::Int(400)))),
        ("distance_from_home_km".into(), Value::Union(0, Box::new(Value::Null))),
        ("txn_count_1h".into(), Value::Union(1, Box::new(Value::Int(2)))),
        ("card_present".into(), Value::Union(1, Box::new(Value::Boolean(true)))),
        ("new_device".into(), Value::Union(1, Box::new(Value::Boolean(false)))),
    ]
}

fn body(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(value).unwrap()
}

fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame_header(&mut out, id);
    out.extend_from_slice(body);
    out
}

/// Writes schema files into `dir` and returns the id → path map.
fn local_schemas(dir: &Path, schemas: &[(u32, &str)]) -> BTreeMap<u32, PathBuf> {
    schemas
        .iter()
        .map(|(id, json)| {
            let path = dir.join(format!("schema-{id}.avsc"));
            std::fs::write(&path, json).unwrap();
            (*id, path)
        })
        .collect()
}

fn local_store(reader: Schema, schemas: &[(u32, &str)]) -> (Arc<SchemaStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let local = local_schemas(dir.path(), schemas);
    (Arc::new(SchemaStore::new(reader, &local, None, None).unwrap()), dir)
}

fn decoder(schemas: &[(u32, &str)]) -> (Decoder, tempfile::TempDir) {
    let (store, dir) = local_store(reader(), schemas);
    (Decoder::new(store, DEFAULT_MAX_MESSAGE_BYTES), dir)
}

fn valid_payload() -> Vec<u8> {
    frame(1, &body(&reader(), Value::Record(txn_fields())))
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = v else { panic!("not a record: {v:?}") };
    &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no field {name}")).1
}

/// The reader schema with `amount` replaced by a string: not readable as a Transaction.
fn amount_as_string_schema() -> String {
    TRANSACTION_SCHEMA.replace(r#"{"name": "amount", "type": "double""#, r#"{"name": "amount", "type": "string""#)
}

/// A writer schema: other field order, an extra field, and without the optional fields.
const EVOLVED_WRITER: &str = r#"{"type":"record","name":"Transaction","namespace":"io.streamscore.payments","fields":[
  {"name":"note","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"channel","type":{"type":"enum","name":"Channel","symbols":["POS","ECOMMERCE","MOBILE","ATM","MOTO","CRYPTO"]}},
  {"name":"event_id","type":{"type":"string","logicalType":"uuid"}},
  {"name":"transaction_id","type":"string"},
  {"name":"account_id","type":"string"},
  {"name":"merchant_id","type":"string"},
  {"name":"currency","type":"string"},
  {"name":"merchant_category","type":"string"},
  {"name":"country","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}}
]}"#;

fn evolved_value(channel: (u32, &str)) -> Value {
    Value::Record(vec![
        ("note".into(), Value::String("dropped by the reader".into())),
        ("amount".into(), Value::Double(5.0)),
        ("channel".into(), Value::Enum(channel.0, channel.1.into())),
        ("event_id".into(), Value::Uuid(EVENT_UUID.parse().unwrap())),
        ("transaction_id".into(), Value::String("tx".into())),
        ("account_id".into(), Value::String("a".into())),
        ("merchant_id".into(), Value::String("m".into())),
        ("currency".into(), Value::String("EUR".into())),
        ("merchant_category".into(), Value::String("5411".into())),
        ("country".into(), Value::String("NL".into())),
        ("event_time".into(), Value::TimestampMillis(42)),
    ])
}

// ---------------------------------------------------------------- local store and decoding

#[test]
fn local_store_hit_is_cached_and_miss_is_unknown_schema() {
    let (store, _dir) = local_store(reader(), &[(1, TRANSACTION_SCHEMA)]);
    let a = store.writer(1).unwrap();
    let b = store.writer(1).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second lookup comes from the cache");
    assert_eq!(a.id, 1);
    assert!(matches!(a.source, SchemaSource::Local(_)));

    let err = store.writer(9).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::UnknownSchema);
    assert!(err.detail.contains("schema id 9") && err.detail.contains("local"), "{}", err.detail);
}

#[test]
fn bad_local_schema_files_fail_at_construction() {
    let dir = tempfile::tempdir().unwrap();
    let missing = BTreeMap::from([(1, dir.path().join("nope.avsc"))]);
    let err = SchemaStore::new(reader(), &missing, None, None).err().unwrap();
    assert!(matches!(err, CodecError::SchemaFile { .. }) && err.to_string().contains("nope.avsc"), "{err}");

    let broken = local_schemas(dir.path(), &[(2, "{\"type\": \"recor\"}")]);
    let err = SchemaStore::new(reader(), &broken, None, None).err().unwrap();
    assert!(err.to_string().contains("schema-2.avsc"), "{err}");
}

#[test]
fn valid_payload_decodes_to_the_reader_record() {
    let (dec, _dir) = decoder(&[(1, TRANSACTION_SCHEMA)]);
    let v = dec.decode(&valid_payload()).unwrap();
    assert_eq!(v, Value::Record(txn_fields()));
}

#[test]
fn extra_writer_field_is_dropped_and_absent_fields_take_reader_defaults() {
    let (dec, _dir) = decoder(&[(5, EVOLVED_WRITER)]);
    let writer = Schema::parse_str(EVOLVED_WRITER).unwrap();
    let v = dec.decode(&frame(5, &body(&writer, evolved_value((3, "ATM"))))).unwrap();
    let Value::Record(fields) = &v else { panic!() };
    let Schema::Record(r) = reader() else { panic!() };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    let reader_names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, reader_names);
    assert_eq!(field(&v, "amount"), &Value::Double(5.0));
    assert_eq!(field(&v, "channel"), &Value::Enum(3, "ATM".into()));
    assert_eq!(field(&v, "account_age_days"), &Value::Union(0, Box::new(Value::Null)));
    assert_eq!(field(&v, "card_id"), &Value::Union(0, Box::new(Value::Null)));
}

#[test]
fn reader_field_with_a_non_null_default_gets_it() {
    let reader = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"int","default":42}]}"#,
    )
    .unwrap();
    let writer_json = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    let writer = Schema::parse_str(writer_json).unwrap();
    let (store, _dir) = local_store(reader, &[(3, writer_json)]);
    let dec = Decoder::new(store, 1024);
    let v = dec.decode(&frame(3, &body(&writer, Value::Record(vec![("a".into(), Value::Long(-7))])))).unwrap();
    assert_eq!(v, Value::Record(vec![("a".into(), Value::Long(-7)), ("b".into(), Value::Int(42))]));
}

#[test]
fn enum_symbol_unknown_to_the_reader_takes_the_enum_default() {
    let (dec, _dir) = decoder(&[(5, EVOLVED_WRITER)]);
    let writer = Schema::parse_str(EVOLVED_WRITER).unwrap();
    let v = dec.decode(&frame(5, &body(&writer, evolved_value((5, "CRYPTO"))))).unwrap();
    assert_eq!(field(&v, "channel"), &Value::Enum(0, "POS".into()));
}

#[test]
fn value_that_does_not_resolve_is_schema_mismatch() {
    // Partially compatible: the writer's union may hold a string the reader's int field can't take.
    let reader = Schema::parse_str(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#).unwrap();
    let writer_json = r#"{"type":"record","name":"R","fields":[{"name":"a","type":["int","string"]}]}"#;
    let writer = Schema::parse_str(writer_json).unwrap();
    let (store, _dir) = local_store(reader, &[(4, writer_json)]);
    let dec = Decoder::new(store, 1024);
    let ok = Value::Record(vec![("a".into(), Value::Union(0, Box::new(Value::Int(1))))]);
    assert_eq!(dec.decode(&frame(4, &body(&writer, ok))).unwrap(), Value::Record(vec![("a".into(), Value::Int(1))]));
    let bad = Value::Record(vec![("a".into(), Value::Union(1, Box::new(Value::String("x".into()))))]);
    let err = dec.decode(&frame(4, &body(&writer, bad))).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::SchemaMismatch, "{}", err.detail);
}

#[test]
fn incompatible_writer_is_schema_mismatch_and_cached() {
    let incompatible = amount_as_string_schema();
    let (store, _dir) = local_store(reader(), &[(7, &incompatible)]);
    let err = store.writer(7).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::SchemaMismatch);
    assert!(err.detail.contains("schema id 7") && err.detail.contains("Transaction"), "{}", err.detail);
    assert_eq!(store.writer(7).unwrap_err(), err);

    let dec = Decoder::new(store, DEFAULT_MAX_MESSAGE_BYTES);
    let err = dec.decode(&frame(7, b"anything")).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::SchemaMismatch);
}

#[test]
fn frame_errors_come_before_the_schema_lookup() {
    let (dec, _dir) = decoder(&[(1, TRANSACTION_SCHEMA)]);
    assert_eq!(dec.decode(&[]).unwrap_err().reason, DeadLetterReason::Truncated);
    assert_eq!(dec.decode(&[0, 0, 0]).unwrap_err().reason, DeadLetterReason::Truncated);
    assert_eq!(dec.decode(&[0x7b, 0, 0, 0, 1, 2]).unwrap_err().reason, DeadLetterReason::BadMagic);
    assert_eq!(dec.decode(&[0, 0, 0, 0, 2, 2]).unwrap_err().reason, DeadLetterReason::UnknownSchema);
}

#[test]
fn garbage_trailing_and_truncated_bodies_are_undecodable() {
    let (dec, _dir) = decoder(&[(1, TRANSACTION_SCHEMA)]);
    let err = dec.decode(&frame(1, &[0xff; 40])).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::Undecodable, "{}", err.detail);

    let mut trailing = valid_payload();
    trailing.push(0);
    let err = dec.decode(&trailing).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::Undecodable);
    assert!(err.detail.contains("1 trailing bytes"), "{}", err.detail);

    let valid = valid_payload();
    for cut in HEADER_LEN..valid.len() {
        let err = dec.decode(&valid[..cut]).unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::Undecodable, "cut at {cut}: {}", err.detail);
    }
}

#[test]
fn string_cut_at_the_end_is_undecodable_not_null() {
    // apache-avro reads a string cut short by the end of input as null; a nullable reader field
    // would accept that silently.
    let reader =
        Schema::parse_str(r#"{"type":"record","name":"R","fields":[{"name":"s","type":["null","string"]}]}"#).unwrap();
    let writer_json = r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}"#;
    let writer = Schema::parse_str(writer_json).unwrap();
    let (store, _dir) = local_store(reader, &[(8, writer_json)]);
    let dec = Decoder::new(store, 1024);
    let full = frame(8, &body(&writer, Value::Record(vec![("s".into(), Value::String("hello".into()))])));
    assert!(dec.decode(&full).is_ok());
    let err = dec.decode(&full[..full.len() - 2]).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::Undecodable, "{}", err.detail);
}

#[test]
fn oversized_messages_are_refused_unread() {
    let (store, _dir) = local_store(reader(), &[(1, TRANSACTION_SCHEMA)]);
    let payload = valid_payload();
    let dec = Decoder::new(store, payload.len() - 1);
    let err = dec.decode(&payload).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::Undecodable);
    assert!(err.detail.contains("max_message_bytes"), "{}", err.detail);
}

/// One decoder shared by the property tests (building a store per case would dominate their time).
/// The store read its schema files when it was built, so their directory goes at once (a static
/// is never dropped: a `TempDir` kept in it stayed behind in /tmp after every run).
fn shared_decoder() -> &'static Decoder {
    static DECODER: std::sync::OnceLock<Decoder> = std::sync::OnceLock::new();
    DECODER.get_or_init(|| decoder(&[(1, TRANSACTION_SCHEMA), (5, EVOLVED_WRITER)]).0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dec = shared_decoder();
        for id in [1u32, 5] {
            if let Ok(v) = dec.decode(&frame(id, &bytes)) {
                prop_assert!(matches!(v, Value::Record(_)));
            }
        }
        let _ = dec.decode(&bytes);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
        let dec = shared_decoder();
        let mut p = valid_payload();
        let i = pos % p.len();
        p[i] = byte;
        let _ = dec.decode(&p);
        p.truncate(cut % (p.len() + 1));
        let _ = dec.decode(&p);
    }
}

// ---------------------------------------------------------------- encoding

fn read_scored(bytes: &[u8]) -> (u32, Value) {
    let schema = parse_schema(SCORED_TRANSACTION_SCHEMA).unwrap();
    let (id, mut body) = split_frame(bytes).unwrap();
    let v = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut body).unwrap();
    assert!(body.is_empty(), "encoder wrote {} bytes too many", body.len());
    (id, v)
}

fn expected_scored(r: &ScoredRecord) -> Vec<(String, Value)> {
    vec![
        ("event_id".into(), Value::Uuid(r.event_id.parse().unwrap())),
        ("transaction_id".into(), Value::String(r.transaction_id.into())),
        ("model_name".into(), Value::String(r.model_name.into())),
        ("model_version".into(), Value::String(r.model_version.into())),
        ("score".into(), Value::Float(r.score)),
        ("label".into(), Value::Boolean(r.label)),
        ("threshold".into(), Value::Float(r.threshold)),
        ("cache_hit".into(), Value::Boolean(r.cache_hit)),
        ("source_topic".into(), Value::String(r.source_topic.into())),
        ("source_partition".into(), Value::Int(r.source_partition)),
        ("source_offset".into(), Value::Long(r.source_offset)),
        ("event_time".into(), Value::TimestampMillis(r.event_time_ms)),
        ("scored_at".into(), Value::TimestampMillis(r.scored_at_ms)),
    ]
}

#[test]
fn encode_scored_round_trips_through_apache_avro() {
    let rec = ScoredRecord {
        event_id: EVENT_UUID,
        transaction_id: "tx-1",
        model_name: "fraud_mlp",
        model_version: "1",
        score: 0.73,
        label: true,
        threshold: 0.5,
        cache_hit: false,
        source_topic: "payments",
        source_partition: 3,
        source_offset: 1_234_567,
        event_time_ms: 1_700_000_000_000,
        scored_at_ms: -1,
    };
    let mut out = b"previous".to_vec();
    let record = encode_scored(&mut out, 2, &rec).to_vec();
    assert_eq!(&out[..8], b"previous", "appends");
    assert_eq!(record, &out[8..], "returns what it appended");
    let (id, v) = read_scored(&out[8..]);
    assert_eq!(id, 2);
    assert_eq!(v, Value::Record(expected_scored(&rec)));
}

#[test]
fn encode_scored_reuses_the_buffer_without_growing_it() {
    let rec = ScoredRecord {
        event_id: EVENT_UUID,
        transaction_id: "t",
        model_name: "m",
        model_version: "v",
        score: 0.1,
        label: false,
        threshold: 0.5,
        cache_hit: true,
        source_topic: "in",
        source_partition: 0,
        source_offset: 0,
        event_time_ms: 0,
        scored_at_ms: 0,
    };
    let mut out = Vec::with_capacity(256);
    let cap = out.capacity();
    for _ in 0..100 {
        out.clear();
        encode_scored(&mut out, 1, &rec);
    }
    assert_eq!(out.capacity(), cap);
}

#[test]
fn varints_match_the_avro_spec() {
    for (n, bytes) in [
        (0i64, &[0x00][..]),
        (-1, &[0x01]),
        (1, &[0x02]),
        (-64, &[0x7f]),
        (64, &[0x80, 0x01]),
        (i64::MAX, &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        (i64::MIN, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ] {
        let mut out = vec![];
        put_long(&mut out, n);
        assert_eq!(out, bytes, "{n}");
    }
}

proptest! {
    #[test]
    fn encode_scored_round_trips_random_records(
        uuid in any::<u128>(),
        tx in ".{0,40}", model in "[a-z_]{1,20}", version in "[0-9]{1,3}", topic in ".{0,30}",
        score in any::<f32>(), threshold in 0f32..=1.0, label in any::<bool>(), hit in any::<bool>(),
        partition in any::<i32>(), offset in any::<i64>(), et in any::<i64>(), at in any::<i64>(),
        id in any::<u32>(),
    ) {
        let event_id = apache_avro::Uuid::from_u128(uuid).to_string();
        let rec = ScoredRecord {
            event_id: &event_id, transaction_id: &tx, model_name: &model, model_version: &version,
            score, label, threshold, cache_hit: hit, source_topic: &topic, source_partition: partition,
            source_offset: offset, event_time_ms: et, scored_at_ms: at,
        };
        let mut out = vec![];
        encode_scored(&mut out, id, &rec);
        let (got_id, v) = read_scored(&out);
        prop_assert_eq!(got_id, id);
        let Value::Record(fields) = v else { panic!() };
        let expected = expected_scored(&rec);
        for ((n, got), (_, want)) in fields.iter().zip(&expected) {
            match (got, want) {
                // NaN != NaN: compare bits.
                (Value::Float(a), Value::Float(b)) => prop_assert_eq!(a.to_bits(), b.to_bits(), "{}", n),
                _ => prop_assert_eq!(got, want, "{}", n),
            }
        }
    }
}

fn drift_value() -> Value {
    let stats = |name: &str| {
        Value::Record(vec![
            ("name".into(), Value::String(name.into())),
            ("count".into(), Value::Long(10)),
            ("missing".into(), Value::Long(1)),
            ("mean".into(), Value::Double(0.5)),
            ("std".into(), Value::Double(0.1)),
            ("min".into(), Value::Double(0.0)),
            ("max".into(), Value::Double(1.0)),
            ("bin_edges".into(), Value::Array(vec![Value::Double(0.5)])),
            ("bin_counts".into(), Value::Array(vec![Value::Long(4), Value::Long(6)])),
            ("psi".into(), Value::Double(0.01)),
            ("js".into(), Value::Double(0.02)),
            ("test".into(), Value::String("ks".into())),
            ("test_statistic".into(), Value::Double(0.1)),
            ("p_value".into(), Value::Double(0.5)),
            ("reference_counts".into(), Value::Array(vec![Value::Long(50), Value::Long(50)])),
        ])
    };
    Value::Record(vec![
        ("model_name".into(), Value::String("fraud_mlp".into())),
        ("model_version".into(), Value::String("1".into())),
        ("instance_id".into(), Value::String("i-1".into())),
        ("window_start".into(), Value::TimestampMillis(1000)),
        ("window_end".into(), Value::TimestampMillis(2000)),
        ("rows".into(), Value::Long(10)),
        ("features".into(), Value::Array(vec![stats("amount")])),
        ("score".into(), stats("score")),
    ])
}

#[test]
fn encode_value_round_trips_a_drift_report_and_leaves_out_untouched_on_error() {
    let schema = parse_schema(DRIFT_REPORT_SCHEMA).unwrap();
    let mut out = vec![];
    encode_value(&mut out, 3, &schema, drift_value()).unwrap();
    let (id, mut body) = split_frame(&out).unwrap();
    assert_eq!(id, 3);
    let v = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut body).unwrap();
    assert_eq!(v, drift_value());

    let mut out = b"keep".to_vec();
    let err = encode_value(&mut out, 3, &schema, Value::Long(1)).unwrap_err();
    assert_eq!(out, b"keep");
    assert!(err.to_string().contains("DriftReport"), "{err}");
}

// ---------------------------------------------------------------- registry

/// A minimal Confluent Schema Registry: `GET /schemas/ids/{id}` and `POST /subjects/{s}/versions`.
struct FakeRegistry {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    /// Answer 503 to this many requests first.
    fail_next: Arc<AtomicUsize>,
}

fn fake_registry(schemas: Vec<(u32, String)>, silent: bool) -> FakeRegistry {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let fail_next = Arc::new(AtomicUsize::new(0));
    let (log, fail) = (requests.clone(), fail_next.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; content_length];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(format!("{head}{}", String::from_utf8_lossy(&body)));
            if silent {
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, json) = if fail.load(Ordering::SeqCst) > 0 {
                fail.fetch_sub(1, Ordering::SeqCst);
                ("503 Service Unavailable", r#"{"error_code":50301,"message":"down"}"#.to_string())
            } else if let Some(id) = path.strip_prefix("/schemas/ids/") {
                let id: u32 = id.split('?').next().unwrap().parse().unwrap();
                match schemas.iter().find(|(i, _)| *i == id) {
                    Some((_, s)) => ("200 OK", serde_json::json!({ "schema": s }).to_string()),
                    None => ("404 Not Found", r#"{"error_code":40403,"message":"Schema not found"}"#.to_string()),
                }
            } else if path.starts_with("/subjects/") && path.ends_with("/versions") {
                ("200 OK", r#"{"id":77}"#.to_string())
            } else {
                ("404 Not Found", r#"{"error_code":404,"message":"no route"}"#.to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
        }
    });
    FakeRegistry { url, requests, fail_next }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn registry_store(url: &str, rt: &tokio::runtime::Runtime, local: &BTreeMap<u32, PathBuf>) -> SchemaStore {
    let settings = RegistrySettings {
        url: url.to_string(),
        username: Some("key".into()),
        password: Some("secret".into()),
        bearer_token: None,
        timeout: Duration::from_millis(500),
    };
    SchemaStore::new(reader(), local, Some(settings), Some(rt.handle().clone())).unwrap()
}

#[test]
fn registry_schema_is_fetched_once_and_cached() {
    let reg = fake_registry(vec![(11, TRANSACTION_SCHEMA.to_string()), (12, amount_as_string_schema())], false);
    let rt = runtime();
    let store = Arc::new(registry_store(&reg.url, &rt, &BTreeMap::new()));

    let w = store.writer(11).unwrap();
    assert_eq!(w.source, SchemaSource::Registry(reg.url.clone()));
    assert_eq!(reg.requests.lock().unwrap().len(), 1);
    let request = reg.requests.lock().unwrap()[0].clone();
    assert!(request.starts_with("GET /schemas/ids/11"), "{request}");
    assert!(request.to_ascii_lowercase().contains("authorization: basic"), "{request}");

    let again = store.writer(11).unwrap();
    assert!(Arc::ptr_eq(&w, &again));
    assert_eq!(reg.requests.lock().unwrap().len(), 1, "second lookup makes no request");

    // Decoding through the registry path works end to end.
    let dec = Decoder::new(store.clone(), DEFAULT_MAX_MESSAGE_BYTES);
    let payload = frame(11, &body(&reader(), Value::Record(txn_fields())));
    assert_eq!(dec.decode(&payload).unwrap(), Value::Record(txn_fields()));

    // Mismatch is cached too.
    assert_eq!(store.writer(12).unwrap_err().reason, DeadLetterReason::SchemaMismatch);
    assert_eq!(store.writer(12).unwrap_err().reason, DeadLetterReason::SchemaMismatch);
    assert_eq!(reg.requests.lock().unwrap().len(), 2);

    // Unknown id: the registry's 404.
    let err = store.writer(13).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::UnknownSchema, "{}", err.detail);
    assert!(err.detail.contains("13") && err.detail.contains(&reg.url), "{}", err.detail);
}

#[test]
fn local_schemas_are_used_before_the_registry() {
    let reg = fake_registry(vec![], false);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let local = local_schemas(dir.path(), &[(1, TRANSACTION_SCHEMA)]);
    let store = registry_store(&reg.url, &rt, &local);
    assert!(matches!(store.writer(1).unwrap().source, SchemaSource::Local(_)));
    assert!(reg.requests.lock().unwrap().is_empty());
}

#[test]
fn registry_outage_is_registry_unavailable_and_not_cached() {
    let reg = fake_registry(vec![(11, TRANSACTION_SCHEMA.to_string())], false);
    reg.fail_next.store(1, Ordering::SeqCst);
    let rt = runtime();
    let store = registry_store(&reg.url, &rt, &BTreeMap::new());
    let err = store.writer(11).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::RegistryUnavailable, "{}", err.detail);
    assert!(store.writer(11).is_ok(), "a later lookup retries");
    assert_eq!(reg.requests.lock().unwrap().len(), 2);
}

#[test]
fn registry_that_is_down_or_silent_is_registry_unavailable() {
    let rt = runtime();
    // Nothing listens on a port we just released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = registry_store(&format!("http://127.0.0.1:{port}"), &rt, &BTreeMap::new());
    let err = store.writer(1).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::RegistryUnavailable, "{}", err.detail);
    assert!(err.detail.contains(&port.to_string()), "{}", err.detail);

    let silent = fake_registry(vec![], true);
    let store = registry_store(&silent.url, &rt, &BTreeMap::new());
    let started = std::time::Instant::now();
    let err = store.writer(1).unwrap_err();
    assert_eq!(err.reason, DeadLetterReason::RegistryUnavailable, "{}", err.detail);
    assert!(started.elapsed() < Duration::from_secs(3), "bounded by the timeout");
}

#[test]
fn register_posts_the_schema_and_returns_its_id() {
    let reg = fake_registry(vec![], false);
    let rt = runtime();
    let store = registry_store(&reg.url, &rt, &BTreeMap::new());
    let id = rt.block_on(store.register("payments.scored-value", SCORED_TRANSACTION_SCHEMA)).unwrap();
    assert_eq!(id, 77);
    let request = reg.requests.lock().unwrap()[0].clone();
    assert!(request.starts_with("POST /subjects/payments.scored-value/versions"), "{request}");
    assert!(request.contains("ScoredTransaction"), "{request}");

    let (local_only, _dir) = local_store(reader(), &[]);
    let err = rt.block_on(local_only.register("s", SCORED_TRANSACTION_SCHEMA)).unwrap_err();
    assert!(matches!(err, CodecError::NoRegistry { .. }), "{err}");
    let err = rt.block_on(store.register("s", "{not json")).unwrap_err();
    assert!(matches!(err, CodecError::SchemaParse { .. }), "{err}");
}

#[test]
fn registry_without_a_runtime_handle_is_a_configuration_error() {
    let settings = RegistrySettings {
        url: "http://127.0.0.1:1".into(),
        username: None,
        password: None,
        bearer_token: Some("t".into()),
        timeout: Duration::from_secs(1),
    };
    let err = SchemaStore::new(reader(), &BTreeMap::new(), Some(settings.clone()), None).err().unwrap();
    assert!(err.to_string().contains("runtime handle"), "{err}");
    assert!(!format!("{settings:?}").contains("\"t\""), "token is redacted");
}
