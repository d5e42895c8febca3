//! `streamscore report` end to end: real drift reports and a drift alert from the service on
//! shifted traffic, hand-encoded quality reports (two versions × two instances × three windows)
//! and shadow scores on the same monitoring topic, the real binary, and the page as headless
//! Chromium renders it (chart boxes, the flagged column and the merged figures, measured by the
//! page's own script and read back with `--dump-dom`, plus a screenshot).
//!
//! Chromium: `$STREAMSCORE_CHROMIUM`, else `/usr/bin/chromium` (Debian's `chromium` package).
//! `STREAMSCORE_SKIP_BROWSER=1` skips only the browser part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use serde_json::Value as Json;

use streamscore::codec;

use crate::common::{self, Broker, Registry, TestRecord};
use crate::service::{self, InProcess, Schemas, Topics};

const MODEL: &str = "fraud_mlp";
const INSTANCES: [&str; 2] = ["inst-a", "inst-b"];
const VERSIONS: [&str; 2] = ["1", "2"];
/// Calibration bins the test's predictions fall in: negatives score 0.15, positives 0.85 (so
/// false negatives sit in the low bin and false positives in the high one).
const LOW: (usize, f64) = (1, 0.15);
const HIGH: (usize, f64) = (8, 0.85);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// The confusion counts of one (version, instance, window): all different, so a wrong merge
/// (one instance only, averaged ratios) shows.
fn confusion(version: usize, instance: usize, window: usize) -> [i64; 4] {
    let (v, i, w) = (version as i64, instance as i64, window as i64);
    [6 + 3 * v + i + w, 2 + i + 2 * v * w, 3 + w + i, 80 + 5 * w + 7 * i]
}

/// A QualityReport as the producer writes it, built field by field (independently of the
/// report module's structs).
fn quality_value(version: &str, instance: &str, start: i64, end: i64, [tp, fp, fn_, tn]: [i64; 4]) -> Value {
    let labels = tp + fp + fn_ + tn;
    let ratio = |a: i64, b: i64| {
        if b > 0 {
            Value::Union(1, Box::new(Value::Double(a as f64 / b as f64)))
        } else {
            Value::Union(0, Box::new(Value::Null))
        }
    };
    let (low_n, high_n) = (tn + fn_, tp + fp);
    let brier = (tn + tp) as f64 * 0.15f64.powi(2) + (fn_ + fp) as f64 * 0.85f64.powi(2);
    let log_loss = (tn + tp) as f64 * -(0.85f64.ln()) + (fn_ + fp) as f64 * -(0.15f64.ln());
    let bins: Vec<Value> = (0..10)
        .map(|b| {
            let (count, positives, score) = match b {
                b if b == LOW.0 => (low_n, fn_, LOW.1),
                b if b == HIGH.0 => (high_n, tp, HIGH.1),
                _ => (0, 0, 0.0),
            };
            Value::Record(vec![
                ("lower".into(), Value::Double(b as f64 / 10.0)),
                ("upper".into(), Value::Double((b + 1) as f64 / 10.0)),
                ("count".into(), Value::Long(count)),
                ("score_sum".into(), Value::Double(count as f64 * score)),
                ("positives".into(), Value::Long(positives)),
            ])
        })
        .collect();
    let mean_score = (low_n as f64 * LOW.1 + high_n as f64 * HIGH.1) / labels as f64;
    Value::Record(vec![
        ("model_name".into(), Value::String(MODEL.into())),
        ("model_version".into(), Value::String(version.into())),
        ("instance_id".into(), Value::String(instance.into())),
        ("window_start".into(), Value::TimestampMillis(start)),
        ("window_end".into(), Value::TimestampMillis(end)),
        ("threshold".into(), Value::Double(0.5)),
        ("labels".into(), Value::Long(labels)),
        ("true_positives".into(), Value::Long(tp)),
        ("false_positives".into(), Value::Long(fp)),
        ("false_negatives".into(), Value::Long(fn_)),
        ("true_negatives".into(), Value::Long(tn)),
        ("precision".into(), ratio(tp, tp + fp)),
        ("recall".into(), ratio(tp, tp + fn_)),
        ("f1".into(), Value::Union(0, Box::new(Value::Null))),
        ("positive_rate".into(), Value::Double((tp + fn_) as f64 / labels as f64)),
        ("mean_score".into(), Value::Double(mean_score)),
        ("brier_score".into(), Value::Double(brier / labels as f64)),
        ("brier_sum".into(), Value::Double(brier)),
        ("log_loss".into(), Value::Double(log_loss / labels as f64)),
        ("log_loss_sum".into(), Value::Double(log_loss)),
        ("expected_calibration_error".into(), Value::Double(0.0)),
        ("calibration".into(), Value::Array(bins)),
        ("label_delay_mean_seconds".into(), Value::Double(30.0)),
        ("label_delay_max_seconds".into(), Value::Double(90.0)),
    ])
}

