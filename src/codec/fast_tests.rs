//! Differential tests: the fast path ([`FastPlan`], [`Decoder::decode_features`]) against the
//! generic path ([`Decoder::decode`] then [`FeatureExtractor::extract`]) on the same payloads.
//! Both must give the same row bits, missing flags and identity, or the same rejection reason.
//!
//! Random bodies are written straight from the writer schema by [`gen`], which covers every type
//! a writer may use (nested records, arrays and maps in several blocks, unions, logical types,
//! named references) with extreme values; random writer schemas are evolutions of
//! `transaction.avsc` ([`arb_writer`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use apache_avro::schema::{NamesRef, NamespaceRef, ResolvedSchema, UuidSchema};
use apache_avro::Schema;
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use crate::features::tests::manifest;

use super::*;
use crate::features::{FeatureExtractor, IdArena, RowIdentity};
use crate::model::manifest::Manifest;
use crate::outcome::{DeadLetterReason, Rejection};

const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
const ID: u32 = 1;

fn reader() -> Schema {
    parse_schema(TRANSACTION_SCHEMA).unwrap()
}

// ---------------------------------------------------------------- manifests

fn full_manifest(strict: bool) -> Manifest {
    let on_null = if strict { "reject" } else { "default" };
    manifest(json!([
        {"source": "amount", "transform": "numeric"},
        {"source": "amount", "transform": "log1p"},
        {"source": "channel", "transform": "one_hot", "categories": ["POS", "ECOMMERCE", "MOTO"], "other": true},
        {"source": "country", "transform": "one_hot", "categories": ["DE", "FR"]},
        {"source": "currency", "transform": "one_hot", "categories": ["EUR", "USD"], "other": true, "missing_flag": true},
        {"source": "event_time", "transform": "hour_of_day"},
        {"source": "account_age_days", "transform": "numeric", "on_null": "default", "default": -1.0, "missing_flag": true},
        {"source": "distance_from_home_km", "transform": "log1p", "on_null": "default", "default": 7.0, "missing_flag": true},
        {"source": "txn_count_1h", "transform": "numeric", "on_null": on_null, "default": 2.5},
        {"source": "card_present", "transform": "boolean", "on_null": "default", "missing_flag": true},
        {"source": "new_device", "transform": "boolean", "on_null": on_null},
        {"source": "card_id", "transform": "one_hot", "categories": ["c1", "DE"], "other": true,
         "on_null": on_null, "default": 5.0, "missing_flag": true}
    ]))
}

fn shipped_manifest() -> Manifest {
    Manifest::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1")).unwrap()
}

/// One feature: every other reader field is unused, so the plans skip nullable ints, doubles,
/// booleans and strings.
fn sparse_manifest() -> Manifest {
    manifest(json!([{"source": "amount", "transform": "numeric"}]))
}

/// How many [`manifests`] there are.
const MANIFESTS: usize = 4;

fn manifests() -> Vec<Manifest> {
    vec![shipped_manifest(), full_manifest(false), full_manifest(true), sparse_manifest()]
}

// ---------------------------------------------------------------- the two paths

/// A decoder with features over writer schemas written to a temporary directory.
struct Harness {
    decoder: Decoder,
    extractor: Arc<FeatureExtractor>,
    manifest: Manifest,
    /// Kept across [`Harness::check`] calls, as the source thread keeps it across events.
    last_plan: std::cell::RefCell<LastPlan>,
    /// The identity strings `decode_features_into` stored so far (never cleared: spans must
    /// stay right behind earlier ones).
    ids: std::cell::RefCell<IdArena>,
    _dir: tempfile::TempDir,
}

type Outcome = Result<(RowIdentity, Vec<u32>, Vec<bool>), DeadLetterReason>;

