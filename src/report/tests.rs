//! Unit tests of the report: decoding, merging (hand-computed values) and the page.

use std::collections::BTreeMap;

use super::aggregate::{aggregate, merge_drift, merge_quality, Aggregate};
use super::html::{render, PageInfo};
use super::records::{
    decode_all, local_ids, writer_from_text, CalibrationBin, DriftAlert, DriftReport, FeatureStats, QualityReport,
    RawRecord, RecordKind, Records, ShadowScore, WriterLookup,
};
use crate::codec;

fn feature(name: &str, counts: [i64; 2], mean: f64, std: f64, psi: f64) -> FeatureStats {
    FeatureStats {
        name: name.into(),
        count: counts.iter().sum(),
        missing: 1,
        mean,
        std,
        min: mean - 1.0,
        max: mean + 1.0,
        bin_edges: vec![1.0],
        bin_counts: counts.to_vec(),
        psi,
        js: 0.0,
        test: "ks".into(),
        test_statistic: 0.0,
        p_value: 1.0,
        reference_counts: vec![50, 50],
    }
}

fn drift(instance: &str, start: i64, end: i64, f: FeatureStats) -> DriftReport {
    DriftReport {
        model_name: "fraud".into(),
        model_version: "1".into(),
        instance_id: instance.into(),
        window_start: start,
        window_end: end,
        rows: f.count,
        score: FeatureStats { name: "score".into(), ..f.clone() },
        features: vec![f],
    }
}

#[allow(clippy::too_many_arguments)]
fn quality(
    version: &str,
    instance: &str,
    end: i64,
    [tp, fp, fn_, tn]: [i64; 4],
    brier_sum: f64,
    log_loss_sum: f64,
    bins: [(i64, f64, i64); 2],
) -> QualityReport {
    let labels = tp + fp + fn_ + tn;
    let score_sum: f64 = bins.iter().map(|b| b.1).sum();
    QualityReport {
        model_name: "fraud".into(),
        model_version: version.into(),
        instance_id: instance.into(),
        window_start: end - 1000,
        window_end: end,
        threshold: 0.5,
        labels,
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
        true_negatives: tn,
        // Deliberately wrong: the merge must recompute, never reuse or average these.
        precision: Some(0.123),
        recall: None,
        f1: None,
        positive_rate: 0.0,
        mean_score: score_sum / labels as f64,
        brier_score: 0.0,
        brier_sum,
        log_loss: 0.0,
        log_loss_sum,
        expected_calibration_error: 0.0,
        calibration: vec![
            CalibrationBin { lower: 0.0, upper: 0.5, count: bins[0].0, score_sum: bins[0].1, positives: bins[0].2 },
            CalibrationBin { lower: 0.5, upper: 1.0, count: bins[1].0, score_sum: bins[1].1, positives: bins[1].2 },
        ],
        label_delay_mean_seconds: 2.0,
        label_delay_max_seconds: 5.0,
    }
}

