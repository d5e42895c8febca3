use std::sync::Arc;
use std::time::Instant;

use apache_avro::types::Value;

use super::*;
use crate::batcher::{Batch, Entry, EntryKind};
use crate::features::{IdStr, RowIdentityRef};
use crate::model::ModelInfo;

fn info(version: &str, threshold: f32) -> Arc<ModelInfo> {
    Arc::new(ModelInfo {
        name: "fraud_mlp".into(),
        version: version.into(),
        version_id: 1000 + version.len() as u64 * 7 + version.bytes().map(u64::from).sum::<u64>(),
        threshold,
        num_columns: 2,
        execution_provider: "cpu",
    })
}

fn limits() -> JoinLimits {
    JoinLimits { prediction_ttl_ms: 60_000, max_predictions: 100_000, label_grace_ms: 10_000, max_waiting_labels: 1000 }
}

fn event_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// A scored batch: one row per (event id, score, version index), champion `versions[0]`.
fn scored(
    rows: &[(String, f32, u8)],
    versions: &[Arc<ModelInfo>],
    shadow: Option<(Arc<ModelInfo>, Vec<f32>)>,
) -> Batch {
    let mut batch = Batch::new(2, rows.len());
    for (i, (id, score, v)) in rows.iter().enumerate() {
        let (row, _, _, ids) = batch.push_row_with_ids();
        let identity = ids.store(RowIdentityRef { event_id: IdStr::Text(id), transaction_id: "t", event_time_ms: 0 });
        let topic = batch.topic_id(&Arc::from("in"));
        batch.push_entry(
            Entry {
                topic,
                partition: 0,
                offset: i as i64,
                epoch: 0,
                key: None,
                headers: None,
                timestamp_ms: None,
                kind: EntryKind::Row { row, identity },
            },
            Instant::now(),
        );
        batch.scores.push(*score);
        batch.row_version.push(*v);
    }
    batch.versions = versions.to_vec();
    batch.model = versions.first().cloned();
    if let Some((s, scores)) = shadow {
        batch.shadow = Some(s);
        batch.shadow_scores = scores;
    }
    batch
}

fn label(id: &str, positive: bool, at: i64) -> Label {
    Label { event_id: id.to_string(), positive, labelled_at_ms: at }
}

fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
}

#[test]
fn counts_match_hand_computed_metrics() {
    // threshold 0.5: (0.95,+) tp, (0.85,-) fp, (0.35,+) fn, (0.15,-) tn, (0.65,+) tp
    let mut c = QualityCounts::default();
    for (s, y) in [(0.95f32, true), (0.85, false), (0.35, true), (0.15, false), (0.65, true)] {
        c.add(s, 0.5, y, 2.0);
    }
    assert_eq!(
        (
            c.confusion.true_positives,
            c.confusion.false_positives,
            c.confusion.false_negatives,
            c.confusion.true_negatives
        ),
        (2, 1, 1, 1)
    );
    close(c.precision().unwrap(), 2.0 / 3.0);
    close(c.recall().unwrap(), 2.0 / 3.0);
    close(c.f1().unwrap(), 2.0 / 3.0);
    close(c.positive_rate(), 3.0 / 5.0);
    let s = [0.95f32, 0.85, 0.35, 0.15, 0.65].map(f64::from);
    let y = [1.0, 0.0, 1.0, 0.0, 1.0];
    let brier: f64 = s.iter().zip(y).map(|(p, y)| (p - y) * (p - y)).sum::<f64>() / 5.0;
    close(c.brier_score(), brier);
    let ll: f64 = s.iter().zip(y).map(|(p, y)| -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())).sum::<f64>() / 5.0;
    assert!((c.log_loss() - ll).abs() < 1e-6, "{} vs {ll}", c.log_loss());
    close(c.mean_score(), s.iter().sum::<f64>() / 5.0);
    close(c.label_delay_mean_seconds(), 2.0);
    // Bins: 0.15→1, 0.35→3, 0.65→6, 0.85→8, 0.95→9; each holds one row, so
    // ECE = Σ 1/5 · |p − y| = mean |p − y|.
    let ece: f64 = s.iter().zip(y).map(|(p, y)| (p - y).abs()).sum::<f64>() / 5.0;
    close(c.expected_calibration_error(), ece);
    assert_eq!(c.bins.iter().map(|b| b.count).sum::<u64>(), 5);
    assert_eq!(c.bins[9].positives, 1);
}

