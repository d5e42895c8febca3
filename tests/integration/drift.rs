//! Drift alerts end to end against the real test broker: shifted traffic raises a `DriftAlert`
//! on the monitoring topic for the shifted column, and none for an unshifted control column.

use std::time::Duration;

use apache_avro::types::Value;

use streamscore::codec;

use crate::common::{self, Broker};
use crate::service::{self, InProcess, Schemas, Topics};

/// Amounts ×20 (`amount_log1p` moves by ~3, far outside its training histogram) arrive in bursts
/// spread over several 400 ms windows, so at least `consecutive_windows` (3) windows cross; the
/// channel mix is untouched. Expect a `DriftAlert` (schema id 5, the local id after ShadowScore's
/// 4) for `amount_log1p`, one per statistic (not one per window), none for `channel=POS` or any
/// other unshifted column, and the alert counter and gauge on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifted_amounts_raise_a_drift_alert_for_that_column_only() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let port = service::free_port();
    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        Some(port),
        "[drift]\ninterval = \"400ms\"\n",
    ));
    let running = InProcess::start(cfg);
    let (bursts, per_burst) = (8u64, 500usize);
    for i in 0..bursts {
        common::produce_values(&bootstrap, &topics.input, service::shifted(per_burst, 100 + i, 20.0)).await;
        let want = (i + 1) * per_burst as u64;
        assert!(running.wait_outcomes(want, Duration::from_secs(90)).await, "only {} outcomes", running.outcomes());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let metrics = tokio::task::spawn_blocking(move || common::http("GET", &url, None)).await.expect("metrics").body;
    running.stop().await;

    let messages =
        common::consume_until_quiet(&bootstrap, &topics.monitoring, Duration::from_secs(2), Duration::from_secs(20))
            .await;
    let report_schema = codec::parse_schema(codec::DRIFT_REPORT_SCHEMA).expect("report schema");
    let alert_schema = codec::parse_schema(codec::DRIFT_ALERT_SCHEMA).expect("alert schema");
    let (mut reports, mut alerts) = (0, Vec::new());
    for m in &messages {
        let id = u32::from_be_bytes(rdkafka::Message::payload(m).expect("payload")[1..5].try_into().unwrap());
        match id {
            3 => {
                service::decode_framed(m, &report_schema);
                reports += 1;
            }
            5 => {
                let a = service::decode_framed(m, &alert_schema);
                alerts.push((a.str("column"), a.str("statistic"), a.fields.get("windows").cloned()));
            }
            other => panic!("unexpected schema id {other} on the monitoring topic"),
        }
    }
    assert!(reports >= 3, "{reports} drift reports");
    let amount: Vec<_> = alerts.iter().filter(|(c, _, _)| c == "amount_log1p").collect();
    for statistic in ["psi", "js", "ks_p_value"] {
        let n = amount.iter().filter(|(_, s, _)| s == statistic).count();
        assert_eq!(n, 1, "one {statistic} alert for amount_log1p (once per crossing), got {alerts:?}");
    }
    assert!(amount.iter().all(|(_, _, w)| *w == Some(Value::Int(3))), "{amount:?}");
    assert!(alerts.iter().all(|(c, _, _)| c != "channel=POS"), "control column alerted: {alerts:?}");
    // The score moves with the amount (it is a model input); nothing else was shifted.
    assert!(
        alerts.iter().all(|(c, _, _)| c == "amount_log1p" || c == "score"),
        "an unshifted column alerted: {alerts:?}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("streamscore_drift_alerts_total")
            && l.contains("column=\"amount_log1p\"")
            && l.contains("statistic=\"psi\"")),
        "no alert counter on /metrics"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("streamscore_drift_alerting") && l.contains("amount_log1p")),
        "no alerting gauge"
    );
}