/// Instance a: tp 8 fp 2 fn 4 tn 86; instance b: tp 2 fp 3 fn 0 tn 45 (same window).
fn quality_pair(version: &str, end: i64) -> [QualityReport; 2] {
    [
        quality(version, "a", end, [8, 2, 4, 86], 5.0, 20.0, [(90, 9.0, 4), (10, 8.0, 8)]),
        quality(version, "b", end + 30, [2, 3, 0, 45], 4.0, 10.0, [(45, 2.25, 0), (5, 3.5, 2)]),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn drift_windows_of_two_instances_merge_by_adding_counts() {
    // Bins: edge 1.0, reference 50/50. a: 30/10 (mean 0.5, std 0.5); b: 10/10 (mean 2, std 1).
    let a = drift("a", 1000, 2000, feature("amount", [30, 10], 0.5, 0.5, 9.9));
    let b = drift("b", 1010, 2010, feature("amount", [10, 10], 2.0, 1.0, 9.9));
    let merged = merge_drift(&[&a, &b]);
    assert_eq!(merged.len(), 1, "{merged:?}");
    let w = &merged[0];
    assert_eq!((w.window_start, w.window_end, w.rows), (1000, 2010, 60));
    assert_eq!(w.instances.len(), 2);
    let f = &w.features[0];
    assert_eq!(f.bin_counts, vec![40, 20]);
    assert_eq!((f.count, f.missing), (60, 2));
    // mean = (40·0.5 + 20·2)/60 = 1; M2 = 40·0.25 + 20·1 + 40·0.25 + 20·1 = 60, std = sqrt(60/60) = 1.
    assert!(close(f.mean, 1.0) && close(f.std, 1.0), "{f:?}");
    assert_eq!((f.min, f.max), (-0.5, 3.0));
    // PSI on [50, 50] vs [40, 20] with ε = 1e-4, JS base 2 (computed by hand in Python).
    assert!(close(f.psi.unwrap(), 0.11549953571701206), "{:?}", f.psi);
    assert!(close(f.js.unwrap(), 0.14394735018022461), "{:?}", f.js);
    // KS: cumulative 0.5 vs 2/3 → D = 1/6.
    assert!(close(f.test_statistic.unwrap(), 1.0 / 6.0), "{:?}", f.test_statistic);
    assert!(f.p_value.unwrap() > 0.0 && f.p_value.unwrap() < 1.0);
    assert_eq!(w.score.bin_counts, vec![40, 20]);
}

#[test]
fn a_single_part_keeps_its_writers_statistics_and_old_parts_cannot_be_recomputed() {
    let a = drift("a", 1000, 2000, feature("amount", [30, 10], 0.5, 0.5, 0.42));
    let w = &merge_drift(&[&a])[0];
    assert_eq!(w.features[0].psi, Some(0.42));

    let mut old = feature("amount", [10, 10], 2.0, 1.0, 0.3);
    old.reference_counts.clear();
    let mut first = feature("amount", [30, 10], 0.5, 0.5, 0.42);
    first.reference_counts.clear();
    let (a, b) = (drift("a", 1000, 2000, first), drift("b", 1000, 2000, old));
    let w = &merge_drift(&[&a, &b])[0];
    assert_eq!(w.features[0].psi, None, "never averaged");
}

#[test]
fn one_instances_consecutive_windows_stay_separate_points() {
    let reports: Vec<DriftReport> = (0..3)
        .flat_map(|i| {
            let start = 10_000 + i * 1000;
            [
                drift("a", start, start + 1000, feature("x", [5, 5], 0.0, 0.0, 0.0)),
                drift("b", start + 20, start + 1020, feature("x", [5, 5], 0.0, 0.0, 0.0)),
            ]
        })
        .collect();
    let refs: Vec<&DriftReport> = reports.iter().collect();
    let merged = merge_drift(&refs);
    assert_eq!(merged.len(), 3);
    assert!(merged.iter().all(|w| w.instances.len() == 2 && w.rows == 20));
    let a_only: Vec<&DriftReport> = reports.iter().filter(|r| r.instance_id == "a").collect();
    assert_eq!(merge_drift(&a_only).len(), 3);
}

#[test]
fn quality_reports_merge_counts_and_sums_and_recompute_ratios() {
    let [a, b] = quality_pair("1", 5000);
    let merged = merge_quality(&[&a, &b]);
    assert_eq!(merged.len(), 1);
    let q = &merged[0];
    assert_eq!(
        (
            q.labels,
            q.confusion.true_positives,
            q.confusion.false_positives,
            q.confusion.false_negatives,
            q.confusion.true_negatives
        ),
        (150, 10, 5, 4, 131)
    );
    assert!(close(q.precision().unwrap(), 10.0 / 15.0));
    assert!(close(q.recall().unwrap(), 10.0 / 14.0));
    assert!(close(q.f1().unwrap(), 20.0 / 29.0));
    assert!(close(q.brier().unwrap(), 0.06));
    assert!(close(q.log_loss().unwrap(), 0.2));
    assert!(close(q.positive_rate().unwrap(), 14.0 / 150.0));
    // Bins: [135, 11.25, 4] → |0.0833 − 0.0296| = 0.0537; [15, 11.5, 10] → |0.7667 − 0.6667| = 0.1.
    // ECE = 0.9·0.05370370 + 0.1·0.1 = 0.05833333.
    assert_eq!(q.calibration.len(), 2);
    assert_eq!((q.calibration[0].count, q.calibration[0].positives), (135, 4));
    assert!(close(q.expected_calibration_error().unwrap(), 0.9 * (11.25 / 135.0 - 4.0 / 135.0) + 0.01));
    assert!(close(q.mean_score().unwrap(), 22.75 / 150.0));
    assert!(close(q.label_delay_mean_seconds().unwrap(), 2.0));
}

#[test]
fn empty_ratios_are_none_not_nan() {
    let mut q = quality("1", "a", 1000, [0, 0, 0, 5], 0.0, 0.0, [(5, 0.5, 0), (0, 0.0, 0)]);
    q.labels = 5;
    let m = &merge_quality(&[&q])[0];
    assert_eq!((m.precision(), m.recall(), m.f1()), (None, None, None));
    assert!(close(m.expected_calibration_error().unwrap(), 0.1));
}

#[test]
fn aggregate_groups_by_version_and_totals_quality_over_windows() {
    let mut records = Records::default();
    records.quality.extend(quality_pair("1", 5000));
    records.quality.extend(quality_pair("1", 6000));
    records.quality.extend(quality_pair("2", 5000));
    records.alerts.push(alert("amount"));
    records.drift.push(drift("a", 1000, 2000, feature("amount", [30, 10], 0.5, 0.5, 0.4)));
    records.shadow.extend([shadow(0.9, true, 0.7, true, 100), shadow(0.6, true, 0.4, false, 200)]);
    let agg = aggregate(&records);
    assert_eq!(agg.versions.len(), 2);
    let v1 = agg.versions.values().next().unwrap();
    assert_eq!(v1.quality.len(), 2);
    let total = v1.quality_total.as_ref().unwrap();
    assert_eq!((total.labels, total.confusion.true_positives), (300, 20));
    assert!(close(total.precision().unwrap(), 20.0 / 30.0));
    assert_eq!(v1.alerting_columns().into_iter().collect::<Vec<_>>(), vec!["amount"]);
    assert_eq!(agg.instances.len(), 2);
    assert_eq!(agg.shadow.len(), 1);
    let s = &agg.shadow[0];
    assert_eq!((s.records, s.agreements), (2, 1));
    assert!(close(s.agreement_rate().unwrap(), 0.5));
    assert!((s.mean_abs_diff().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(agg.time_range, Some((100, 6030)));
}

fn alert(column: &str) -> DriftAlert {
    DriftAlert {
        model_name: "fraud".into(),
        model_version: "1".into(),
        instance_id: "a".into(),
        column: column.into(),
        statistic: "psi".into(),
        value: 0.4,
        threshold: 0.25,
        windows: 3,
        window_start: 1000,
        window_end: 2000,
    }
}

fn shadow(champion: f32, champion_label: bool, challenger: f32, challenger_label: bool, at: i64) -> ShadowScore {
    ShadowScore {
        model_name: "fraud".into(),
        champion_version: "1".into(),
        champion_score: champion,
        champion_label,
        challenger_name: "fraud".into(),
        challenger_version: "2".into(),
        challenger_score: challenger,
        challenger_label,
        scored_at: at,
    }
}

fn framed(kind: RecordKind, id: u32, value: impl serde::Serialize) -> RawRecord {
    let schema = codec::parse_schema(kind.schema_json()).unwrap();
    let value = apache_avro::to_value(value).unwrap().resolve(&schema).unwrap();
    let mut payload = Vec::new();
    codec::encode_value(&mut payload, id, &schema, value).unwrap();
    RawRecord { partition: 0, offset: 0, payload: Some(payload) }
}

fn local_writers() -> BTreeMap<u32, WriterLookup> {
    local_ids(2, 3)
        .into_iter()
        .map(|(id, kind)| (id, Ok((kind, codec::parse_schema(kind.schema_json()).unwrap()))))
        .collect()
}

#[test]
fn local_ids_follow_the_service() {
    let ids = local_ids(2, 3);
    assert_eq!(ids.get(&3), Some(&RecordKind::Drift));
    assert_eq!(ids.get(&4), Some(&RecordKind::Shadow));
    assert_eq!(ids.get(&5), Some(&RecordKind::Alert));
    assert_eq!(ids.get(&6), Some(&RecordKind::Quality));
}

#[test]
fn records_decode_by_id_and_bad_ones_are_counted() {
    let [q, _] = quality_pair("1", 5000);
    let raw = vec![
        framed(RecordKind::Quality, 6, &q),
        framed(RecordKind::Alert, 5, alert("amount")),
        framed(RecordKind::Drift, 3, drift("a", 1000, 2000, feature("amount", [30, 10], 0.5, 0.5, 0.4))),
        RawRecord { partition: 0, offset: 3, payload: Some(vec![0, 0, 0, 0, 99, 1, 2]) },
        RawRecord { partition: 0, offset: 4, payload: Some(vec![7, 1]) },
        RawRecord { partition: 0, offset: 5, payload: Some(vec![0, 0, 0, 0, 6, 0xff]) },
        RawRecord { partition: 0, offset: 6, payload: None },
    ];
    let mut shadow_payload = Vec::new();
    codec::encode_shadow(
        &mut shadow_payload,
        4,
        &codec::ShadowRecord {
            event_id: "6f1c1b9e-8f7e-4a8e-9a55-3c1d2b7b8e01",
            transaction_id: "t1",
            source_topic: "in",
            source_partition: 0,
            source_offset: 1,
            model_name: "fraud",
            champion_version: "1",
            champion_score: 0.25,
            champion_label: false,
            challenger_name: "fraud",
            challenger_version: "2",
            challenger_score: 0.75,
            challenger_label: true,
            challenger_threshold: 0.5,
            scored_at_ms: 1234,
        },
    );
    let mut raw = raw;
    raw.push(RawRecord { partition: 0, offset: 7, payload: Some(shadow_payload) });
    let records = decode_all(&raw, &local_writers());
    assert_eq!(records.quality, vec![q]);
    assert_eq!(records.alerts.len(), 1);
    assert_eq!(records.drift.len(), 1);
    assert_eq!(records.shadow.len(), 1);
    assert_eq!(records.shadow[0].challenger_score, 0.75);
    assert_eq!(records.undecodable_total(), 4, "{:?}", records.undecodable);
    assert!(records.undecodable.contains_key("unknown schema id 99"), "{:?}", records.undecodable);
}

#[test]
fn registry_schemas_dispatch_on_the_record_name() {
    assert_eq!(writer_from_text(17, codec::QUALITY_REPORT_SCHEMA).unwrap().0, RecordKind::Quality);
    assert_eq!(writer_from_text(18, codec::DRIFT_REPORT_SCHEMA).unwrap().0, RecordKind::Drift);
    let err = writer_from_text(19, codec::TRANSACTION_SCHEMA).unwrap_err();
    assert!(err.contains("not a monitoring record"), "{err}");
    assert!(writer_from_text(20, "{").is_err());
}

#[test]
fn since_keeps_recent_records_only() {
    let mut records = Records::default();
    records.quality.extend(quality_pair("1", 5000));
    records.alerts.push(alert("amount"));
    records.shadow.push(shadow(0.1, false, 0.2, false, 9000));
    records.retain_since(4000);
    assert_eq!((records.quality.len(), records.alerts.len(), records.shadow.len()), (2, 0, 1));
}

fn info() -> PageInfo {
    PageInfo { topic: "mon".into(), generated_at_ms: 1_767_225_600_000, complete: true, ..PageInfo::default() }
}

#[test]
fn an_empty_topic_renders_every_empty_section_with_words() {
    let page = render(&info(), &Aggregate::default());
    assert!(page.contains("no drift reports yet"), "{page}");
    assert!(page.contains("no labels joined yet"));
    assert!(page.contains("no shadow scores"));
    assert!(!page.contains("<svg"));
}

fn full_records(feature_name: &str, model: &str) -> Records {
    let mut records = Records::default();
    for i in 0..3 {
        let start = 1_767_225_600_000 + i * 1000;
        let mut a = drift("a", start, start + 1000, feature(feature_name, [30 + i, 10], 0.5, 0.5, 0.4));
        a.model_name = model.into();
        records.drift.push(a);
        for mut q in quality_pair("1", start + 1000).into_iter().chain(quality_pair("2", start + 1000)) {
            q.model_name = model.into();
            records.quality.push(q);
        }
    }
    let mut a = alert(feature_name);
    a.model_name = model.into();
    records.alerts.push(a);
    records.shadow.push(shadow(0.9, true, 0.7, true, 1_767_225_601_000));
    records
}

#[test]
fn every_chart_is_drawn_with_title_axes_and_legend() {
    let agg = aggregate(&full_records("amount", "fraud"));
    let page = render(&info(), &agg);
    for id in ["psi-0", "score-dist-0", "quality-precision-0", "quality-recall-0", "quality-f1-0", "calibration-0"] {
        let start = page.find(&format!("<svg class=\"chart\" id=\"{id}\"")).unwrap_or_else(|| panic!("no chart {id}"));
        let svg = &page[start..start + page[start..].find("</svg>").unwrap()];
        assert!(svg.contains("class=\"chart-title\""), "{id} has no title");
        assert!(svg.matches("class=\"tick\"").count() >= 4, "{id} has too few tick labels");
        assert!(svg.contains("class=\"axis-label\""), "{id} has no axis label");
        assert!(svg.contains("class=\"mark"), "{id} draws no data");
        assert!(svg.contains("class=\"legend\""), "{id} has several series but no legend");
    }
    // Thresholds on the PSI chart, the diagonal on the reliability diagram.
    assert!(page.contains("0.25 alert (default)") && page.contains("0.1 moderate"));
    assert!(page.contains("class=\"diagonal\""));
    // The alerting column is flagged, and the merged quality figures are shown.
    assert!(page.contains("<tr class=\"alerting\" data-version=\"fraud v1\" data-column=\"amount\">"), "{page}");
    assert!(page.contains("data-metric=\"precision\">0.6667</td>"));
    assert!(page.contains("data-metric=\"recall\">0.7143</td>"));
    assert!(page.contains("data-metric=\"f1\">0.6897</td>"));
    assert!(page.contains("data-metric=\"ece\">0.0583</td>"));
    assert!(page.contains("data-metric=\"agreement\">1.0000</td>"));
    // Self-contained: no URL at all.
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="), "external reference");
}

#[test]
fn names_from_the_data_are_escaped_everywhere() {
    let agg = aggregate(&full_records("<script>alert(1)</script>", "m&\"x'"));
    let page = render(&PageInfo { topic: "<t>".into(), ..info() }, &agg);
    assert!(!page.contains("<script>alert(1)"), "unescaped feature name");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("m&\"x'") && page.contains("m&amp;&quot;x&#39;"));
    assert!(!page.contains("<t>") && page.contains("&lt;t&gt;"));
    // Exactly the one inline script of the page.
    assert_eq!(page.matches("<script>").count(), 1);
}

#[test]
fn undecodable_reasons_and_an_incomplete_read_are_shown() {
    let mut i = info();
    i.complete = false;
    i.undecodable.insert("unknown schema id <9>".into(), 2);
    let page = render(&i, &Aggregate::default());
    assert!(page.contains("data-undecodable=\"2\""));
    assert!(page.contains("unknown schema id &lt;9&gt;"));
    assert!(page.contains("id=\"incomplete\""));
}

#[test]
fn ticks_are_round_numbers_and_clock_times() {
    assert_eq!(super::svg::nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
    let t = super::svg::time_ticks(1_767_225_600_000.0, 1_767_225_660_000.0, 6);
    assert_eq!(t[0].1, "00:00:00");
    assert_eq!(t[1].1, "00:00:10");
}

#[test]
fn a_single_window_gets_a_readable_time_axis() {
    let chart = super::svg::LineChart {
        id: "one".into(),
        title: "one point".into(),
        x: super::svg::XAxis::Time,
        y_label: "PSI".into(),
        series: vec![super::svg::Series { name: "x".into(), points: vec![(1_767_225_600_000.0, 0.2)] }],
        x_range: None,
        y_range: None,
        ref_lines: Vec::new(),
        diagonal: false,
    };
    let svg = super::svg::line_chart(&chart);
    // ±1 minute around 00:00: clock ticks of that day, one point drawn.
    assert!(svg.contains(">23:59:30<") && svg.contains(">00:00:30<"), "{svg}");
    assert_eq!(svg.matches("class=\"mark point\"").count(), 1);
}