#[test]
fn undefined_ratios_are_none_and_empty_counts_are_zero() {
    let empty = QualityCounts::default();
    assert_eq!((empty.precision(), empty.recall(), empty.f1()), (None, None, None));
    assert_eq!((empty.brier_score(), empty.expected_calibration_error()), (0.0, 0.0));
    // Only negatives, all predicted negative: precision and recall undefined.
    let mut c = QualityCounts::default();
    c.add(0.1, 0.5, false, 0.0);
    assert_eq!((c.precision(), c.recall()), (None, None));
    // Predicted positives, all wrong: precision 0, recall undefined.
    c.add(0.9, 0.5, false, 0.0);
    assert_eq!((c.precision(), c.recall(), c.f1()), (Some(0.0), None, None));
    // Log loss stays finite at scores of exactly 0 and 1.
    let mut extreme = QualityCounts::default();
    extreme.add(1.0, 0.5, false, 0.0);
    extreme.add(0.0, 0.5, true, 0.0);
    assert!(extreme.log_loss().is_finite() && extreme.log_loss() > 10.0);
}

#[test]
fn calibration_bins_cover_zero_to_one() {
    assert_eq!(calibration_bin(0.0), 0);
    assert_eq!(calibration_bin(0.0999), 0);
    assert_eq!(calibration_bin(0.1), 1);
    assert_eq!(calibration_bin(0.95), 9);
    assert_eq!(calibration_bin(1.0), 9);
    assert_eq!(calibration_bin(-0.5), 0);
    assert_eq!(calibration_bin(7.0), 9);
    assert_eq!(calibration_bin(f64::NAN), 0);
}

#[test]
fn merged_counts_equal_counts_of_the_union() {
    let pairs: Vec<(f32, bool)> = (0..200).map(|i| ((i * 37 % 101) as f32 / 100.0, i % 3 == 0)).collect();
    let mut all = QualityCounts::default();
    let (mut a, mut b) = (QualityCounts::default(), QualityCounts::default());
    for (i, &(s, y)) in pairs.iter().enumerate() {
        all.add(s, 0.4, y, i as f64);
        if i % 2 == 0 { &mut a } else { &mut b }.add(s, 0.4, y, i as f64);
    }
    a.merge(&b);
    assert_eq!(a.labels, all.labels);
    assert_eq!(a.bins.map(|x| (x.count, x.positives)), all.bins.map(|x| (x.count, x.positives)));
    assert_eq!(a.precision(), all.precision());
    assert_eq!(a.recall(), all.recall());
    assert!((a.brier_score() - all.brier_score()).abs() < 1e-12);
    assert!((a.expected_calibration_error() - all.expected_calibration_error()).abs() < 1e-12);
    assert_eq!(a.delay_max_seconds, 199.0);
}

#[test]
fn report_record_validates_against_the_schema_and_round_trips() {
    let schema = crate::codec::parse_schema(crate::codec::QUALITY_REPORT_SCHEMA).unwrap();
    let mut counts = QualityCounts::default();
    for (s, y) in [(0.9f32, true), (0.2, false), (0.7, false)] {
        counts.add(s, 0.5, y, 30.0);
    }
    let w = QualityWindow {
        model_name: "fraud_mlp".into(),
        model_version: "2".into(),
        threshold: 0.5,
        window_start_ms: 1_000,
        window_end_ms: 61_000,
        counts,
    };
    let value = w.to_avro("node-a");
    assert!(value.validate(&schema), "record does not validate");
    let mut buf = Vec::new();
    crate::codec::encode_value(&mut buf, 6, &schema, value).unwrap();
    assert_eq!(&buf[..5], &[0, 0, 0, 0, 6]);
    let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut &buf[5..])
        .unwrap();
    let Value::Record(fields) = back else { panic!("not a record") };
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("labels"), Value::Long(3));
    assert_eq!(get("true_positives"), Value::Long(1));
    assert_eq!(get("false_positives"), Value::Long(1));
    assert_eq!(get("precision"), Value::Union(1, Box::new(Value::Double(0.5))));
    assert_eq!(get("recall"), Value::Union(1, Box::new(Value::Double(1.0))));
    assert_eq!(get("instance_id"), Value::String("node-a".into()));
    let Value::Array(bins) = get("calibration") else { panic!("bins") };
    assert_eq!(bins.len(), CALIBRATION_BINS);
    // A window without positive predictions writes null precision.
    let mut none = w.clone();
    none.counts = QualityCounts::default();
    none.counts.add(0.1, 0.5, true, 0.0);
    let Value::Record(f) = none.to_avro("x") else { panic!() };
    let precision = f.iter().find(|(k, _)| k == "precision").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(precision, Value::Union(0, Box::new(Value::Null)));
    assert!(none.to_avro("x").validate(&schema));
}

