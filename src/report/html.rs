//! The report page: one self-contained HTML file (inline CSS, inline SVG, one small inline
//! script that measures the rendered charts for the browser test; no URL of any kind).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::aggregate::{Aggregate, MergedFeature, MergedQuality, MergedWindow, VersionKey, VersionReport};
use super::records::RecordKind;
use super::svg::{self, bar_chart, escape, line_chart, BarChart, LineChart, RefLine, Series, XAxis};

/// PSI rule of thumb (docs/drift.md): below is stable.
pub const PSI_MODERATE: f64 = 0.1;
/// PSI rule of thumb and the manifest's default alert threshold: above is a significant shift.
pub const PSI_SIGNIFICANT: f64 = 0.25;
/// Columns drawn in a version's PSI chart (highest PSI first; the score is always drawn too).
const PSI_CHART_COLUMNS: usize = 8;

/// What the page says about the read itself (besides the aggregated data).
#[derive(Debug, Clone, Default)]
pub struct PageInfo {
    pub topic: String,
    pub generated_at_ms: i64,
    /// The `--since` cutoff, if any.
    pub since_ms: Option<i64>,
    pub partitions: usize,
    /// Payloads read from the topic (before `--since`).
    pub records_read: usize,
    /// Decoded records per type (after `--since`).
    pub counts: BTreeMap<RecordKind, usize>,
    /// Undecodable records by reason.
    pub undecodable: BTreeMap<String, u64>,
    /// Whether every partition was read to its end (false: the overall timeout cut the read).
    pub complete: bool,
}