fn framed(schema_json: &str, id: u32, value: Value) -> Vec<u8> {
    let schema = codec::parse_schema(schema_json).expect("schema");
    let mut out = Vec::new();
    codec::encode_value(&mut out, id, &schema, value).expect("encode");
    out
}

/// What the page must show for one version: the counts over both instances and all windows,
/// and the ratios computed here from them.
struct Expected {
    labels: i64,
    tp: i64,
    fp: i64,
    fn_: i64,
    tn: i64,
}

impl Expected {
    fn figures(&self) -> Vec<(&'static str, String)> {
        let (tp, fp, fn_, tn, n) =
            (self.tp as f64, self.fp as f64, self.fn_ as f64, self.tn as f64, self.labels as f64);
        let precision = tp / (tp + fp);
        let recall = tp / (tp + fn_);
        let brier = ((tn + tp) * 0.15f64.powi(2) + (fn_ + fp) * 0.85f64.powi(2)) / n;
        let log_loss = ((tn + tp) * -(0.85f64.ln()) + (fn_ + fp) * -(0.15f64.ln())) / n;
        // Two non-empty bins: low (tn + fn, positives fn) and high (tp + fp, positives tp).
        let (low, high) = (tn + fn_, tp + fp);
        let ece = low / n * (0.15 - fn_ / low).abs() + high / n * (0.85 - tp / high).abs();
        vec![
            ("labels", self.labels.to_string()),
            ("tp", self.tp.to_string()),
            ("fp", self.fp.to_string()),
            ("fn", self.fn_.to_string()),
            ("tn", self.tn.to_string()),
            ("precision", format!("{precision:.4}")),
            ("recall", format!("{recall:.4}")),
            ("f1", format!("{:.4}", 2.0 * precision * recall / (precision + recall))),
            ("brier", format!("{brier:.4}")),
            ("log_loss", format!("{log_loss:.4}")),
            ("ece", format!("{ece:.4}")),
        ]
    }
}

/// Produces 12 quality reports (plus one two days old, outside `--since 1h`); returns the
/// expected merged figures per version.
async fn produce_quality(bootstrap: &str, topic: &str, schema_id: impl Fn() -> u32) -> Vec<(String, Expected)> {
    let now = now_ms();
    let mut records: Vec<TestRecord> = Vec::new();
    let mut expected = Vec::new();
    for (v, version) in VERSIONS.iter().enumerate() {
        let mut e = Expected { labels: 0, tp: 0, fp: 0, fn_: 0, tn: 0 };
        for w in 0..3 {
            let end = now - (3 - w as i64) * 60_000;
            for (i, instance) in INSTANCES.iter().enumerate() {
                let c = confusion(v, i, w);
                e.tp += c[0];
                e.fp += c[1];
                e.fn_ += c[2];
                e.tn += c[3];
                e.labels += c.iter().sum::<i64>();
                // Instances' windows are offset a little, as their timers are.
                let skew = 150 * i as i64;
                let value = quality_value(version, instance, end - 60_000 + skew, end + skew, c);
                let payload = framed(codec::QUALITY_REPORT_SCHEMA, schema_id(), value);
                records.push((Some(format!("{MODEL}/{version}").into_bytes()), payload, Vec::new(), None));
            }
        }
        expected.push((format!("{MODEL} v{version}"), e));
    }
    let old = quality_value("1", "inst-a", now - 2 * 86_400_000 - 60_000, now - 2 * 86_400_000, [50, 50, 50, 50]);
    records.push((None, framed(codec::QUALITY_REPORT_SCHEMA, schema_id(), old), Vec::new(), None));
    common::produce_values(bootstrap, topic, records).await;
    expected
}