#[test]
fn labels_decode_from_the_schema_with_kafka_time_as_fallback() {
    let uuid = "8C1C9B4E-4C6B-4E55-9D3A-3B6A1C1E2F3A";
    let rec = |labelled: Value| {
        Value::Record(vec![
            ("event_id".into(), Value::String(uuid.into())),
            ("label".into(), Value::Boolean(true)),
            ("labelled_at".into(), labelled),
        ])
    };
    let l = Label::from_avro(&rec(Value::Union(0, Box::new(Value::Null))), 777).unwrap();
    assert_eq!(l, label(&uuid.to_ascii_lowercase(), true, 777));
    let l = Label::from_avro(&rec(Value::Union(1, Box::new(Value::TimestampMillis(5)))), 777).unwrap();
    assert_eq!(l.labelled_at_ms, 5);
    let u = apache_avro::Uuid::parse_str(uuid).unwrap();
    let with_uuid = Value::Record(vec![("event_id".into(), Value::Uuid(u)), ("label".into(), Value::Boolean(false))]);
    let l = Label::from_avro(&with_uuid, 9).unwrap();
    assert_eq!((l.event_id.as_str(), l.positive, l.labelled_at_ms), (uuid.to_ascii_lowercase().as_str(), false, 9));
    let missing = Value::Record(vec![("event_id".into(), Value::String(uuid.into()))]);
    assert_eq!(Label::from_avro(&missing, 0), Err(LabelError::MissingField("label")));
    let wrong = Value::Record(vec![("event_id".into(), Value::String(uuid.into())), ("label".into(), Value::Int(1))]);
    assert!(matches!(Label::from_avro(&wrong, 0), Err(LabelError::WrongType { field: "label", .. })));
    assert_eq!(Label::from_avro(&Value::Null, 0), Err(LabelError::NotARecord));
}

#[test]
fn labels_join_their_own_predictions_per_version_once() {
    let v1 = info("1", 0.5);
    let mut t = QualityTracker::new(limits());
    let rows: Vec<_> = (0..4).map(|i| (event_id(i), [0.9, 0.2, 0.7, 0.1][i], 0u8)).collect();
    t.observe_batch(&scored(&rows, std::slice::from_ref(&v1), None), 1_000);
    assert_eq!(t.pending_predictions(), 4);
    // Upper-case text of the same UUID joins too.
    assert_eq!(t.join(&label(&event_id(0).to_ascii_uppercase(), true, 61_000), 2_000), JoinOutcome::Matched);
    assert_eq!(t.join(&label(&event_id(1), true, 31_000), 2_000), JoinOutcome::Matched);
    assert_eq!(t.join(&label(&event_id(2), false, 31_000), 2_000), JoinOutcome::Matched);
    // Second label for the same event: nothing left to join.
    let mut no_wait = limits();
    no_wait.label_grace_ms = 0;
    let mut strict = QualityTracker::new(no_wait);
    strict.observe_batch(&scored(&rows[..1], std::slice::from_ref(&v1), None), 1_000);
    assert_eq!(strict.join(&label(&event_id(0), true, 0), 1_000), JoinOutcome::Matched);
    assert_eq!(strict.join(&label(&event_id(0), true, 0), 1_000), JoinOutcome::Unmatched);
    // An event this instance never scored (another instance's) does not match.
    assert_eq!(strict.join(&label(&event_id(99), true, 0), 1_000), JoinOutcome::Unmatched);

    let windows = t.take_windows(0, 3_000);
    assert_eq!(windows.len(), 1);
    let c = &windows[0].counts;
    assert_eq!(
        (
            c.labels,
            c.confusion.true_positives,
            c.confusion.false_negatives,
            c.confusion.false_positives,
            c.confusion.true_negatives
        ),
        (3, 1, 1, 1, 0)
    );
    // Delay: labelled_at − scored_at, (60 + 30 + 30) / 3 seconds.
    close(c.label_delay_mean_seconds(), 40.0);
    close(c.delay_max_seconds, 60.0);
    assert_eq!(t.pending_predictions(), 1);
    // The window restarts.
    assert!(t.take_windows(3_000, 4_000).is_empty());
    let stats = t.take_stats(4_000);
    assert_eq!((stats.predictions, stats.matched, stats.unmatched), (4, 3, 0));
    let s = strict.take_stats(1_000);
    assert_eq!((s.matched, s.unmatched), (1, 2));
}