impl Harness {
    fn new(schemas: &[(u32, &str)], manifest: &Manifest) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut local = BTreeMap::new();
        for (id, json) in schemas {
            let path = dir.path().join(format!("{id}.avsc"));
            std::fs::write(&path, json).unwrap();
            local.insert(*id, path);
        }
        let store = Arc::new(SchemaStore::new(reader(), &local, None, None).unwrap());
        let extractor = Arc::new(FeatureExtractor::new(manifest, &reader()).unwrap());
        let decoder = Decoder::with_features(store, MAX_MESSAGE_BYTES, manifest, extractor.clone());
        Harness {
            decoder,
            extractor,
            manifest: manifest.clone(),
            last_plan: Default::default(),
            ids: Default::default(),
            _dir: dir,
        }
    }

    fn run(&self, f: impl FnOnce(&mut [f32], &mut [bool]) -> Result<RowIdentity, Rejection>) -> Outcome {
        let n = self.extractor.num_columns();
        // Poisoned, so a column either path forgets to write shows up.
        let mut out = vec![f32::NAN; n + 2];
        let mut missing = vec![true; n + 2];
        let id = f(&mut out, &mut missing).map_err(|r| r.reason)?;
        Ok((id, out[..n].iter().map(|v| v.to_bits()).collect(), missing[..n].to_vec()))
    }

    fn generic(&self, payload: &[u8]) -> Outcome {
        let value = self.decoder.decode(payload).map_err(|r| r.reason)?;
        self.run(|out, missing| self.extractor.extract(&value, out, missing))
    }

    fn fast(&self, payload: &[u8]) -> Outcome {
        self.run(|out, missing| self.decoder.decode_features(payload, out, missing))
    }

    /// The plan for schema `id`, built directly (`None` if the store refuses the schema).
    fn plan(&self, id: u32) -> Option<Option<FastPlan>> {
        let writer = self.decoder.store().writer(id).ok()?;
        Some(FastPlan::new(writer.schema(), &reader(), &self.manifest, &self.extractor))
    }

    /// Both paths, and the plan itself on the body, agree on `payload`; returns the outcome.
    fn check(&self, payload: &[u8], plan: Option<&FastPlan>) -> Outcome {
        let generic = self.generic(payload);
        let fast = self.fast(payload);
        assert_eq!(fast, generic, "decode_features differs from decode + extract on {payload:02x?}");
        // As the source decodes: the plan remembered from the last event, the ids stored in a
        // batch's arena (behind what earlier events stored there) and read back.
        let remembered = self.run(|out, missing| {
            let mut ids = self.ids.borrow_mut();
            let spans =
                self.decoder.decode_features_into(&mut self.last_plan.borrow_mut(), payload, out, missing, &mut ids)?;
            Ok(ids.identity(&spans).owned())
        });
        assert_eq!(remembered, generic, "decode_features_into differs from decode + extract on {payload:02x?}");
        if let (Some(plan), Ok((_, body))) = (plan, split_frame(payload)) {
            if payload.len() <= MAX_MESSAGE_BYTES {
                let direct = self.run(|out, missing| plan.decode(body, out, missing).map(|id| id.owned()));
                assert_eq!(direct, generic, "FastPlan::decode differs from decode + extract on {payload:02x?}");
            }
        }
        generic
    }
}

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    write_frame_header(&mut out, id);
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------- random bodies from a schema

/// Writes a random valid encoding of a `schema` value (names qualified as apache-avro does).
fn gen(schema: &Schema, names: &NamesRef<'_>, ns: NamespaceRef, rng: &mut SmallRng, out: &mut Vec<u8>) {
    match schema {
        Schema::Null => {}
        Schema::Boolean => put_bool(out, rng.random()),
        Schema::Int | Schema::Date | Schema::TimeMillis => put_int(out, gen_int(rng)),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => put_long(out, gen_long(rng)),
        Schema::Float => put_f32(out, gen_double(rng) as f32),
        Schema::Double => put_f64(out, gen_double(rng)),
        Schema::Bytes | Schema::Decimal(_) => {
            let bytes: Vec<u8> = if rng.random_bool(0.5) {
                gen_string(rng).into_bytes()
            } else {
                (0..rng.random_range(0..12)).map(|_| rng.random()).collect()
            };
            put_long(out, bytes.len() as i64);
            out.extend_from_slice(&bytes);
        }
        Schema::String => put_str(out, &gen_string(rng)),
        Schema::Uuid(UuidSchema::String) => put_str(out, &gen_uuid(rng)),
        Schema::Uuid(_) => unreachable!("not generated"),
        Schema::Fixed(f) | Schema::Duration(f) => out.extend((0..f.size).map(|_| rng.random::<u8>())),
        Schema::Enum(e) => put_int(out, rng.random_range(0..e.symbols.len()) as i32),
        Schema::Array(a) => gen_blocks(rng, out, |rng, out| gen(&a.items, names, ns, rng, out)),
        Schema::Map(m) => gen_blocks(rng, out, |rng, out| {
            put_str(out, &gen_string(rng));
            gen(&m.types, names, ns, rng, out)
        }),
        Schema::Union(u) => {
            let i = rng.random_range(0..u.variants().len());
            put_long(out, i as i64);
            gen(&u.variants()[i], names, ns, rng, out);
        }
        Schema::Record(r) => {
            let name = r.name.fully_qualified_name(ns);
            for f in &r.fields {
                gen(&f.schema, names, name.namespace(), rng, out);
            }
        }
        Schema::Ref { name } => {
            let name = name.fully_qualified_name(ns);
            gen(names[name.as_ref()], names, name.namespace(), rng, out);
        }
        other => unreachable!("not generated: {other:?}"),
    }
}

