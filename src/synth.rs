//! Synthetic payment transactions: the shared generative process of `docs/model-manifest.md`.
//!
//! The Python training script and this module draw from the same distributions and the same
//! fraud logit, so `streamscore demo` / `streamscore produce` traffic looks like the training
//! data. Sampling is seeded ([`Generator::new`]) and deterministic for a given seed; the
//! lognormal, exponential and Poisson samplers are written out here (Box–Muller, inversion,
//! Knuth) rather than pulled from `rand_distr`.
//!
//! [`encode_transaction`] writes the Avro binary body per `schemas/transaction.avsc` by hand
//! (no schema walk, no allocation beyond the output buffer); [`malformed_payload`] builds the
//! broken Kafka message values the demo and tests feed to the dead-letter path.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Milliseconds in the 7-day window that `event_time` is drawn from.
const WEEK_MS: i64 = 7 * 24 * 3_600_000;

/// Payment channel; the `Channel` enum of the schema, symbols in schema order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Pos,
    Ecommerce,
    Mobile,
    Atm,
    Moto,
}

impl Channel {
    /// All channels in schema (index) order.
    pub const ALL: [Channel; 5] = [Channel::Pos, Channel::Ecommerce, Channel::Mobile, Channel::Atm, Channel::Moto];

    /// The Avro enum symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Pos => "POS",
            Channel::Ecommerce => "ECOMMERCE",
            Channel::Mobile => "MOBILE",
            Channel::Atm => "ATM",
            Channel::Moto => "MOTO",
        }
    }

    /// The Avro enum index (position of the symbol in the schema).
    pub fn index(self) -> u32 {
        self as u32
    }
}

/// One payment event, field for field the `Transaction` record of `schemas/transaction.avsc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// UUID v4, lowercase hyphenated.
    pub event_id: String,
    pub transaction_id: String,
    pub account_id: String,
    pub card_id: Option<String>,
    pub merchant_id: String,
    pub amount: f64,
    pub currency: String,
    pub merchant_category: String,
    pub channel: Channel,
    pub country: String,
    /// `event_time`, UTC milliseconds since the epoch.
    pub event_time_ms: i64,
    pub account_age_days: Option<i32>,
    pub distance_from_home_km: Option<f64>,
    pub txn_count_1h: Option<i32>,
    pub card_present: Option<bool>,
    pub new_device: Option<bool>,
}

const CHANNELS: [(Channel, f64); 5] = [
    (Channel::Pos, 0.45),
    (Channel::Ecommerce, 0.30),
    (Channel::Mobile, 0.15),
    (Channel::Atm, 0.07),
    (Channel::Moto, 0.03),
];
const CURRENCIES: [(&str, f64); 5] = [("EUR", 0.50), ("USD", 0.30), ("GBP", 0.15), ("CHF", 0.03), ("JPY", 0.02)];
const MERCHANT_CATEGORIES: [(&str, f64); 7] =
    [("5411", 0.30), ("5812", 0.20), ("4111", 0.17), ("5999", 0.15), ("5732", 0.10), ("4829", 0.05), ("7995", 0.03)];
const COUNTRIES: [(&str, f64); 7] =
    [("DE", 0.60), ("FR", 0.10), ("US", 0.10), ("NL", 0.08), ("GB", 0.07), ("BR", 0.03), ("NG", 0.02)];

/// Seeded source of synthetic transactions.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: SmallRng,
    now_ms: i64,
}

impl Generator {
    /// A generator whose event times fall in the 7 days before `now_ms`.
    pub fn new(seed: u64, now_ms: i64) -> Self {
        Generator { rng: SmallRng::seed_from_u64(seed), now_ms }
    }

