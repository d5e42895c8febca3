//! Live model quality end to end on the real test broker, through the binary: labels published
//! after (and some before) their events are joined to the service's own predictions, and the
//! QualityReports on the monitoring topic add up to what the scored topic and the labels imply,
//! computed here independently of the service's quality module.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;

use streamscore::codec;

use crate::common::{self, Broker, TestRecord};
use crate::service::{self, Binary, Schemas, Topics};

const LOCAL_LABEL_ID: u32 = 7;
const LOCAL_QUALITY_ID: u32 = 6;

/// A Label record (schemas/label.avsc) framed with local schema id 7.
fn label_record(event_id: &str, positive: bool, labelled_at: Option<i64>) -> TestRecord {
    let schema = codec::parse_schema(codec::LABEL_SCHEMA).expect("label schema");
    let at = match labelled_at {
        Some(t) => Value::Union(1, Box::new(Value::TimestampMillis(t))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let value = Value::Record(vec![
        ("event_id".into(), Value::String(event_id.to_string())),
        ("label".into(), Value::Boolean(positive)),
        ("labelled_at".into(), at),
    ]);
    let mut buf = Vec::new();
    codec::encode_value(&mut buf, LOCAL_LABEL_ID, &schema, value).expect("encode label");
    (Some(event_id.as_bytes().to_vec()), buf, Vec::new(), None)
}

/// What the test expects, summed over every joined label.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    labels: i64,
    tp: i64,
    fp: i64,
    fn_: i64,
    tn: i64,
    bins: [i64; 10],
    bin_positives: [i64; 10],
}

fn long(fields: &HashMap<String, Value>, name: &str) -> i64 {
    match fields.get(name) {
        Some(Value::Long(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn double(fields: &HashMap<String, Value>, name: &str) -> f64 {
    match fields.get(name) {
        Some(Value::Double(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn opt_double(fields: &HashMap<String, Value>, name: &str) -> Option<f64> {
    match fields.get(name) {
        Some(Value::Union(_, v)) => match v.as_ref() {
            Value::Double(x) => Some(*x),
            Value::Null => None,
            other => panic!("{name}: {other:?}"),
        },
        other => panic!("{name}: {other:?}"),
    }
}

/// 600 events scored, then labels for them (a fifth contradicting the model, some with upper-case
/// ids, half without `labelled_at`), 20 labels published *before* their events, 50 labels of
/// events this instance never saw (they wait out the grace, then count as unmatched), 10
/// records that are not labels. Expect: 620 matched, 50 unmatched, 10 invalid, 70 that waited;
/// QualityReports (local id 6) whose merged confusion counts and calibration bins equal those
/// computed here from the scored topic; precision/recall gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_labels_join_predictions_and_reports_add_up_to_the_scored_outputs() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let labels_topic = common::random_topic("labels");
    common::create_topic(&bootstrap, &labels_topic, 2).await;
    let port = service::free_port();
    let toml = service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        Some(port),
        &format!(
            "[quality]\nenabled = true\nlabels_topic = \"{labels_topic}\"\nstart_offset = \"earliest\"\ninterval = \"500ms\"\nlabel_grace = \"8s\"\n"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bin = Binary::start(&toml, port, dir.path(), "quality");

    let first = service::synthetic(600, 31, 1);
    common::produce_values(&bootstrap, &topics.input, first.records).await;
    bin.wait_metric("streamscore_events_scored_total", 600.0, Duration::from_secs(90)).await;

    // Labels first, events second: they wait (quality.label_grace, 8 s here).
    let early = service::synthetic(20, 32, 1);
    let early_labels: Vec<TestRecord> =
        early.transactions.iter().map(|tx| label_record(&tx.event_id, true, None)).collect();
    common::produce_values(&bootstrap, &labels_topic, early_labels).await;
    bin.wait_metric("streamscore_labels_waited_total", 20.0, Duration::from_secs(30)).await;
    common::produce_values(&bootstrap, &topics.input, early.records).await;
    bin.wait_metric("streamscore_events_scored_total", 620.0, Duration::from_secs(60)).await;

    // The service's predictions, from its output.
    let scored_schema = service::scored_schema();
    let messages = common::consume_n(&bootstrap, &topics.scored, 620, Duration::from_secs(60)).await;
    assert_eq!(messages.len(), 620);
    let predictions: HashMap<String, (f32, bool, f32)> = messages
        .iter()
        .map(|m| {
            let s = service::decode_framed(m, &scored_schema);
            (s.str("event_id"), (s.float("score"), s.bool("label"), s.float("threshold")))
        })
        .collect();
    assert_eq!(predictions.len(), 620);

    let mut expected = Expected::default();
    let mut count = |score: f32, predicted: bool, truth: bool| {
        expected.labels += 1;
        match (predicted, truth) {
            (true, true) => expected.tp += 1,
            (true, false) => expected.fp += 1,
            (false, true) => expected.fn_ += 1,
            (false, false) => expected.tn += 1,
        }
        let bin = ((f64::from(score).clamp(0.0, 1.0) * 10.0) as usize).min(9);
        expected.bins[bin] += 1;
        expected.bin_positives[bin] += i64::from(truth);
    };
    for tx in &early.transactions {
        let (score, predicted, _) = predictions[&tx.event_id];
        count(score, predicted, true);
    }
    let now = streamscore::sink::now_ms();
    let mut labels = Vec::new();
    for (i, tx) in first.transactions.iter().enumerate() {
        let (score, predicted, _) = predictions[&tx.event_id];
        let truth = if i % 5 == 0 { !predicted } else { predicted };
        count(score, predicted, truth);
        let id = if i % 7 == 0 { tx.event_id.to_ascii_uppercase() } else { tx.event_id.clone() };
        labels.push(label_record(&id, truth, (i % 2 == 0).then_some(now)));
    }
    // Events this instance never scored (another instance's, in a scaled-out group).
    for i in 0..50 {
        labels.push(label_record(&format!("ffffffff-0000-4000-8000-{i:012}"), true, None));
    }
    // Not labels: a Transaction record (id 1 does not resolve to the Label schema) and garbage.
    for (i, record) in service::synthetic(5, 33, 1).records.into_iter().enumerate() {
        labels.push(record);
        labels.push((None, vec![0, 0, 0, 0, LOCAL_LABEL_ID as u8, 0xff, i as u8], Vec::new(), None));
    }
    common::produce_values(&bootstrap, &labels_topic, labels).await;
    bin.wait_metric("streamscore_labels_total{outcome=\"matched\"}", 620.0, Duration::from_secs(60)).await;
    bin.wait_metric("streamscore_labels_total{outcome=\"unmatched\"}", 50.0, Duration::from_secs(30)).await;
    bin.wait_metric("streamscore_labels_total{outcome=\"invalid\"}", 10.0, Duration::from_secs(30)).await;
    // Let a window end after the last join, so its report is published while running.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(bin.metric("streamscore_labels_total{outcome=\"matched\"}"), Some(620.0));
    assert_eq!(bin.metric("streamscore_labels_total{outcome=\"unmatched\"}"), Some(50.0));
    assert_eq!(bin.metric("streamscore_labels_total{outcome=\"invalid\"}"), Some(10.0));
    // The 20 early ones and the 50 of unknown events waited; only the early ones matched.
    assert_eq!(bin.metric("streamscore_labels_waited_total"), Some(70.0));
    let url = format!("http://127.0.0.1:{port}/metrics");
    let page = tokio::task::spawn_blocking(move || common::http("GET", &url, None)).await.expect("metrics").body;
    for gauge in
        ["streamscore_quality_precision", "streamscore_quality_recall", "streamscore_quality_calibration_error"]
    {
        assert!(
            page.lines().any(|l| l.starts_with(gauge) && l.contains("version=\"1\"")),
            "{gauge} for version 1 missing from /metrics"
        );
    }
    let labelled = service::metric_sum(&page, "streamscore_quality_labelled_predictions_total");
    assert_eq!(labelled, 620.0, "labelled predictions counter");

    bin.signal("TERM");
    assert_eq!(bin.wait_exit(Duration::from_secs(30)), Some(0), "{}", bin.log_tail(30));

    // The reports: every one consistent in itself; together equal to the expectation.
    let quality_schema = codec::parse_schema(codec::QUALITY_REPORT_SCHEMA).expect("schema");
    let monitoring =
        common::consume_until_quiet(&bootstrap, &topics.monitoring, Duration::from_secs(2), Duration::from_secs(20))
            .await;
    let mut merged = Expected::default();
    let mut reports = 0;
    for m in &monitoring {
        let payload = rdkafka::Message::payload(m).expect("payload");
        let id = u32::from_be_bytes(payload[1..5].try_into().expect("frame"));
        if id != LOCAL_QUALITY_ID {
            continue;
        }
        reports += 1;
        let r = service::decode_framed(m, &quality_schema).fields;
        assert_eq!(r.get("model_version"), Some(&Value::String("1".into())));
        let (tp, fp, fn_, tn) = (
            long(&r, "true_positives"),
            long(&r, "false_positives"),
            long(&r, "false_negatives"),
            long(&r, "true_negatives"),
        );
        let n = long(&r, "labels");
        assert_eq!(tp + fp + fn_ + tn, n);
        assert_eq!(opt_double(&r, "precision"), (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64));
        assert_eq!(opt_double(&r, "recall"), (tp + fn_ > 0).then(|| tp as f64 / (tp + fn_) as f64));
        let brier = double(&r, "brier_score");
        assert!((brier - double(&r, "brier_sum") / n as f64).abs() < 1e-9);
        assert!(double(&r, "label_delay_max_seconds") >= 0.0);
        merged.labels += n;
        merged.tp += tp;
        merged.fp += fp;
        merged.fn_ += fn_;
        merged.tn += tn;
        let Some(Value::Array(bins)) = r.get("calibration") else { panic!("calibration") };
        assert_eq!(bins.len(), 10);
        for (i, b) in bins.iter().enumerate() {
            let Value::Record(f) = b else { panic!("bin") };
            let f: HashMap<String, Value> = f.iter().cloned().collect();
            merged.bins[i] += long(&f, "count");
            merged.bin_positives[i] += long(&f, "positives");
        }
    }
    assert!(reports >= 1, "no QualityReport on the monitoring topic");
    assert_eq!(merged, expected);
    // A fifth of the labels contradict the model: precision and recall are well below 1, but
    // neither is undefined (both classes are present).
    assert!(expected.fp > 0 && expected.fn_ > 0 && expected.tp > 0, "{expected:?}");
}