/// 0 to 3 blocks of 1 to 3 items, some with a negative count and a byte size, then the end.
fn gen_blocks(rng: &mut SmallRng, out: &mut Vec<u8>, mut item: impl FnMut(&mut SmallRng, &mut Vec<u8>)) {
    for _ in 0..rng.random_range(0..4) {
        let count = rng.random_range(1..4);
        let mut block = Vec::new();
        for _ in 0..count {
            item(rng, &mut block);
        }
        if rng.random_bool(0.3) {
            put_long(out, -count);
            put_long(out, block.len() as i64);
        } else {
            put_long(out, count);
        }
        out.extend_from_slice(&block);
    }
    put_long(out, 0);
}

fn gen_int(rng: &mut SmallRng) -> i32 {
    match rng.random_range(0..8) {
        0 => *[0, 1, -1, i32::MIN, i32::MAX, 29, 30].choose(rng).unwrap(),
        1 => rng.random(),
        _ => rng.random_range(-5..2000),
    }
}

fn gen_long(rng: &mut SmallRng) -> i64 {
    match rng.random_range(0..8) {
        0 => *[0, -1, 1, i64::MIN, i64::MAX, i64::from(i32::MAX) + 1, -3_600_000].choose(rng).unwrap(),
        1 => rng.random(),
        2 => rng.random_range(-5..2000),
        _ => 1_700_000_000_000 + rng.random_range(-10_000_000_000..10_000_000_000),
    }
}

fn gen_double(rng: &mut SmallRng) -> f64 {
    match rng.random_range(0..10) {
        0 => *[
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            -2.0,
            -0.0,
            0.0,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            3.4e38,
            16_777_217.0,
        ]
        .choose(rng)
        .unwrap(),
        1 => f64::from_bits(rng.random()),
        _ => (rng.random_range(-1.0..9.0f64)).exp().round() / 100.0,
    }
}

fn gen_uuid(rng: &mut SmallRng) -> String {
    let b: [u8; 16] = rng.random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let hyphenated = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    match rng.random_range(0..10) {
        0 => hex,                              // simple form
        1 => hyphenated.to_uppercase(),        // upper case
        2 => format!("{{{hyphenated}}}"),      // braced
        3 => format!("urn:uuid:{hyphenated}"), // URN
        _ => hyphenated,
    }
}

fn gen_string(rng: &mut SmallRng) -> String {
    const WORDS: &[&str] = &[
        "",
        "DE",
        "FR",
        "US",
        "de",
        "EUR",
        "USD",
        "GBP",
        "POS",
        "ECOMMERCE",
        "MOTO",
        "ATM",
        "CRYPTO",
        "c1",
        "5411",
        "NaN",
        "INF",
        "-Infinity",
        "Infinity",
        "é",
        "日本",
        "tx-0123456789abcdef",
    ];
    match rng.random_range(0..10) {
        0..=3 => WORDS.choose(rng).unwrap().to_string(),
        4 => gen_uuid(rng),
        5 => "x".repeat(rng.random_range(100..3000)),
        _ => (0..rng.random_range(0..12)).map(|_| *['a', 'Z', '0', '-', 'é', '€', '😀'].choose(rng).unwrap()).collect(),
    }
}

fn body(schema: &Schema, seed: u64) -> Vec<u8> {
    let resolved = ResolvedSchema::try_from(schema).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    gen(schema, resolved.get_names(), None, &mut rng, &mut out);
    out
}

// ---------------------------------------------------------------- random writer schemas