    /// Draws the next transaction from the documented generative process.
    pub fn next_transaction(&mut self) -> Transaction {
        let channel = pick(&mut self.rng, &CHANNELS);
        let amount = (self.lognormal(3.5, 1.0) * 100.0).round() / 100.0;
        let currency = pick(&mut self.rng, &CURRENCIES).to_owned();
        let merchant_category = pick(&mut self.rng, &MERCHANT_CATEGORIES).to_owned();
        let country = pick(&mut self.rng, &COUNTRIES).to_owned();
        let event_time_ms = self.now_ms - WEEK_MS + self.rng.random_range(0..WEEK_MS);

        let account_age_days = (!self.rng.random_bool(0.10)).then(|| {
            let days = self.exponential(900.0).floor();
            // At most about 900 * ln(2^53) ≈ 33,000 days: the cast cannot saturate.
            days as i32
        });
        let distance_from_home_km = (!self.rng.random_bool(0.15)).then(|| self.lognormal(1.5, 1.2));
        let txn_count_1h = (!self.rng.random_bool(0.10)).then(|| self.poisson(1.0) as i32);
        let card_present = (!self.rng.random_bool(0.05)).then(|| {
            let p = if matches!(channel, Channel::Pos | Channel::Atm) { 0.97 } else { 0.02 };
            self.rng.random_bool(p)
        });
        let new_device = (!self.rng.random_bool(0.10)).then(|| self.rng.random_bool(0.08));

        let event_id = self.uuid_v4();
        let transaction_id = format!("tx-{:016x}", self.rng.random::<u64>());
        let account_id = format!("acc-{}", self.rng.random_range(0..100_000u32));
        let card_id = (!self.rng.random_bool(0.2)).then(|| format!("card-{}", self.rng.random_range(0..200_000u32)));
        let merchant_id = format!("m-{}", self.rng.random_range(0..10_000u32));

        Transaction {
            event_id,
            transaction_id,
            account_id,
            card_id,
            merchant_id,
            amount,
            currency,
            merchant_category,
            channel,
            country,
            event_time_ms,
            account_age_days,
            distance_from_home_km,
            txn_count_1h,
            card_present,
            new_device,
        }
    }

    /// `sigmoid(z)` of the documented fraud logit for `tx`.
    pub fn fraud_probability(tx: &Transaction) -> f64 {
        let ind = |b: bool| if b { 1.0 } else { 0.0 };
        let hour = tx.event_time_ms.div_euclid(3_600_000).rem_euclid(24);
        let z = -6.0
            + 1.2 * ((1.0 + tx.amount).ln() - 3.5)
            + 1.8 * ind(matches!(tx.channel, Channel::Ecommerce | Channel::Moto))
            + 2.0 * ind(tx.new_device == Some(true))
            + 1.5 * ind(tx.account_age_days.is_some_and(|d| d < 30))
            + 1.0 * ind(hour < 5)
            + 0.3 * tx.distance_from_home_km.map_or(0.0, |d| (1.0 + d).ln())
            + 1.5 * ind(matches!(tx.merchant_category.as_str(), "4829" | "7995"))
            + 1.2 * ind(matches!(tx.country.as_str(), "NG" | "BR"))
            + 0.4 * tx.txn_count_1h.map_or(0.0, |c| f64::from(c.min(10)));
        1.0 / (1.0 + (-z).exp())
    }

    /// Draws the fraud label of `tx`: Bernoulli([`Generator::fraud_probability`]).
    pub fn is_fraud(&mut self, tx: &Transaction) -> bool {
        self.rng.random::<f64>() < Self::fraud_probability(tx)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    fn open_unit(&mut self) -> f64 {
        1.0 - self.rng.random::<f64>()
    }

    /// Standard normal by Box–Muller (one of the pair; simplicity over speed).
    fn standard_normal(&mut self) -> f64 {
        let u1 = self.open_unit();
        let u2 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.standard_normal()).exp()
    }

    /// Exponential with the given mean, by inversion.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.open_unit().ln()
    }

    /// Poisson by Knuth's multiplication method (fine for small `lambda`).
    fn poisson(&mut self, lambda: f64) -> u32 {
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p = self.open_unit();
        while p > limit {
            k += 1;
            p *= self.open_unit();
        }
        k
    }

    fn uuid_v4(&mut self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes: [u8; 16] = self.rng.random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0x0f)] as char);
        }
        s
    }
}

/// Draws from a categorical table whose weights sum to 1 (the last entry absorbs rounding).
fn pick<T: Copy>(rng: &mut SmallRng, table: &[(T, f64)]) -> T {
    let u = rng.random::<f64>();
    let mut acc = 0.0;
    for &(v, w) in table {
        acc += w;
        if u < acc {
            return v;
        }
    }
    table[table.len() - 1].0
}