/// 20 shadow scores: the challenger agrees on 15 decisions (|diff| 0.1) and disagrees on 5
/// (|diff| 0.5).
async fn produce_shadow(bootstrap: &str, topic: &str) {
    let now = now_ms();
    let records: Vec<TestRecord> = (0..20)
        .map(|i| {
            let champion = if i % 2 == 0 { 0.8f32 } else { 0.2 };
            // The last five cross the threshold the other way.
            let challenger = match (i >= 15, champion > 0.5) {
                (true, true) => 0.3,
                (true, false) => 0.7,
                (false, _) => champion - 0.1,
            };
            let mut payload = Vec::new();
            let event_id = format!("00000000-0000-4000-8000-{i:012}");
            codec::encode_shadow(
                &mut payload,
                codec::local_shadow_schema_id(2, 3),
                &codec::ShadowRecord {
                    event_id: &event_id,
                    transaction_id: &format!("t{i}"),
                    source_topic: "in",
                    source_partition: 0,
                    source_offset: i,
                    model_name: MODEL,
                    champion_version: "1",
                    champion_score: champion,
                    champion_label: champion >= 0.5,
                    challenger_name: MODEL,
                    challenger_version: "2",
                    challenger_score: challenger,
                    challenger_label: challenger >= 0.5,
                    challenger_threshold: 0.5,
                    scored_at_ms: now - 30_000 + i,
                },
            );
            (None, payload, Vec::new(), None)
        })
        .collect();
    common::produce_values(bootstrap, topic, records).await;
}