/// A random writer type for an extra field: every Avro type, nested up to `depth`.
fn random_type(rng: &mut SmallRng, depth: u32, counter: &mut u32, named: &mut Vec<String>) -> Json {
    let leaf = |rng: &mut SmallRng| -> Json {
        [
            json!("boolean"),
            json!("int"),
            json!("long"),
            json!("float"),
            json!("double"),
            json!("bytes"),
            json!("string"),
            json!({"type": "int", "logicalType": "date"}),
            json!({"type": "int", "logicalType": "time-millis"}),
            json!({"type": "long", "logicalType": "timestamp-micros"}),
            json!({"type": "long", "logicalType": "local-timestamp-millis"}),
            json!({"type": "string", "logicalType": "uuid"}),
            json!({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}),
        ]
        .choose(rng)
        .unwrap()
        .clone()
    };
    let pick = if depth == 0 { rng.random_range(0..3) } else { rng.random_range(0..9) };
    *counter += 1;
    let n = *counter;
    match pick {
        0 | 1 => leaf(rng),
        2 => {
            if !named.is_empty() && rng.random_bool(0.5) {
                return json!(named.choose(rng).unwrap());
            }
            // Named types get an explicit namespace and are referred to by full name.
            let (t, name) = if rng.random_bool(0.5) {
                (
                    json!({"type": "enum", "name": format!("E{n}"), "namespace": "n", "symbols": ["A", "B", "C"]}),
                    format!("n.E{n}"),
                )
            } else {
                (
                    json!({"type": "fixed", "name": format!("F{n}"), "namespace": "n", "size": rng.random_range(1..5)}),
                    format!("n.F{n}"),
                )
            };
            named.push(name);
            t
        }
        3 => json!({"type": "array", "items": random_type(rng, depth - 1, counter, named)}),
        4 => json!({"type": "map", "values": random_type(rng, depth - 1, counter, named)}),
        5 => {
            let mut kinds = ["int", "string", "double", "boolean", "bytes", "long"];
            kinds.shuffle(rng);
            let mut variants = vec![json!("null")];
            variants.extend(kinds.iter().take(rng.random_range(1..3)).map(|k| json!(k)));
            variants.push(json!({"type": "record", "name": format!("U{n}"), "fields": [
                {"name": "v", "type": random_type(rng, depth - 1, counter, named)}]}));
            variants.shuffle(rng);
            Json::Array(variants)
        }
        _ => {
            let fields: Vec<Json> = (0..rng.random_range(1..4))
                .map(|i| json!({"name": format!("f{i}"), "type": random_type(rng, depth - 1, counter, named)}))
                .collect();
            let mut record = json!({"type": "record", "name": format!("R{n}"), "fields": fields});
            match rng.random_range(0..3) {
                0 => {
                    record["namespace"] = json!("x.y");
                    named.push(format!("x.y.R{n}"));
                }
                1 => {
                    record["namespace"] = json!("io.streamscore.payments");
                    named.push(format!("io.streamscore.payments.R{n}"));
                }
                // Inherits the enclosing namespace: not referred to.
                _ => {}
            }
            record
        }
    }
}