/// Appends the Avro binary body of `tx` per `schemas/transaction.avsc` (no Confluent header).
pub fn encode_transaction(tx: &Transaction, out: &mut Vec<u8>) {
    put_str(out, &tx.event_id);
    put_str(out, &tx.transaction_id);
    put_str(out, &tx.account_id);
    put_opt(out, tx.card_id.as_deref(), put_str);
    put_str(out, &tx.merchant_id);
    put_double(out, tx.amount);
    put_str(out, &tx.currency);
    put_str(out, &tx.merchant_category);
    put_long(out, i64::from(tx.channel.index()));
    put_str(out, &tx.country);
    put_long(out, tx.event_time_ms);
    put_opt(out, tx.account_age_days, |o, v| put_long(o, i64::from(v)));
    put_opt(out, tx.distance_from_home_km, put_double);
    put_opt(out, tx.txn_count_1h, |o, v| put_long(o, i64::from(v)));
    put_opt(out, tx.card_present, put_bool);
    put_opt(out, tx.new_device, put_bool);
}

/// Appends the Avro binary body of a `Label` (`schemas/label.avsc`, no Confluent header): the
/// ground truth of one event, for `streamscore produce --labels-topic` and tests.
pub fn encode_label(event_id: &str, positive: bool, labelled_at_ms: Option<i64>, out: &mut Vec<u8>) {
    put_str(out, event_id);
    put_bool(out, positive);
    put_opt(out, labelled_at_ms, put_long);
}

/// Avro `int`/`long`: zigzag, then little-endian base-128 varint.
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn put_double(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// A `["null", T]` union: branch 0 for null, branch 1 then the value.
fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => put_long(out, 0),
        Some(v) => {
            put_long(out, 1);
            put(out, v);
        }
    }
}

/// Kinds of broken Kafka message values, for the demo and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// 1–64 random bytes whose first byte is never the magic byte 0.
    RandomBytes,
    /// First byte 1, then a valid schema id and body.
    BadMagic,
    /// Valid framing and body, schema id `0x7fff_fff0` (not registered).
    UnknownSchemaId,
    /// Valid header, body cut in half (every field is required, so decoding runs out of input).
    TruncatedBody,
    /// Well framed and decodable, with `amount = NaN`: rejected by the feature stage as
    /// `invalid_feature`.
    NanAmount,
}

impl Malformed {
    /// Every kind.
    pub const ALL: [Malformed; 5] = [
        Malformed::RandomBytes,
        Malformed::BadMagic,
        Malformed::UnknownSchemaId,
        Malformed::TruncatedBody,
        Malformed::NanAmount,
    ];
}

/// Schema id used by [`Malformed::UnknownSchemaId`].
pub const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