/// Runs `streamscore report` with `args`; returns (exit code, stdout, stderr).
fn run_report(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run streamscore report");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The report of a topic with real drift reports and alerts, quality reports of two versions
/// from two instances, shadow scores and two bad records: the summary line, the file, and the
/// page as Chromium renders it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_of_a_live_monitoring_topic_renders_in_chromium() {
    // Before the slow part: a missing browser fails at once.
    let chromium = chromium();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let toml = service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        None,
        "[drift]\ninterval = \"400ms\"\n",
    );

    // Real drift reports and alerts: amounts ×20 in bursts over several windows (as in drift.rs).
    let running = InProcess::start(service::config(&toml));
    let per_burst = 500usize;
    for i in 0..8u64 {
        common::produce_values(&bootstrap, &topics.input, service::shifted(per_burst, 300 + i, 20.0)).await;
        let want = (i + 1) * per_burst as u64;
        assert!(running.wait_outcomes(want, Duration::from_secs(90)).await, "only {} outcomes", running.outcomes());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    running.stop().await;

    let quality_id = codec::local_quality_schema_id(2, 3);
    let expected = produce_quality(&bootstrap, &topics.monitoring, || quality_id).await;
    produce_shadow(&bootstrap, &topics.monitoring).await;
    let bad: Vec<TestRecord> = vec![
        (None, vec![0, 0, 0, 0, 42, 1, 2, 3], Vec::new(), None),
        (None, b"not a framed record".to_vec(), Vec::new(), None),
    ];
    common::produce_values(&bootstrap, &topics.monitoring, bad).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("report.toml");
    std::fs::write(&config_path, &toml).expect("write config");
    let out = dir.path().join("report.html");
    let (code, stdout, stderr) = run_report(&[
        "--config",
        config_path.to_str().expect("utf-8 path"),
        "--since",
        "1h",
        "--out",
        out.to_str().expect("utf-8 path"),
        "--timeout",
        "60s",
    ]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    eprintln!("streamscore report: {stdout}");
    assert!(stdout.contains("12 quality reports"), "{stdout}");
    assert!(stdout.contains("20 shadow scores"), "{stdout}");
    assert!(stdout.contains("2 undecodable"), "{stdout}");
    assert!(stdout.contains(out.to_str().expect("utf-8 path")), "{stdout}");
    let drift_reports: usize = count_in(&stdout, "drift reports");
    let alerts: usize = count_in(&stdout, "drift alerts");
    assert!(drift_reports >= 3, "{stdout}");
    assert!(alerts >= 1, "{stdout}");
    let page = std::fs::read_to_string(&out).expect("report file");
    assert!(!page.contains("http://") && !page.contains("https://"), "the page names an external resource");
    assert!(page.contains(&topics.monitoring));

    let Some(chromium) = chromium else {
        eprintln!("STREAMSCORE_SKIP_BROWSER=1: skipping the browser checks");
        return;
    };
    let check = rendered_check(&chromium, &out, dir.path());

    // Every chart rendered with a real size and drawn data.
    let charts = check["charts"].as_array().expect("charts");
    for prefix in ["psi-", "score-dist-", "quality-precision-", "quality-recall-", "quality-f1-", "calibration-"] {
        assert!(
            charts.iter().any(|c| c["id"].as_str().is_some_and(|id| id.starts_with(prefix))),
            "no {prefix}* chart rendered: {check}"
        );
    }
    for c in charts {
        assert!(c["width"].as_i64() > Some(200) && c["height"].as_i64() > Some(150), "chart rendered too small: {c}");
        assert!(c["marks"].as_i64() > Some(0), "chart draws no data: {c}");
        assert!(c["ticks"].as_i64() >= Some(4), "chart without tick labels: {c}");
    }

    // The shifted column is flagged, visibly, in the latest-window table.
    let alerting = check["alerting"].as_array().expect("alerting");
    let amount = alerting
        .iter()
        .find(|a| a["column"] == "amount_log1p" && a["version"] == "fraud_mlp v1")
        .unwrap_or_else(|| panic!("amount_log1p is not flagged: {check}"));
    assert_eq!(amount["visible"], true, "{amount}");
    assert_eq!(amount["badge"], "rgb(197, 48, 48)", "{amount}");

    // The quality figures shown are the merged ones.
    let metrics = check["metrics"].as_array().expect("metrics");
    for (version, e) in &expected {
        for (metric, want) in e.figures() {
            let shown = metrics
                .iter()
                .find(|m| m["version"] == version.as_str() && m["metric"] == metric)
                .unwrap_or_else(|| panic!("no {metric} for {version} on the page: {check}"));
            assert_eq!(shown["text"], want.as_str(), "{metric} of {version}");
            assert_eq!(shown["visible"], true, "{metric} of {version} is not visible");
        }
    }
    let agreement = metrics.iter().find(|m| m["metric"] == "agreement").expect("shadow agreement");
    assert_eq!(agreement["text"], "0.7500", "{agreement}");
    let diff = metrics.iter().find(|m| m["metric"] == "mean_abs_diff").expect("shadow diff");
    // 15 agreeing pairs 0.1 apart, 5 disagreeing ones 0.5 apart: (1.5 + 2.5) / 20.
    assert_eq!(diff["text"], "0.2000", "{diff}");

    // And a screenshot of the whole page (kept in $STREAMSCORE_REPORT_ARTIFACTS when set).
    let png = dir.path().join("report.png");
    let output = chromium_run(
        &chromium,
        dir.path(),
        &[&format!("--screenshot={}", png.display()), "--window-size=1280,4000", &file_url(&out)],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot ({e}): {}", describe(&output)));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("IHDR"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("IHDR"));
    assert_eq!((width, height), (1280, 4000));
    assert!(bytes.len() > 50_000, "screenshot of {} bytes: an empty page?", bytes.len());
    if let Some(keep) = std::env::var_os("STREAMSCORE_REPORT_ARTIFACTS") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&png, keep.join("report.png"));
        let _ = std::fs::copy(&out, keep.join("report.html"));
    }
}