/// A writer schema evolved from `transaction.avsc`: changed field types (promotions, nullable
/// fields, bytes for strings, enum symbols), removed defaulted fields, extra fields of random
/// types, and a shuffled field order.
fn writer_variant(seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut schema: Json = serde_json::from_str(TRANSACTION_SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    let nullable = |t: Json, rng: &mut SmallRng| {
        if rng.random_bool(0.5) {
            json!(["null", t])
        } else {
            json!([t, "null"])
        }
    };
    let mut kept = Vec::new();
    for mut f in fields.drain(..) {
        let name = f["name"].as_str().unwrap().to_string();
        let r = rng.random_range(0..10);
        let change = rng.random_bool(0.2);
        let t = f["type"].clone();
        match name.as_str() {
            "event_id" if change => f["type"] = if r < 2 { json!("string") } else { nullable(t, &mut rng) },
            "transaction_id" | "account_id" | "merchant_id" | "currency" | "country" | "merchant_category"
                if change =>
            {
                f["type"] = [json!("bytes"), nullable(json!("string"), &mut rng), nullable(json!("bytes"), &mut rng)]
                    .choose(&mut rng)
                    .unwrap()
                    .clone()
            }
            "amount" if change => {
                f["type"] = [json!("int"), json!("long"), json!("float"), nullable(json!("double"), &mut rng)]
                    .choose(&mut rng)
                    .unwrap()
                    .clone()
            }
            "channel" if change => {
                let mut symbols = vec!["POS", "ECOMMERCE", "MOBILE", "ATM", "MOTO"];
                if rng.random_bool(0.7) {
                    symbols.extend(["CRYPTO", "P2P"]);
                }
                symbols.shuffle(&mut rng);
                let e = json!({"type": "enum", "name": "Channel", "symbols": symbols});
                f["type"] = match r {
                    0 => json!("string"),
                    1 => nullable(e, &mut rng),
                    _ => e,
                };
            }
            "event_time" if change => {
                f["type"] = [json!("long"), json!("int"), nullable(t, &mut rng)].choose(&mut rng).unwrap().clone()
            }
            "card_id" if change => {
                f["type"] = [
                    json!(["null", "bytes"]),
                    json!("string"),
                    json!(["null", "string", {"type": "array", "items": "string"}]),
                    json!(["string", "null", "int"]),
                ]
                .choose(&mut rng)
                .unwrap()
                .clone();
                f.as_object_mut().unwrap().remove("default");
            }
            "account_age_days" | "txn_count_1h" if change => {
                f["type"] =
                    [json!("int"), json!(["int", "null"]), json!(["null", "long"])].choose(&mut rng).unwrap().clone();
                f.as_object_mut().unwrap().remove("default");
            }
            "distance_from_home_km" if change => {
                f["type"] =
                    [json!(["null", "float"]), json!(["null", "int"]), json!(["null", "long"]), json!("double")]
                        .choose(&mut rng)
                        .unwrap()
                        .clone();
                f.as_object_mut().unwrap().remove("default");
            }
            "card_present" | "new_device" if change => {
                f["type"] = [json!("boolean"), json!(["boolean", "null"])].choose(&mut rng).unwrap().clone();
                f.as_object_mut().unwrap().remove("default");
            }
            _ => {}
        }
        // Fields with a reader default may be left out.
        let defaulted =
            ["card_id", "account_age_days", "distance_from_home_km", "txn_count_1h", "card_present", "new_device"];
        if defaulted.contains(&name.as_str()) && rng.random_bool(0.15) {
            continue;
        }
        kept.push(f);
    }
    if rng.random_bool(0.5) {
        kept.shuffle(&mut rng);
    }
    // Extra fields go after the shuffle, in order, so a named type is defined before it is used.
    let mut counter = 0;
    let mut named = Vec::new();
    for i in 0..rng.random_range(0..4) {
        let at = rng.random_range(0..=kept.len());
        let t = random_type(&mut rng, 3, &mut counter, &mut named);
        kept.insert(at, json!({"name": format!("extra{i}"), "type": t}));
        // Later extras are inserted at random positions: only keep names they cannot precede.
        named.clear();
    }
    *fields = kept;
    serde_json::to_string(&schema).unwrap()
}

// ---------------------------------------------------------------- mutations

fn mutate(body: &mut Vec<u8>, rng: &mut SmallRng) {
    for _ in 0..rng.random_range(1..4) {
        let at = if body.is_empty() { 0 } else { rng.random_range(0..body.len()) };
        match rng.random_range(0..6) {
            0 => body.truncate(at),
            1 if !body.is_empty() => body[at] ^= 1 << rng.random_range(0..8),
            2 if !body.is_empty() => body[at] = rng.random(),
            3 => body.insert(at, *[0x80, 0xff, 0x01, 0x7f, 0x00, 0x02].choose(rng).unwrap()),
            4 if !body.is_empty() => {
                body.remove(at);
            }
            _ => body.extend((0..rng.random_range(1..4)).map(|_| rng.random::<u8>())),
        }
    }
}

// ---------------------------------------------------------------- the tests

/// The standard schema, and the standard schema with more (and reordered) channel symbols.
fn standard_writers() -> [String; 2] {
    let mut extra: Json = serde_json::from_str(TRANSACTION_SCHEMA).unwrap();
    for f in extra["fields"].as_array_mut().unwrap() {
        if f["name"] == "channel" {
            f["type"] = json!({"type": "enum", "name": "Channel", "symbols": ["CRYPTO", "ATM", "POS", "MOTO", "ECOMMERCE", "MOBILE", "P2P"]});
        }
    }
    [TRANSACTION_SCHEMA.to_string(), serde_json::to_string(&extra).unwrap()]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// (1) Random transactions under the standard writer schema (and one with extra enum
    /// symbols): nulls in every nullable field, extreme numbers, NaN/inf, unknown enum symbols,
    /// long strings.
    #[test]
    fn fast_equals_generic_on_random_transactions(seed in any::<u64>(), m in 0usize..MANIFESTS) {
        let [standard, extra_symbols] = standard_writers();
        let h = Harness::new(&[(1, &standard), (2, &extra_symbols)], &manifests()[m]);
        let plans = [h.plan(1).unwrap().expect("plan for the standard schema"), h.plan(2).unwrap().expect("plan")];
        for (k, plan) in plans.iter().enumerate() {
            let schema = Schema::parse_str([&standard, &extra_symbols][k]).unwrap();
            for i in 0..16 {
                let payload = framed(k as u32 + 1, &body(&schema, seed.wrapping_add(i)));
                let _ = h.check(&payload, Some(plan));
            }
        }
        prop_assert_eq!(h.decoder.is_fast(1), Some(true));
        prop_assert_eq!(h.decoder.is_fast(2), Some(true));
    }

    /// (2) Random writer schemas evolved from `transaction.avsc`, random records of each.
    #[test]
    fn fast_equals_generic_on_random_writer_schemas(seed in any::<u64>(), m in 0usize..MANIFESTS) {
        let json = writer_variant(seed);
        let h = Harness::new(&[(ID, &json)], &manifests()[m]);
        let schema = Schema::parse_str(&json).unwrap();
        let plan = match h.plan(ID) {
            // The store refuses it: both paths say so alike.
            None => {
                let payload = framed(ID, &body(&schema, seed));
                prop_assert!(h.check(&payload, None).is_err());
                return Ok(());
            }
            Some(plan) => plan.unwrap_or_else(|| panic!("no fast plan for {json}")),
        };
        for i in 0..12 {
            let _ = h.check(&framed(ID, &body(&schema, seed ^ (i + 1))), Some(&plan));
        }
    }

    /// (3) Valid bodies cut, flipped, extended: same reason both ways.
    #[test]
    fn fast_equals_generic_on_mutated_bodies(seed in any::<u64>(), m in 0usize..MANIFESTS, variant in any::<bool>()) {
        let json = if variant { writer_variant(seed) } else { TRANSACTION_SCHEMA.to_string() };
        let h = Harness::new(&[(ID, &json)], &manifests()[m]);
        let Some(plan) = h.plan(ID) else { return Ok(()) };
        let schema = Schema::parse_str(&json).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 0..12 {
            let mut b = body(&schema, seed.wrapping_mul(31).wrapping_add(i));
            mutate(&mut b, &mut rng);
            let _ = h.check(&framed(ID, &b), plan.as_ref());
        }
        // Every truncation of one valid body.
        let b = body(&schema, seed);
        for cut in 0..b.len() {
            let _ = h.check(&framed(ID, &b[..cut]), plan.as_ref());
        }
    }
}

/// The random inputs reach every outcome, and most random writer schemas are accepted by the
/// store and planned (so the differential tests above are not vacuous).
#[test]
fn the_random_inputs_reach_every_outcome() {
    let mut seen = BTreeMap::<&str, usize>::new();
    let (mut accepted, mut refused) = (0, 0);
    for seed in 0..60u64 {
        let json = writer_variant(seed);
        let h = Harness::new(&[(ID, &json)], &manifests()[seed as usize % MANIFESTS]);
        let Some(plan) = h.plan(ID) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let plan = plan.unwrap_or_else(|| panic!("no fast plan for {json}"));
        let schema = Schema::parse_str(&json).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 0..10 {
            let mut b = body(&schema, seed * 100 + i);
            if i % 3 == 0 {
                mutate(&mut b, &mut rng);
            }
            let outcome = h.check(&framed(ID, &b), Some(&plan));
            *seen.entry(outcome.err().map(|r| r.as_str()).unwrap_or("ok")).or_default() += 1;
        }
    }
    for want in ["ok", "missing_feature", "invalid_feature", "undecodable", "schema_mismatch"] {
        assert!(seen.contains_key(want), "{want} never reached: {seen:?}");
    }
    assert!(accepted > 3 * refused, "{accepted} writer schemas accepted, {refused} refused; {seen:?}");
}

/// (4) Every seed of the committed corpus has the same outcome both ways, and its pinned one.
#[test]
fn corpus_outcomes_are_the_same_both_ways() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/decode");
    let mut schemas = Vec::new();
    for entry in std::fs::read_dir(dir.join("schemas")).unwrap() {
        let path = entry.unwrap().path();
        let id: u32 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        schemas.push((id, std::fs::read_to_string(&path).unwrap()));
    }
    let schemas: Vec<(u32, &str)> = schemas.iter().map(|(id, s)| (*id, s.as_str())).collect();
    let expected: BTreeMap<String, String> = std::fs::read_to_string(dir.join("EXPECTED.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (file, outcome) = l.split_once(char::is_whitespace).unwrap();
            (file.to_string(), outcome.trim().to_string())
        })
        .collect();
    for m in manifests() {
        let h = Harness::new(&schemas, &m);
        let mut checked = 0;
        for (file, want) in &expected {
            let payload = std::fs::read(dir.join(file)).unwrap();
            let outcome = h.check(&payload, None);
            if m.name == shipped_manifest().name {
                let got = outcome.as_ref().err().map(|r| r.as_str()).unwrap_or("ok");
                assert_eq!(got, want, "{file}");
            }
            checked += 1;
        }
        assert!(checked >= 40, "{checked}");
        assert_eq!(h.decoder.is_fast(1), Some(true), "the standard schema takes the fast path");
    }
}