/// A full Kafka message value of the given kind. The Confluent framing is magic byte 0, then
/// the schema id as 4 bytes big-endian, then the Avro body. Deterministic for a given seed.
pub fn malformed_payload(kind: Malformed, valid_schema_id: u32, rng_seed: u64) -> Vec<u8> {
    // A fixed clock: the payload must not depend on when it is built.
    const NOW_MS: i64 = 1_700_000_000_000;
    let mut generator = Generator::new(rng_seed, NOW_MS);
    let mut tx = generator.next_transaction();
    let frame = |magic: u8, id: u32, tx: &Transaction| {
        let mut out = Vec::with_capacity(128);
        out.push(magic);
        out.extend_from_slice(&id.to_be_bytes());
        encode_transaction(tx, &mut out);
        out
    };
    match kind {
        Malformed::RandomBytes => {
            let len = generator.rng.random_range(1..=64usize);
            let mut out = vec![0u8; len];
            generator.rng.fill(&mut out[..]);
            out[0] = out[0].max(1);
            out
        }
        Malformed::BadMagic => frame(1, valid_schema_id, &tx),
        Malformed::UnknownSchemaId => frame(0, UNKNOWN_SCHEMA_ID, &tx),
        Malformed::TruncatedBody => {
            let mut out = frame(0, valid_schema_id, &tx);
            let body_len = out.len() - 5;
            out.truncate(5 + body_len / 2);
            out
        }
        Malformed::NanAmount => {
            tx.amount = f64::NAN;
            frame(0, valid_schema_id, &tx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use apache_avro::{Schema, Uuid};

    const NOW: i64 = 1_750_000_000_000;

    fn schema() -> Schema {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/transaction.avsc")).unwrap();
        Schema::parse_str(&text).unwrap()
    }

    fn decode(schema: &Schema, body: &[u8]) -> apache_avro::AvroResult<(Value, usize)> {
        let mut rest = body;
        let v = GenericDatumReader::builder(schema).build()?.read_value(&mut rest)?;
        Ok((v, rest.len()))
    }

    fn opt(v: Option<Value>) -> Value {
        match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(v) => Value::Union(1, Box::new(v)),
        }
    }

    fn expected(tx: &Transaction) -> Vec<(String, Value)> {
        let s = |v: &str| Value::String(v.to_owned());
        vec![
            ("event_id".into(), Value::Uuid(Uuid::parse_str(&tx.event_id).unwrap())),
            ("transaction_id".into(), s(&tx.transaction_id)),
            ("account_id".into(), s(&tx.account_id)),
            ("card_id".into(), opt(tx.card_id.as_deref().map(s))),
            ("merchant_id".into(), s(&tx.merchant_id)),
            ("amount".into(), Value::Double(tx.amount)),
            ("currency".into(), s(&tx.currency)),
            ("merchant_category".into(), s(&tx.merchant_category)),
            ("channel".into(), Value::Enum(tx.channel.index(), tx.channel.as_str().into())),
            ("country".into(), s(&tx.country)),
            ("event_time".into(), Value::TimestampMillis(tx.event_time_ms)),
            ("account_age_days".into(), opt(tx.account_age_days.map(Value::Int))),
            ("distance_from_home_km".into(), opt(tx.distance_from_home_km.map(Value::Double))),
            ("txn_count_1h".into(), opt(tx.txn_count_1h.map(Value::Int))),
            ("card_present".into(), opt(tx.card_present.map(Value::Boolean))),
            ("new_device".into(), opt(tx.new_device.map(Value::Boolean))),
        ]
    }

    #[test]
    fn encode_transaction_decodes_with_apache_avro() {
        let schema = schema();
        let mut generator = Generator::new(7, NOW);
        let mut out = Vec::new();
        // Enough draws to hit null and non-null branches of every optional field.
        for _ in 0..500 {
            let tx = generator.next_transaction();
            out.clear();
            encode_transaction(&tx, &mut out);
            let (value, left) = decode(&schema, &out).unwrap();
            assert_eq!(left, 0, "trailing bytes");
            assert_eq!(value, Value::Record(expected(&tx)), "{tx:?}");
        }
        // Edge values of the hand-written varint and union encoders.
        let mut tx = generator.next_transaction();
        tx.event_time_ms = i64::MIN;
        tx.account_age_days = Some(i32::MAX);
        tx.txn_count_1h = Some(i32::MIN);
        tx.card_id = Some(String::new());
        tx.card_present = Some(false);
        tx.new_device = None;
        tx.channel = Channel::Moto;
        out.clear();
        encode_transaction(&tx, &mut out);
        assert_eq!(decode(&schema, &out).unwrap().0, Value::Record(expected(&tx)));
    }

    #[test]
    fn channel_symbols_match_schema_order() {
        let Schema::Record(rec) = schema() else { panic!("not a record") };
        let field = rec.fields.iter().find(|f| f.name == "channel").unwrap();
        let Schema::Enum(e) = &field.schema else { panic!("channel is not an enum") };
        let ours: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(e.symbols, ours);
        for (i, c) in Channel::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
    }

    #[test]
    fn distributions_match_the_documented_process() {
        const N: usize = 20_000;
        let mut generator = Generator::new(42, NOW);
        let mut channels = [0usize; 5];
        let (mut null_age, mut null_dist, mut null_cnt, mut null_card_present, mut null_dev) = (0, 0, 0, 0, 0);
        let (mut null_card, mut new_dev, mut frauds) = (0, 0, 0);
        let (mut de, mut eur, mut mcc_5411) = (0, 0, 0);
        let (mut sum_ln_amount, mut sum_age, mut n_age, mut sum_cnt, mut n_cnt) = (0.0, 0.0, 0, 0.0, 0);
        let (mut pos_atm, mut pos_atm_present) = (0, 0);
        let mut hours = [0usize; 24];
        for _ in 0..N {
            let tx = generator.next_transaction();
            channels[tx.channel.index() as usize] += 1;
            assert!(tx.event_time_ms >= NOW - WEEK_MS && tx.event_time_ms < NOW);
            hours[tx.event_time_ms.div_euclid(3_600_000).rem_euclid(24) as usize] += 1;
            assert!(tx.amount >= 0.0 && (tx.amount * 100.0 - (tx.amount * 100.0).round()).abs() < 1e-6);
            sum_ln_amount += tx.amount.max(0.01).ln();
            match tx.account_age_days {
                None => null_age += 1,
                Some(d) => {
                    assert!(d >= 0);
                    sum_age += f64::from(d);
                    n_age += 1;
                }
            }
            match tx.distance_from_home_km {
                None => null_dist += 1,
                Some(d) => assert!(d > 0.0),
            }
            match tx.txn_count_1h {
                None => null_cnt += 1,
                Some(c) => {
                    sum_cnt += f64::from(c);
                    n_cnt += 1;
                }
            }
            match tx.card_present {
                None => null_card_present += 1,
                Some(p) if matches!(tx.channel, Channel::Pos | Channel::Atm) => {
                    pos_atm += 1;
                    pos_atm_present += usize::from(p);
                }
                Some(_) => {}
            }
            match tx.new_device {
                None => null_dev += 1,
                Some(d) => new_dev += usize::from(d),
            }
            null_card += usize::from(tx.card_id.is_none());
            de += usize::from(tx.country == "DE");
            eur += usize::from(tx.currency == "EUR");
            mcc_5411 += usize::from(tx.merchant_category == "5411");
            frauds += usize::from(generator.is_fraud(&tx));
            assert_eq!(tx.event_id.len(), 36);
            assert_eq!(&tx.event_id[14..15], "4");
            assert!(tx.transaction_id.starts_with("tx-") && tx.transaction_id.len() == 19);
        }
        let share = |c: usize| c as f64 / N as f64;
        let close = |what: &str, got: f64, want: f64, tol: f64| {
            assert!((got - want).abs() <= tol, "{what}: {got} vs {want} ± {tol}");
        };
        for ((_, want), &got) in CHANNELS.iter().zip(&channels) {
            close("channel share", share(got), *want, 0.015);
        }
        close("account_age_days null rate", share(null_age), 0.10, 0.012);
        close("distance null rate", share(null_dist), 0.15, 0.015);
        close("txn_count_1h null rate", share(null_cnt), 0.10, 0.012);
        close("card_present null rate", share(null_card_present), 0.05, 0.01);
        close("new_device null rate", share(null_dev), 0.10, 0.012);
        close("card_id null rate", share(null_card), 0.20, 0.015);
        close("new_device true rate", new_dev as f64 / (N - null_dev) as f64, 0.08, 0.012);
        close("POS/ATM card present", pos_atm_present as f64 / pos_atm as f64, 0.97, 0.01);
        close("DE share", share(de), 0.60, 0.015);
        close("EUR share", share(eur), 0.50, 0.015);
        close("MCC 5411 share", share(mcc_5411), 0.30, 0.015);
        close("mean ln(amount)", sum_ln_amount / N as f64, 3.5, 0.05);
        // floor() lowers the exponential mean by about 0.5.
        close("mean account age", sum_age / n_age as f64, 899.5, 30.0);
        close("mean txn_count_1h", sum_cnt / n_cnt as f64, 1.0, 0.04);
        for (h, &c) in hours.iter().enumerate() {
            close(&format!("hour {h} share"), share(c), 1.0 / 24.0, 0.01);
        }
        let fraud_rate = share(frauds);
        assert!((0.005..=0.15).contains(&fraud_rate), "fraud base rate {fraud_rate}");
    }

    #[test]
    fn fraud_probability_follows_the_logit() {
        let mut tx = Generator::new(1, NOW).next_transaction();
        tx.amount = (3.5f64).exp() - 1.0; // ln(1 + amount) = 3.5
        tx.channel = Channel::Pos;
        tx.new_device = Some(false);
        tx.account_age_days = None;
        tx.event_time_ms = 12 * 3_600_000; // noon
        tx.distance_from_home_km = None;
        tx.merchant_category = "5411".into();
        tx.country = "DE".into();
        tx.txn_count_1h = None;
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        assert!((Generator::fraud_probability(&tx) - sigmoid(-6.0)).abs() < 1e-12);

        tx.channel = Channel::Moto;
        tx.new_device = Some(true);
        tx.account_age_days = Some(29);
        tx.event_time_ms = -3_600_000; // 23:00 the day before the epoch
        tx.distance_from_home_km = Some(std::f64::consts::E - 1.0);
        tx.merchant_category = "7995".into();
        tx.country = "NG".into();
        tx.txn_count_1h = Some(25);
        let z = -6.0 + 1.8 + 2.0 + 1.5 + 0.0 + 0.3 + 1.5 + 1.2 + 0.4 * 10.0;
        assert!((Generator::fraud_probability(&tx) - sigmoid(z)).abs() < 1e-12);
        tx.event_time_ms = 4 * 3_600_000 + 59 * 60_000; // 04:59
        assert!((Generator::fraud_probability(&tx) - sigmoid(z + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn generator_is_deterministic_for_a_seed() {
        let mut a = Generator::new(99, NOW);
        let mut b = Generator::new(99, NOW);
        let mut c = Generator::new(100, NOW);
        let mut differs = false;
        for _ in 0..200 {
            let (ta, tb, tc) = (a.next_transaction(), b.next_transaction(), c.next_transaction());
            assert_eq!(ta, tb);
            assert_eq!(a.is_fraud(&ta), b.is_fraud(&tb));
            differs |= ta != tc;
            c.is_fraud(&tc);
        }
        assert!(differs, "different seeds gave the same stream");
        for kind in Malformed::ALL {
            assert_eq!(malformed_payload(kind, 3, 5), malformed_payload(kind, 3, 5));
        }
    }

    #[test]
    fn malformed_payloads_break_as_documented() {
        let schema = schema();
        for seed in 0..50 {
            let random = malformed_payload(Malformed::RandomBytes, 3, seed);
            assert!((1..=64).contains(&random.len()) && random[0] != 0);

            let bad_magic = malformed_payload(Malformed::BadMagic, 3, seed);
            assert_eq!(&bad_magic[..5], &[1, 0, 0, 0, 3]);
            assert!(decode(&schema, &bad_magic[5..]).is_ok());

            let unknown = malformed_payload(Malformed::UnknownSchemaId, 3, seed);
            assert_eq!(&unknown[..5], &[0, 0x7f, 0xff, 0xff, 0xf0]);
            assert!(decode(&schema, &unknown[5..]).is_ok());

            let truncated = malformed_payload(Malformed::TruncatedBody, 3, seed);
            assert_eq!(&truncated[..5], &[0, 0, 0, 0, 3]);
            assert!(truncated.len() > 5);
            assert!(decode(&schema, &truncated[5..]).is_err());

            let nan = malformed_payload(Malformed::NanAmount, 3, seed);
            assert_eq!(&nan[..5], &[0, 0, 0, 0, 3]);
            let (value, left) = decode(&schema, &nan[5..]).unwrap();
            assert_eq!(left, 0);
            let Value::Record(fields) = value else { panic!("not a record") };
            let amount = fields.iter().find(|(n, _)| n == "amount").unwrap();
            assert!(matches!(amount.1, Value::Double(a) if a.is_nan()));
        }
    }

    #[test]
    fn encoded_label_decodes_with_the_label_schema() {
        let schema = crate::codec::parse_schema(crate::codec::LABEL_SCHEMA).unwrap();
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema).build().unwrap();
        for (positive, at) in [(true, Some(1_767_225_600_123)), (false, None)] {
            let mut buf = Vec::new();
            encode_label("0b9f3c1e-2d4a-4f6b-8c7d-9e0f1a2b3c4d", positive, at, &mut buf);
            let mut body = &buf[..];
            let value = reader.read_value(&mut body).unwrap();
            assert!(body.is_empty());
            let label = crate::quality::Label::from_avro(&value, 42).unwrap();
            assert_eq!(label.event_id, "0b9f3c1e-2d4a-4f6b-8c7d-9e0f1a2b3c4d");
            assert_eq!((label.positive, label.labelled_at_ms), (positive, at.unwrap_or(42)));
        }
    }
}