/// With a schema registry, ids are whatever it assigned: the report looks each writer schema up
/// by id and dispatches on the record name (here the quality schema gets id 2, which is the
/// scored-record id locally). The topic has three partitions (one may stay empty), read to the
/// end of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_resolves_registry_schema_ids_by_record_name() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let monitoring = common::random_topic("mon3");
    common::create_topic(&bootstrap, &monitoring, 3).await;
    let registry = Registry::start();
    let alert_id = registry.register(&codec::drift_alert_subject(&monitoring), codec::DRIFT_ALERT_SCHEMA);
    let quality_id = registry.register(&codec::quality_subject(&monitoring), codec::QUALITY_REPORT_SCHEMA);
    assert_ne!(quality_id, codec::local_quality_schema_id(2, 3), "the test needs a non-local id");
    produce_quality(&bootstrap, &monitoring, || quality_id).await;
    let alert = Value::Record(vec![
        ("model_name".into(), Value::String(MODEL.into())),
        ("model_version".into(), Value::String("2".into())),
        ("instance_id".into(), Value::String("inst-a".into())),
        ("column".into(), Value::String("amount_log1p".into())),
        ("statistic".into(), Value::String("psi".into())),
        ("value".into(), Value::Double(0.4)),
        ("threshold".into(), Value::Double(0.25)),
        ("windows".into(), Value::Int(3)),
        ("window_start".into(), Value::TimestampMillis(now_ms() - 5000)),
        ("window_end".into(), Value::TimestampMillis(now_ms())),
    ]);
    let records = vec![
        (None, framed(codec::DRIFT_ALERT_SCHEMA, alert_id, alert), Vec::new(), None),
        (None, vec![0, 0, 0, 0x7f, 0, 1], Vec::new(), None),
    ];
    common::produce_values(&bootstrap, &monitoring, records).await;

    let toml = service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Registry(&registry.url()),
        None,
        "",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("report.toml");
    std::fs::write(&config_path, &toml).expect("write config");
    let out = dir.path().join("r.html");
    let config_arg = config_path.to_str().expect("utf-8 path");
    let out_arg = out.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run_report(&["--config", config_arg, "--topic", &monitoring, "--out", out_arg]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    // All 13 quality reports (no --since), the alert, and the unknown id counted, not fatal.
    assert!(stdout.contains("13 quality reports") && stdout.contains("1 drift alerts"), "{stdout}");
    assert!(stdout.contains("1 undecodable"), "{stdout}");
    assert!(registry.get_by_id_calls() >= 3, "{} lookups", registry.get_by_id_calls());
    let page = std::fs::read_to_string(&out).expect("report file");
    assert!(page.contains("no drift reports for this version in the range (alerts only)"));
    assert!(page.contains("(3 partitions)"), "every partition assigned");

    // A topic that does not exist: exit 1. A configuration that does not load: exit 2.
    let (code, _, stderr) = run_report(&[
        "--config",
        config_arg,
        "--topic",
        &common::random_topic("missing"),
        "--out",
        out_arg,
        "--timeout",
        "10s",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kafka]\nno_such_key = 1\n").expect("write config");
    let (code, _, stderr) = run_report(&["--config", bad.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// The number in front of `label` in the summary line (`..., 7 drift reports, ...`).
fn count_in(summary: &str, label: &str) -> usize {
    let before = &summary[..summary.find(label).unwrap_or_else(|| panic!("no {label} in {summary}"))];
    before
        .trim_end()
        .rsplit([' ', ':'])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {label}: {summary}"))
}

/// Chromium, or `None` when `STREAMSCORE_SKIP_BROWSER=1`. A missing browser fails the test.
fn chromium() -> Option<PathBuf> {
    if std::env::var("STREAMSCORE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        return None;
    }
    let path = std::env::var_os("STREAMSCORE_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "Chromium not found at {}: install Debian's `chromium` package (`apt-get install chromium`; CI's .ci/run \
         does), or point STREAMSCORE_CHROMIUM at a Chromium binary; STREAMSCORE_SKIP_BROWSER=1 skips the browser checks",
        path.display()
    );
    Some(path)
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Runs headless Chromium with a fresh profile and `args`, killed after 90 s.
fn chromium_run(chromium: &Path, dir: &Path, args: &[&str]) -> Output {
    let profile = tempfile::tempdir_in(dir).expect("profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    // Drain the pipes on threads so a chatty browser never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output { status, stdout: out_thread.join().unwrap_or_default(), stderr: err_thread.join().unwrap_or_default() }
}

fn describe(output: &Output) -> String {
    let err = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = err.lines().rev().take(20).collect();
    format!(
        "chromium exited {:?}; stderr tail:\n{}",
        output.status.code(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// The page's self-check (what its script measured after layout), from `--dump-dom`.
fn rendered_check(chromium: &Path, page: &Path, dir: &Path) -> Json {
    let output = chromium_run(chromium, dir, &["--dump-dom", &file_url(page)]);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("data-charts-rendered="), "the page's script did not run: {}", describe(&output));
    let start = dom.find("id=\"render-check\"").expect("render-check element");
    let text_start = start + dom[start..].find('>').expect("element end") + 1;
    let text_end = text_start + dom[text_start..].find("</pre>").expect("render-check end");
    let text = dom[text_start..text_end].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("render-check is not JSON ({e}): {text}"))
}