/// The fused reads are planned for every kind they have, with and without a null branch where
/// the reader allows one, in the schemas the differential tests above run (so each kind is compared with the generic
/// path there), and the standard schema with the shipped model reads every field fused.
#[test]
fn the_differential_tests_reach_every_fused_read() {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut writers: Vec<String> = standard_writers().to_vec();
    writers.extend((0..60u64).map(writer_variant));
    for (k, json) in writers.iter().enumerate() {
        let h = Harness::new(&[(ID, json)], &manifests()[k % MANIFESTS]);
        let Some(Some(plan)) = h.plan(ID) else { continue };
        for kind in plan.op_kinds() {
            *seen.entry(kind).or_default() += 1;
        }
    }
    for want in [
        "skip",
        "read",
        "Number",
        "Number?",
        "Boolean",
        "Boolean?",
        "OneHotText",
        "OneHotText?",
        // The reader's `channel` and `event_time` are not nullable, so a writer union with null
        // is no fused read for them (its null does not resolve); the null branch is one code
        // path for every kind, reached above.
        "OneHotEnum",
        "Time",
        "EventIdUuid",
        "IdText",
        "Skip",
        "Skip?",
    ] {
        assert!(seen.contains_key(want), "no plan holds a `{want}` op: {seen:?}");
    }

    let m = shipped_manifest();
    let fx = FeatureExtractor::new(&m, &reader()).unwrap();
    let plan = FastPlan::new(&reader(), &reader(), &m, &fx).unwrap();
    let kinds = plan.op_kinds();
    assert!(!kinds.iter().any(|k| k == "read"), "the standard schema has a field read unfused: {kinds:?}");
    assert_eq!(kinds.len(), 16, "{kinds:?}");
}