#[test]
fn canary_rows_and_shadow_scores_count_for_their_own_versions() {
    let (v1, v2, v3) = (info("1", 0.5), info("2", 0.8), info("3", 0.3));
    let mut t = QualityTracker::new(limits());
    // Rows 0 and 2 scored by v1 (champion), 1 and 3 by the v2 canary; v3 shadows every row.
    let rows: Vec<_> = (0..4).map(|i| (event_id(i), [0.9, 0.7, 0.2, 0.85][i], (i % 2) as u8)).collect();
    let shadow = (v3.clone(), vec![0.4, 0.1, 0.35, 0.9]);
    t.observe_batch(&scored(&rows, &[v1.clone(), v2.clone()], Some(shadow)), 1_000);
    for i in 0..4 {
        assert_eq!(t.join(&label(&event_id(i), true, 2_000), 1_500), JoinOutcome::Matched);
    }
    let mut windows = t.take_windows(0, 2_000);
    windows.sort_by(|a, b| a.model_version.cmp(&b.model_version));
    let by: Vec<_> = windows
        .iter()
        .map(|w| {
            (
                w.model_version.as_str(),
                w.counts.labels,
                w.counts.confusion.true_positives,
                w.counts.confusion.false_negatives,
            )
        })
        .collect();
    // v1: 0.9 tp, 0.2 fn; v2 (threshold 0.8): 0.7 fn, 0.85 tp; v3 (0.3): 0.4 tp, 0.1 fn, 0.35 tp, 0.9 tp.
    assert_eq!(by, vec![("1", 2, 1, 1), ("2", 2, 1, 1), ("3", 4, 3, 1)]);
    assert_eq!(windows[1].threshold, 0.8);
}

#[test]
fn predictions_expire_after_the_ttl_and_the_store_stays_bounded() {
    let v1 = info("1", 0.5);
    let mut l = limits();
    l.label_grace_ms = 0;
    let mut t = QualityTracker::new(l);
    t.observe_batch(&scored(&[(event_id(1), 0.9, 0)], std::slice::from_ref(&v1), None), 0);
    // Kept at least the TTL (60 s)...
    assert_eq!(t.join(&label(&event_id(1), true, 0), 59_000), JoinOutcome::Matched);
    t.observe_batch(&scored(&[(event_id(2), 0.9, 0)], std::slice::from_ref(&v1), None), 0);
    // ...and gone after TTL + one slice (60 s + 7.5 s).
    assert_eq!(t.join(&label(&event_id(2), true, 0), 68_000), JoinOutcome::Unmatched);
    assert_eq!(t.pending_predictions(), 0);
    let s = t.take_stats(68_000);
    assert_eq!((s.predictions_expired, s.matched, s.unmatched), (1, 1, 1));

    // Capacity: 1000 predictions at most; 5000 inserted over time keep the newest.
    let mut l = limits();
    l.max_predictions = 1000;
    l.label_grace_ms = 0;
    let mut t = QualityTracker::new(l);
    for chunk in 0..50 {
        let rows: Vec<_> = (0..100).map(|i| (event_id(chunk * 100 + i), 0.9, 0u8)).collect();
        // One batch per simulated second, so the slices (7.5 s each) fill and rotate.
        t.observe_batch(&scored(&rows, std::slice::from_ref(&v1), None), chunk as i64 * 1_000);
        assert!(t.pending_predictions() <= 1000, "{} held", t.pending_predictions());
    }
    assert_eq!(t.join(&label(&event_id(4999), true, 0), 50_000), JoinOutcome::Matched);
    assert_eq!(t.join(&label(&event_id(0), true, 0), 50_000), JoinOutcome::Unmatched);
    let s = t.take_stats(50_000);
    assert_eq!(s.predictions, 5000);
    assert!(s.predictions_evicted >= 4000, "{s:?}");
}

#[test]
fn early_labels_wait_for_their_prediction_within_the_grace() {
    let v1 = info("1", 0.5);
    let mut t = QualityTracker::new(limits()); // grace 10 s
    assert_eq!(t.join(&label(&event_id(1), true, 500), 1_000), JoinOutcome::Waiting);
    assert_eq!(t.join(&label(&event_id(2), false, 500), 1_000), JoinOutcome::Waiting);
    assert_eq!(t.waiting_labels(), 2);
    // Event 1 is scored 5 s later: joins at once, and is not kept as a pending prediction.
    t.observe_batch(&scored(&[(event_id(1), 0.8, 0)], std::slice::from_ref(&v1), None), 6_000);
    assert_eq!(t.pending_predictions(), 0);
    let w = t.take_windows(0, 7_000);
    assert_eq!((w.len(), w[0].counts.labels, w[0].counts.confusion.true_positives), (1, 1, 1));
    // Event 2's label outlives its grace (10 s + a slice): unmatched when the stats are taken.
    let s = t.take_stats(30_000);
    assert_eq!((s.matched, s.matched_after_waiting, s.waited, s.unmatched), (1, 1, 2, 1));
    assert_eq!(t.waiting_labels(), 0);
    // The waiting room is bounded too.
    let mut l = limits();
    l.max_waiting_labels = 10;
    let mut t = QualityTracker::new(l);
    for i in 0..100 {
        t.join(&label(&event_id(i), true, 0), 0);
    }
    assert!(t.waiting_labels() <= 10, "{}", t.waiting_labels());
}