/// Renders the whole page.
pub fn render(info: &PageInfo, agg: &Aggregate) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ =
        write!(out, "<title>streamscore report: {}</title><style>{STYLE}</style></head><body>", escape(&info.topic));
    header(&mut out, info, agg);
    drift_section(&mut out, agg);
    quality_section(&mut out, agg);
    shadow_section(&mut out, agg);
    let _ = writeln!(out, "<pre id=\"render-check\" hidden></pre><script>{SCRIPT}</script></body></html>");
    out
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1180px;color:#1d2430;background:#fff;padding:0 16px}
h1{font-size:24px;margin:0 0 8px}h2{font-size:20px;border-bottom:2px solid #d8dde6;padding-bottom:4px;margin-top:36px}
h3{font-size:17px;margin:28px 0 8px}h4{font-size:15px;margin:18px 0 6px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:12px 0}dl.meta dt{font-weight:600;color:#4a5568}dl.meta dd{margin:0}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #d8dde6;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f1f4f8}td.name,th.name{text-align:left}.table-wrap{overflow-x:auto;max-width:100%}
.status{display:inline-block;border-radius:3px;padding:0 6px;color:#fff;font-weight:600}
.stable{background:#2f855a}.moderate{background:#c27c0e}.significant{background:#c53030}.na{background:#718096}
tr.alerting td.name{font-weight:700}.badge{background:#c53030;color:#fff;border-radius:3px;padding:0 5px;margin-left:6px;font-size:11px}
.empty{color:#718096;font-style:italic}.warning{background:#fff5e6;border:1px solid #c27c0e;padding:8px;border-radius:4px}
.note{color:#4a5568;font-size:13px}figure{margin:8px 0 16px}
svg.chart{display:block;max-width:100%;height:auto;background:#fff}
svg .chart-title{font-size:14px;font-weight:600;fill:#1d2430}svg .tick{font-size:11px;fill:#4a5568}
svg .axis-label{font-size:12px;fill:#1d2430}svg .legend-label{font-size:11px;fill:#1d2430}
svg .axis{stroke:#4a5568;stroke-width:1}svg .grid{stroke:#e2e8f0;stroke-width:1}
svg .threshold{stroke-width:1.5;stroke-dasharray:6 4}svg .threshold-label{font-size:11px}
svg .diagonal{stroke:#a0aec0;stroke-width:1.5;stroke-dasharray:4 4}
"#;

/// Measures what the browser rendered, for the headless-Chromium test (docs/report.md): every
/// chart's box and drawn marks, every quality figure's text and visibility, every flagged column.
const SCRIPT: &str = r#"
(function () {
  function box(e) { var r = e.getBoundingClientRect(); return { w: Math.round(r.width), h: Math.round(r.height) }; }
  var check = { charts: [], metrics: [], alerting: [] };
  document.querySelectorAll('svg.chart').forEach(function (s) {
    var b = box(s), t = s.querySelector('title');
    check.charts.push({ id: s.id, title: t ? t.textContent : '', width: b.w, height: b.h,
      marks: s.querySelectorAll('.mark').length, ticks: s.querySelectorAll('.tick').length });
  });
  document.querySelectorAll('[data-metric]').forEach(function (e) {
    var b = box(e);
    check.metrics.push({ version: e.getAttribute('data-version'), metric: e.getAttribute('data-metric'),
      text: e.textContent.trim(), visible: b.w > 0 && b.h > 0 });
  });
  document.querySelectorAll('tr.alerting').forEach(function (e) {
    var b = box(e), s = e.querySelector('.badge');
    check.alerting.push({ version: e.getAttribute('data-version'), column: e.getAttribute('data-column'),
      visible: b.w > 0 && b.h > 0, badge: s ? getComputedStyle(s).backgroundColor : '' });
  });
  document.getElementById('render-check').textContent = JSON.stringify(check);
  document.body.setAttribute('data-charts-rendered', String(check.charts.length));
})();
"#;

/// A number with 4 decimals, or "–" when there is none.
pub fn fmt4(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "–".to_string(),
    }
}

/// A p-value: 4 decimals, scientific below 1e-4.
fn fmt_p(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v > 0.0 && v < 1e-4 => format!("{v:.2e}"),
        other => fmt4(other),
    }
}

fn fmt_time(ms: i64) -> String {
    format!("{} UTC", svg::utc(ms as f64).replace('T', " "))
}

fn header(out: &mut String, info: &PageInfo, agg: &Aggregate) {
    out.push_str("<header><h1>streamscore drift &amp; quality report</h1>");
    if !info.complete {
        out.push_str(
            "<p class=\"warning\" id=\"incomplete\">The read stopped at the overall timeout before every partition \
             reached its end: this report covers only the records read so far (raise <code>--timeout</code>).</p>",
        );
    }
    out.push_str("<dl class=\"meta\">");
    let _ = write!(
        out,
        "<dt>topic</dt><dd id=\"topic\">{} ({} partition{})</dd>",
        escape(&info.topic),
        info.partitions,
        if info.partitions == 1 { "" } else { "s" }
    );
    let _ = write!(out, "<dt>generated</dt><dd>{}</dd>", fmt_time(info.generated_at_ms));
    let range = match agg.time_range {
        Some((a, b)) => format!("{} – {}", fmt_time(a), fmt_time(b)),
        None => "no records".to_string(),
    };
    let _ = write!(out, "<dt>time range</dt><dd id=\"time-range\">{range}</dd>");
    if let Some(since) = info.since_ms {
        let _ = write!(out, "<dt>since</dt><dd>windows ending at or after {}</dd>", fmt_time(since));
    }
    let instances: Vec<String> = agg.instances.iter().map(|i| escape(i)).collect();
    let _ = write!(
        out,
        "<dt>instances</dt><dd id=\"instances\">{} {}</dd>",
        instances.len(),
        if instances.is_empty() { String::new() } else { format!("({})", instances.join(", ")) }
    );
    let versions: Vec<String> = agg.versions.keys().map(|k| escape(&k.to_string())).collect();
    let _ = write!(
        out,
        "<dt>versions</dt><dd id=\"versions\">{}</dd>",
        if versions.is_empty() { "none".to_string() } else { versions.join(", ") }
    );
    let counts: Vec<String> = RecordKind::ALL
        .iter()
        .map(|k| {
            format!(
                "<span data-count=\"{}\">{} {}</span>",
                k.label().replace(' ', "-"),
                info.counts.get(k).copied().unwrap_or(0),
                k.label()
            )
        })
        .collect();
    let _ =
        write!(out, "<dt>records</dt><dd id=\"record-counts\">{} read; {}</dd>", info.records_read, counts.join(", "));
    let undecodable: u64 = info.undecodable.values().sum();
    let _ =
        write!(out, "<dt>undecodable</dt><dd id=\"undecodable\" data-undecodable=\"{undecodable}\">{undecodable}</dd>");
    out.push_str("</dl>");
    if !info.undecodable.is_empty() {
        out.push_str("<table id=\"undecodable-reasons\"><tr><th class=\"name\">why a record could not be read</th><th>records</th></tr>");
        for (reason, n) in &info.undecodable {
            let _ = write!(out, "<tr><td class=\"name\">{}</td><td>{n}</td></tr>", escape(reason));
        }
        out.push_str("</table>");
    }
    out.push_str("</header>");
}

fn status(psi: Option<f64>) -> (&'static str, &'static str) {
    match psi {
        Some(p) if p > PSI_SIGNIFICANT => ("significant", "significant shift"),
        Some(p) if p >= PSI_MODERATE => ("moderate", "moderate shift"),
        Some(_) => ("stable", "stable"),
        None => ("na", "n/a"),
    }
}

fn drift_section(out: &mut String, agg: &Aggregate) {
    out.push_str("<section id=\"drift\"><h2>Drift</h2>");
    let with_drift: Vec<(usize, &VersionKey, &VersionReport)> = agg
        .versions
        .iter()
        .enumerate()
        .filter(|(_, (_, v))| !v.drift.is_empty() || !v.alerts.is_empty())
        .map(|(i, (k, v))| (i, k, v))
        .collect();
    if with_drift.is_empty() {
        out.push_str("<p class=\"empty\">no drift reports yet</p></section>");
        return;
    }
    let _ = write!(
        out,
        "<p class=\"note\">PSI bands (docs/drift.md): below {PSI_MODERATE} stable, {PSI_MODERATE}–{PSI_SIGNIFICANT} \
         moderate, above {PSI_SIGNIFICANT} significant ({PSI_SIGNIFICANT} is the manifest's default alert threshold; \
         a manifest can set its own). Windows of several instances are merged by adding bin counts, and PSI, JS and \
         the test are recomputed on the merged counts.</p>"
    );
    for (i, key, v) in with_drift {
        let _ = write!(out, "<h3 data-version-heading=\"{k}\">{k}</h3>", k = escape(&key.to_string()));
        if v.drift.is_empty() {
            out.push_str("<p class=\"empty\">no drift reports for this version in the range (alerts only)</p>");
        } else {
            psi_chart(out, i, key, v);
            if let Some(latest) = v.latest_window() {
                latest_table(out, key, v, latest);
                score_distribution(out, i, key, latest);
            }
        }
        alerts_table(out, v);
    }
    out.push_str("</section>");
}

fn psi_chart(out: &mut String, i: usize, key: &VersionKey, v: &VersionReport) {
    // Columns by their highest PSI over the range; the alerting ones always make the cut.
    let alerting = v.alerting_columns();
    let mut peak: BTreeMap<&str, f64> = BTreeMap::new();
    for w in &v.drift {
        for f in &w.features {
            let p = f.psi.unwrap_or(0.0);
            let e = peak.entry(f.name.as_str()).or_insert(0.0);
            *e = e.max(p);
        }
    }
    let mut ranked: Vec<(&str, f64)> = peak.into_iter().collect();
    ranked.sort_by(|a, b| {
        alerting.contains(b.0).cmp(&alerting.contains(a.0)).then_with(|| b.1.total_cmp(&a.1)).then_with(|| a.0.cmp(b.0))
    });
    let shown: Vec<&str> = ranked.iter().take(PSI_CHART_COLUMNS).map(|(n, _)| *n).collect();
    let mut series: Vec<Series> = shown
        .iter()
        .map(|name| Series {
            name: (*name).to_string(),
            points: v
                .drift
                .iter()
                .filter_map(|w| {
                    let f = w.features.iter().find(|f| f.name == *name)?;
                    Some((w.window_end as f64, f.psi?))
                })
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "score".into(),
        points: v.drift.iter().filter_map(|w| Some((w.window_end as f64, w.score.psi?))).collect(),
    });
    let chart = LineChart {
        id: format!("psi-{i}"),
        title: format!("PSI over time: {key}"),
        x: XAxis::Time,
        y_label: "PSI".into(),
        series,
        x_range: None,
        y_range: None,
        ref_lines: vec![
            RefLine { y: PSI_MODERATE, label: format!("{PSI_MODERATE} moderate"), colour: "#c27c0e" },
            RefLine { y: PSI_SIGNIFICANT, label: format!("{PSI_SIGNIFICANT} alert (default)"), colour: "#c53030" },
        ],
        diagonal: false,
    };
    let _ = write!(out, "<figure>{}", line_chart(&chart));
    if ranked.len() > shown.len() {
        let _ = write!(
            out,
            "<figcaption class=\"note\">{} of {} columns shown (alerting and highest PSI first); every column is in the table below.</figcaption>",
            shown.len(),
            ranked.len()
        );
    }
    out.push_str("</figure>");
}

fn latest_table(out: &mut String, key: &VersionKey, v: &VersionReport, w: &MergedWindow) {
    let alerting = v.alerting_columns();
    let instances: Vec<String> = w.instances.iter().map(|i| escape(i)).collect();
    let _ = write!(
        out,
        "<h4>Latest window: {} – {} ({} rows, {} instance{}: {})</h4>",
        fmt_time(w.window_start),
        fmt_time(w.window_end),
        w.rows,
        w.instances.len(),
        if w.instances.len() == 1 { "" } else { "s" },
        instances.join(", ")
    );
    out.push_str(
        "<table class=\"latest\"><tr><th class=\"name\">column</th><th>count</th><th>missing</th><th>mean</th>\
         <th>PSI</th><th>JS</th><th>test</th><th>statistic</th><th>p-value</th><th class=\"name\">status</th></tr>",
    );
    let mut rows: Vec<&MergedFeature> = vec![&w.score];
    let mut features: Vec<&MergedFeature> = w.features.iter().collect();
    features.sort_by(|a, b| b.psi.unwrap_or(-1.0).total_cmp(&a.psi.unwrap_or(-1.0)).then_with(|| a.name.cmp(&b.name)));
    rows.extend(features);
    for f in rows {
        let (class, text) = status(f.psi);
        let is_alerting = alerting.contains(f.name.as_str());
        let _ = write!(
            out,
            "<tr{cls} data-version=\"{ver}\" data-column=\"{col}\"><td class=\"name\">{col}{badge}</td><td>{count}</td>\
             <td>{missing}</td><td>{mean}</td><td>{psi}</td><td>{js}</td><td>{test}</td><td>{stat}</td><td>{p}</td>\
             <td class=\"name\"><span class=\"status {class}\">{text}</span></td></tr>",
            cls = if is_alerting { " class=\"alerting\"" } else { "" },
            ver = escape(&key.to_string()),
            col = escape(&f.name),
            badge = if is_alerting { "<span class=\"badge\">ALERT</span>" } else { "" },
            count = f.count,
            missing = f.missing,
            mean = fmt4(Some(f.mean)),
            psi = fmt4(f.psi),
            js = fmt4(f.js),
            test = if f.test.is_empty() { "–".to_string() } else { escape(&f.test) },
            stat = fmt4(f.test_statistic),
            p = fmt_p(f.p_value),
        );
    }
    out.push_str("</table>");
}

fn bin_labels(edges: &[f64]) -> Vec<String> {
    let mut labels = Vec::with_capacity(edges.len() + 1);
    let short = |v: f64| {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".to_string()
        } else {
            s.to_string()
        }
    };
    if edges.is_empty() {
        return vec!["all".into()];
    }
    labels.push(format!("< {}", short(edges[0])));
    for pair in edges.windows(2) {
        labels.push(format!("{}–{}", short(pair[0]), short(pair[1])));
    }
    labels.push(format!("≥ {}", short(edges[edges.len() - 1])));
    labels
}

fn score_distribution(out: &mut String, i: usize, key: &VersionKey, w: &MergedWindow) {
    let s = &w.score;
    let title = format!("Score distribution, latest window vs reference: {key}");
    if s.bin_counts.is_empty() {
        let _ = write!(out, "<p class=\"empty\">{}: no score histogram in the latest window</p>", escape(&title));
        return;
    }
    let mut groups = vec![(format!("latest window ({} scores)", s.count), s.proportions())];
    if s.reference_counts.len() == s.bin_counts.len() {
        groups.push(("reference (training)".to_string(), s.reference_proportions()));
    }
    let chart = BarChart {
        id: format!("score-dist-{i}"),
        title,
        x_label: "score bin".into(),
        y_label: "share of scores".into(),
        categories: bin_labels(&s.bin_edges),
        groups,
    };
    let _ = write!(out, "<figure>{}</figure>", bar_chart(&chart));
}

fn alerts_table(out: &mut String, v: &VersionReport) {
    out.push_str("<h4>Drift alerts</h4>");
    if v.alerts.is_empty() {
        out.push_str("<p class=\"empty\">no drift alerts in the range</p>");
        return;
    }
    out.push_str(
        "<table class=\"alerts\"><tr><th class=\"name\">column</th><th class=\"name\">statistic</th><th>value</th>\
         <th>threshold</th><th>windows</th><th class=\"name\">instance</th><th class=\"name\">streak</th></tr>",
    );
    for a in &v.alerts {
        let _ = write!(
            out,
            "<tr data-alert-column=\"{col}\"><td class=\"name\">{col}</td><td class=\"name\">{stat}</td><td>{value}</td>\
             <td>{thr}</td><td>{windows}</td><td class=\"name\">{inst}</td><td class=\"name\">{from} – {to}</td></tr>",
            col = escape(&a.column),
            stat = escape(&a.statistic),
            value = fmt_p(Some(a.value)),
            thr = fmt_p(Some(a.threshold)),
            windows = a.windows,
            inst = escape(&a.instance_id),
            from = fmt_time(a.window_start),
            to = fmt_time(a.window_end),
        );
    }
    out.push_str("</table>");
}

fn quality_section(out: &mut String, agg: &Aggregate) {
    out.push_str("<section id=\"quality\"><h2>Quality</h2>");
    let models: Vec<(&str, Vec<(&VersionKey, &VersionReport)>)> = agg
        .models()
        .into_iter()
        .map(|(m, keys)| {
            let versions = keys
                .into_iter()
                .filter_map(|k| agg.versions.get(k).map(|v| (k, v)))
                .filter(|(_, v)| v.quality_total.is_some())
                .collect::<Vec<_>>();
            (m, versions)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if models.is_empty() {
        out.push_str("<p class=\"empty\">no quality reports: no labels joined yet</p></section>");
        return;
    }
    out.push_str(
        "<p class=\"note\">Reports of every instance are merged by adding label and confusion counts, calibration \
         bins and the Brier and log-loss sums; precision, recall, F1, Brier score, log loss and ECE are recomputed \
         from the merged counts (never averaged).</p>",
    );
    for (m, (model, versions)) in models.iter().enumerate() {
        let _ = write!(out, "<h3>{}</h3>", escape(model));
        for (metric, label, get) in [
            ("precision", "Precision", MergedQuality::precision as fn(&MergedQuality) -> Option<f64>),
            ("recall", "Recall", MergedQuality::recall),
            ("f1", "F1", MergedQuality::f1),
        ] {
            let series = versions
                .iter()
                .map(|(k, v)| Series {
                    name: format!("v{}", k.version),
                    points: v.quality.iter().filter_map(|q| Some((q.window_end as f64, get(q)?))).collect(),
                })
                .collect();
            let chart = LineChart {
                id: format!("quality-{metric}-{m}"),
                title: format!("{label} over time: {model}"),
                x: XAxis::Time,
                y_label: label.to_string(),
                series,
                x_range: None,
                y_range: Some((0.0, 1.0)),
                ref_lines: Vec::new(),
                diagonal: false,
            };
            let _ = write!(out, "<figure>{}</figure>", line_chart(&chart));
        }
        let series = versions
            .iter()
            .filter_map(|(k, v)| {
                let total = v.quality_total.as_ref()?;
                Some(Series {
                    name: format!("v{}", k.version),
                    points: total
                        .calibration
                        .iter()
                        .filter_map(|b| Some((b.mean_score()?, b.observed_rate()?)))
                        .collect(),
                })
            })
            .collect();
        let chart = LineChart {
            id: format!("calibration-{m}"),
            title: format!("Reliability diagram (whole range): {model}"),
            x: XAxis::Value("mean predicted score".into()),
            y_label: "observed positive rate".into(),
            series,
            x_range: Some((0.0, 1.0)),
            y_range: Some((0.0, 1.0)),
            ref_lines: Vec::new(),
            diagonal: true,
        };
        let _ = write!(
            out,
            "<figure>{}<figcaption class=\"note\">Dashed diagonal: perfect calibration. One point per non-empty score bin.</figcaption></figure>",
            line_chart(&chart)
        );
        quality_table(out, versions);
    }
    out.push_str("</section>");
}

fn quality_table(out: &mut String, versions: &[(&VersionKey, &VersionReport)]) {
    out.push_str(
        "<div class=\"table-wrap\"><table class=\"quality\"><tr><th class=\"name\">version</th><th>threshold</th><th>labels</th><th>TP</th><th>FP</th>\
         <th>FN</th><th>TN</th><th>precision</th><th>recall</th><th>F1</th><th>pos. rate</th><th>mean score</th>\
         <th>Brier</th><th>log loss</th><th>ECE</th><th>label delay</th><th>instances</th><th>windows</th></tr>",
    );
    for (k, v) in versions {
        let Some(q) = &v.quality_total else { continue };
        let ver = escape(&k.to_string());
        let cell =
            |metric: &str, text: String| format!("<td data-version=\"{ver}\" data-metric=\"{metric}\">{text}</td>");
        let instances: Vec<String> = q.instances.iter().map(|i| escape(i)).collect();
        let threshold = format!("{:.2}", q.threshold);
        let _ = write!(
            out,
            "<tr><td class=\"name\">v{}</td><td>{}</td>{}{}{}{}{}{}{}{}{}{}{}{}{}<td>{}</td><td title=\"{}\">{}</td><td>{}</td></tr>",
            escape(&k.version),
            threshold,
            cell("labels", q.labels.to_string()),
            cell("tp", q.confusion.true_positives.to_string()),
            cell("fp", q.confusion.false_positives.to_string()),
            cell("fn", q.confusion.false_negatives.to_string()),
            cell("tn", q.confusion.true_negatives.to_string()),
            cell("precision", fmt4(q.precision())),
            cell("recall", fmt4(q.recall())),
            cell("f1", fmt4(q.f1())),
            cell("positive_rate", fmt4(q.positive_rate())),
            cell("mean_score", fmt4(q.mean_score())),
            cell("brier", fmt4(q.brier())),
            cell("log_loss", fmt4(q.log_loss())),
            cell("ece", fmt4(q.expected_calibration_error())),
            q.label_delay_mean_seconds().map_or("–".to_string(), |d| format!("{d:.1} s")),
            instances.join(", "),
            instances.len(),
            v.quality.len(),
        );
    }
    out.push_str("</table></div>");
}

fn shadow_section(out: &mut String, agg: &Aggregate) {
    out.push_str("<section id=\"shadow\"><h2>Shadow</h2>");
    if agg.shadow.is_empty() {
        out.push_str("<p class=\"empty\">no shadow scores: no challenger ran in shadow in the range</p></section>");
        return;
    }
    out.push_str(
        "<table class=\"shadow\"><tr><th class=\"name\">model</th><th class=\"name\">champion</th>\
         <th class=\"name\">challenger</th><th>scored inputs</th><th>agreement rate</th><th>mean |score diff|</th>\
         <th class=\"name\">from – to</th></tr>",
    );
    for s in &agg.shadow {
        let pair =
            escape(&format!("{} v{} vs {} v{}", s.model, s.champion_version, s.challenger_name, s.challenger_version));
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td class=\"name\">v{}</td><td class=\"name\">{} v{}</td><td>{}</td>\
             <td data-version=\"{pair}\" data-metric=\"agreement\">{}</td><td data-version=\"{pair}\" data-metric=\"mean_abs_diff\">{}</td>\
             <td class=\"name\">{} – {}</td></tr>",
            escape(&s.model),
            escape(&s.champion_version),
            escape(&s.challenger_name),
            escape(&s.challenger_version),
            s.records,
            fmt4(s.agreement_rate()),
            fmt4(s.mean_abs_diff()),
            fmt_time(s.first_ms),
            fmt_time(s.last_ms),
        );
    }
    out.push_str("</table></section>");
}