#[test]
fn the_fast_plan_covers_the_shipped_model_and_the_standard_schema() {
    let m = shipped_manifest();
    let fx = FeatureExtractor::new(&m, &reader()).unwrap();
    assert!(FastPlan::new(&reader(), &reader(), &m, &fx).is_some());
    assert_eq!(FastPlan::new(&reader(), &reader(), &m, &fx).unwrap().num_columns(), fx.num_columns());
    // An extractor of another manifest: no plan rather than a wrong row.
    let other = FeatureExtractor::new(&full_manifest(false), &reader()).unwrap();
    assert!(FastPlan::new(&reader(), &reader(), &m, &other).is_none());
}

#[test]
fn decode_features_refuses_what_decode_refuses_before_the_body() {
    let h = Harness::new(&[(ID, TRANSACTION_SCHEMA)], &shipped_manifest());
    for (payload, reason) in [
        (vec![], DeadLetterReason::Truncated),
        (vec![1, 0, 0, 0, 1, 2], DeadLetterReason::BadMagic),
        (framed(999, &[0]), DeadLetterReason::UnknownSchema),
        (framed(ID, &vec![0; MAX_MESSAGE_BYTES]), DeadLetterReason::Undecodable),
    ] {
        assert_eq!(h.fast(&payload).unwrap_err(), reason);
        assert_eq!(h.generic(&payload).unwrap_err(), reason);
    }
    assert_eq!(h.decoder.is_fast(999), None, "failed lookups are not planned");
}
