//! The admin API and the repository watcher against a fake data plane (no broker): a thread
//! that answers `DeployRequest`s the way `model::deploy` documents, over a temporary model
//! repository holding copies of the shipped model.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use streamscore::admin::{self, RateLimiter};
use streamscore::config::{AdminToken, Config};
use streamscore::model::deploy::{
    ChallengerMode, DeployCommand, DeployControl, DeployError, DeployRequest, DeploymentState, DeploymentView,
    VersionRef,
};
use streamscore::repository::{ControlPlane, ControlSettings};

const TOKEN: &str = "test-admin-token-0123456789";
/// Debug builds on a busy 2-core machine: the gate's latency limit is not what these tests check.
const RELAXED: &str = r#"{"overrides": {"max_batch_latency_ms": 5000}}"#;

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ort_library() -> PathBuf {
    streamscore::model::project_onnxruntime_library(&project())
        .unwrap_or_else(|| panic!("no libonnxruntime.so.* (ORT_DYLIB_PATH or .venv): run `make test`"))
}

/// `<tmp>/fraud_mlp/<v>/` copies of the shipped model for each of `versions`, each manifest's
/// `version` set to its directory name.
fn repository(versions: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for v in versions {
        add_version(root.path(), v);
    }
    root
}

fn add_version(root: &Path, version: &str) -> PathBuf {
    let dir = root.join("fraud_mlp").join(version);
    copy_version(&dir, version);
    dir
}

fn copy_version(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let src = project().join("models/fraud_mlp/1");
    for f in ["model.onnx", "validation.jsonl", "manifest.json"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy model");
    }
    edit_manifest(dir, |m| m["version"] = json!(version));
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn vref(v: &str) -> VersionRef {
    VersionRef { name: "fraud_mlp".into(), version: v.into() }
}

/// The inference thread's side of the contract, without inference: applies each command to a
/// `DeploymentState` and answers with it. Records what it applied.
struct FakeDataPlane {
    applied: Arc<Mutex<Vec<String>>>,
}

impl FakeDataPlane {
    fn start(rx: crossbeam_channel::Receiver<DeployRequest>) -> Self {
        Self::publishing(rx, None)
    }

    /// As `start`, also publishing every new state into `view` as the inference thread does.
    fn publishing(rx: crossbeam_channel::Receiver<DeployRequest>, view: Option<DeploymentView>) -> Self {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let log = applied.clone();
        std::thread::spawn(move || {
            let mut state = DeploymentState { champion: vref("1"), challenger: None, rollback: None };
            // The challenger's session lives here, as it would on the inference thread.
            let mut _challenger = None;
            for (cmd, reply) in rx {
                log.lock().unwrap().push(format!("{cmd:?}"));
                let r = match cmd {
                    DeployCommand::Promote(m) => {
                        let new = VersionRef::from(&*m.info);
                        if state.challenger.as_ref().is_some_and(|(c, _)| *c == new) {
                            state.challenger = None;
                            _challenger = None;
                        }
                        state.rollback = Some(std::mem::replace(&mut state.champion, new));
                        Ok(state.clone())
                    }
                    DeployCommand::Challenger { model, mode } => {
                        state.challenger = Some((VersionRef::from(&*model.info), mode));
                        _challenger = Some(model);
                        Ok(state.clone())
                    }
                    DeployCommand::SetCanaryWeight(w) => match &mut state.challenger {
                        _ if !(0.0..=1.0).contains(&w) => Err(DeployError::BadWeight(w)),
                        Some((_, ChallengerMode::Canary { weight })) => {
                            *weight = w;
                            Ok(state.clone())
                        }
                        _ => Err(DeployError::NoCanary),
                    },
                    DeployCommand::ClearChallenger => {
                        state.challenger = None;
                        _challenger = None;
                        Ok(state.clone())
                    }
                    DeployCommand::Rollback => match state.rollback.take() {
                        None => Err(DeployError::NothingToRollBack),
                        Some(r) => {
                            state.rollback = Some(std::mem::replace(&mut state.champion, r));
                            Ok(state.clone())
                        }
                    },
                };
                if let (Ok(state), Some(view)) = (&r, &view) {
                    *view.lock().unwrap() = Some(state.clone());
                }
                let _ = reply.send(r);
            }
        });
        Self { applied }
    }

    fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap().clone()
    }
}

/// `extra_model_keys` are added to `[model]`; without a `watch_interval` there, it is "0s".
fn config(root: &Path, extra_model_keys: &str) -> Config {
    let watch = if extra_model_keys.contains("watch_interval") { "" } else { "watch_interval = \"0s\"\n" };
    let toml = format!(
        "[model]\ndir = \"{}\"\nonnxruntime_library = \"{}\"\n{watch}{extra_model_keys}\n\
         [schemas]\nreader_schema = \"{}\"\n",
        root.join("fraud_mlp/1").display(),
        ort_library().display(),
        project().join("schemas/transaction.avsc").display(),
    );
    Config::from_toml_str(&toml, "admin-test", &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// A control plane over `root` with a fake data plane, served on 127.0.0.1:0.
struct Harness {
    addr: SocketAddr,
    control: Arc<ControlPlane>,
    data_plane: FakeDataPlane,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Runs the server; dropped (stopping it) with the harness.
    _runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn start(root: &Path, extra_model_keys: &str, rate_per_minute: u32) -> Self {
        let cfg = config(root, extra_model_keys);
        let settings = ControlSettings::from_config(&cfg).expect("the config has a repository");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let data_plane = FakeDataPlane::start(rx);
        let initial = DeploymentState { champion: vref("1"), challenger: None, rollback: None };
        let control = Arc::new(ControlPlane::new(settings, tx, Some(initial)));
        let router =
            admin::router(control.clone(), AdminToken::new(TOKEN), Arc::new(RateLimiter::per_minute(rate_per_minute)));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(admin::serve_on(listener, router, async move {
            let _ = stopped.await;
        }));
        Self { addr, control, data_plane, stop: Some(stop), _runtime: runtime }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(self.addr, method, path, Some(&format!("Bearer {TOKEN}")), body)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
fn request(addr: SocketAddr, method: &str, path: &str, authorization: Option<&str>, body: Option<&str>) -> Reply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let body = if body.trim().is_empty() { Value::Null } else { serde_json::from_str(body).unwrap_or(json!(body)) };
    Reply { status, headers, body }
}

fn state_of(listing: &Value, version: &str) -> Value {
    listing["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .cloned()
        .unwrap_or_else(|| panic!("version {version} not listed: {listing:#}"))
}

/// The value of one Prometheus sample line (`name{labels} value`), 0 when absent.
fn metric(name_and_labels: &str) -> f64 {
    let text = streamscore::telemetry::prometheus().render();
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[test]
fn requests_without_or_with_a_wrong_token_are_refused() {
    streamscore::telemetry::prometheus();
    let root = repository(&["1"]);
    let h = Harness::start(root.path(), "", 1000);
    let before = metric("streamscore_admin_requests_total{route=\"list\",result=\"unauthorized\"}");
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN), Some("Basic dGVzdA=="), Some("Bearer ")] {
        let r = request(h.addr, "GET", "/admin/models", auth, None);
        assert_eq!(r.status, 401, "{auth:?}: {r:?}");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{r:?}");
        assert!(!r.body.to_string().contains(TOKEN), "{r:?}");
    }
    // The token with another prefix or a suffix is wrong too.
    let r = request(h.addr, "GET", "/admin/models", Some(&format!("Bearer {TOKEN}x")), None);
    assert_eq!(r.status, 401);
    // Mutations are guarded the same way, and unknown routes do not reveal themselves.
    assert_eq!(request(h.addr, "POST", "/admin/rollback", None, None).status, 401);
    assert_eq!(request(h.addr, "POST", "/admin/nope", None, None).status, 401);
    assert_eq!(h.call("POST", "/admin/nope", None).status, 404);
    assert_eq!(request(h.addr, "GET", "/admin/rollback", None, None).status, 401, "wrong method, no token");
    assert_eq!(h.call("GET", "/admin/rollback", None).status, 405);
    assert!(h.data_plane.applied().is_empty(), "nothing reached the data plane");
    let after = metric("streamscore_admin_requests_total{route=\"list\",result=\"unauthorized\"}");
    assert!(after - before >= 6.0, "counted: {before} -> {after}");
    // Any case of the scheme works with the right token.
    let r = request(h.addr, "GET", "/admin/models", Some(&format!("bearer {TOKEN}")), None);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn requests_beyond_the_rate_limit_get_429_with_retry_after() {
    let root = repository(&["1"]);
    let h = Harness::start(root.path(), "", 3);
    // Unauthenticated requests take from the same bucket (token guessing is rate limited).
    assert_eq!(request(h.addr, "GET", "/admin/models", None, None).status, 401);
    for _ in 0..2 {
        assert_eq!(h.call("GET", "/admin/models", None).status, 200);
    }
    let r = h.call("GET", "/admin/models", None);
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
    assert!((1..=20).contains(&retry), "3 a minute: a token every 20 s, got {retry}");
    assert_eq!(request(h.addr, "GET", "/admin/models", None, None).status, 429);
}

#[test]
fn lifecycle_load_canary_shadow_promote_rollback_unload() {
    let root = repository(&["1", "2", "3"]);
    let h = Harness::start(root.path(), "", 1000);

    let list = h.call("GET", "/admin/models", None);
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.body["model"], "fraud_mlp");
    assert_eq!(list.body["deployment"]["champion"]["version"], "1");
    assert_eq!(state_of(&list.body, "1")["state"], "champion");
    assert_eq!(state_of(&list.body, "2")["state"], "available");
    assert_eq!(state_of(&list.body, "3")["state"], "available");

    // Nothing to roll back to yet: the data plane's refusal is a 409 naming it.
    let r = h.call("POST", "/admin/rollback", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("no previous version"), "{r:?}");

    // load: verified and warmed up, serving nothing; the data plane is not involved.
    let r = h.call("POST", "/admin/models/2/load", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state_of(&r.body, "2")["state"], "loaded");
    assert_eq!(h.data_plane.applied(), vec!["Rollback"]);

    // canary at 20%, then a new weight for the running canary, then a bad one.
    let r = h.call("POST", "/admin/models/2/canary", Some(r#"{"weight": 0.2}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["challenger"][0]["version"], "2");
    assert_eq!(r.body["challenger"][1], json!({"mode": "canary", "weight": 0.2}));
    let r = h.call("POST", "/admin/models/2/canary", Some(r#"{"weight": 0.5}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        state_of(&h.call("GET", "/admin/models", None).body, "2"),
        json!({"version": "2", "state": "canary", "weight": 0.5, "on_disk": true})
    );
    assert_eq!(h.call("POST", "/admin/models/2/canary", Some(r#"{"weight": 1.5}"#)).status, 400);
    assert_eq!(h.call("POST", "/admin/models/2/canary", Some(r#"{"share": 0.5}"#)).status, 400);
    assert_eq!(h.call("POST", "/admin/models/1/canary", Some(r#"{"weight": 0.5}"#)).status, 409, "champion");

    // shadow replaces the canary; clear removes it.
    let r = h.call("POST", "/admin/models/3/shadow", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["challenger"][1], json!({"mode": "shadow"}));
    let list = h.call("GET", "/admin/models", None).body;
    assert_eq!(state_of(&list, "3")["state"], "shadow");
    assert_eq!(state_of(&list, "2")["state"], "available");
    let r = h.call("POST", "/admin/challenger/clear", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["challenger"], Value::Null);
    assert_eq!(h.call("POST", "/admin/challenger/clear", None).status, 409, "nothing to clear");

    // promote: the gate runs (the shipped model passes it), then version 2 is the champion.
    let r = h.call("POST", "/admin/models/2/promote", Some(RELAXED));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["champion"]["version"], "2");
    assert_eq!(r.body["rollback"]["version"], "1");
    assert_eq!(h.call("POST", "/admin/models/2/promote", None).status, 409, "already the champion");

    // rollback: one call, the previous champion serves again.
    let r = h.call("POST", "/admin/rollback", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.body["champion"]["version"].as_str(), r.body["rollback"]["version"].as_str()),
        (Some("1"), Some("2"))
    );
    let list = h.call("GET", "/admin/models", None).body;
    assert_eq!(state_of(&list, "2")["state"], "rollback");

    // unload: only a loaded version that serves nothing.
    assert_eq!(h.call("DELETE", "/admin/models/2", None).status, 409, "the rollback target serves");
    assert_eq!(h.call("DELETE", "/admin/models/3", None).status, 409, "not loaded");
    assert_eq!(h.call("POST", "/admin/models/3/load", None).status, 200);
    let r = h.call("DELETE", "/admin/models/3", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state_of(&r.body, "3")["state"], "available");

    // Unknown versions and names that are not version directories.
    assert_eq!(h.call("POST", "/admin/models/9/load", None).status, 404);
    assert_eq!(h.call("POST", "/admin/models/..%2F..%2Fetc/load", None).status, 404);

    let applied = h.data_plane.applied();
    assert_eq!(
        applied,
        vec![
            "Rollback",
            "Challenger(fraud_mlp/2, Canary { weight: 0.2 })",
            "SetCanaryWeight(0.5)",
            "Challenger(fraud_mlp/3, Shadow)",
            "ClearChallenger",
            "Promote(fraud_mlp/2)",
            "Rollback",
        ]
    );
    assert_eq!(h.control.deployment().expect("deployment").champion.version, "1");
}

#[test]
fn promotion_whose_gate_fails_is_refused_with_the_report_unless_forced() {
    let root = repository(&["1"]);
    let v2 = add_version(root.path(), "2");
    edit_manifest(&v2, |m| m["validation"]["min_roc_auc"] = json!(0.99));
    let h = Harness::start(root.path(), "", 1000);

    let r = h.call("POST", "/admin/models/2/promote", Some(RELAXED));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("validation gate"), "{r:?}");
    let report = &r.body["report"];
    assert_eq!(report["passed"], false, "{r:?}");
    let auc = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "roc_auc").expect("roc_auc check");
    assert_eq!((auc["status"].as_str(), auc["limit"].as_f64()), (Some("fail"), Some(0.99)), "{auc}");
    assert!(h.data_plane.applied().is_empty(), "a failed gate changes nothing");
    assert_eq!(h.control.deployment().expect("deployment").champion.version, "1");

    // An API caller may relax a limit for one run (it is authenticated, like ?force).
    let r = h.call(
        "POST",
        "/admin/models/2/promote",
        Some(r#"{"overrides": {"min_roc_auc": 0.5, "max_batch_latency_ms": 5000}}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(h.call("POST", "/admin/rollback", None).status, 200);

    // ?force=true skips the gate.
    let r = h.call("POST", "/admin/models/2/promote?force=true", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["champion"]["version"], "2");
    assert_eq!(h.call("POST", "/admin/models/2/promote?force=maybe", None).status, 400);
}

#[test]
fn tampered_or_truncated_version_is_refused_counted_and_the_champion_keeps_serving() {
    streamscore::telemetry::prometheus();
    let root = repository(&["1"]);
    let v2 = add_version(root.path(), "2");
    let mut bytes = std::fs::read(v2.join("model.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(v2.join("model.onnx"), &bytes).unwrap();
    let v3 = add_version(root.path(), "3");
    let bytes = std::fs::read(v3.join("model.onnx")).unwrap();
    std::fs::write(v3.join("model.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    // Version 4's manifest claims another version than its directory.
    let v4 = add_version(root.path(), "4");
    edit_manifest(&v4, |m| m["version"] = json!("5"));
    let h = Harness::start(root.path(), "", 1000);

    let checksum = "streamscore_model_load_failures_total{reason=\"checksum\"}";
    let before = metric(checksum);
    for (version, path) in [("2", "/admin/models/2/load"), ("3", "/admin/models/3/promote?force=true")] {
        let r = h.call("POST", path, None);
        assert_eq!(r.status, 422, "{version}: {r:?}");
        assert_eq!(r.body["reason"], "checksum", "{r:?}");
        let error = r.body["error"].as_str().unwrap();
        assert!(error.contains("sha256") && error.contains("model.onnx"), "a clear error: {error}");
        assert!(error.contains("keeps serving"), "{error}");
    }
    assert!(metric(checksum) - before >= 2.0, "counted by Model::load: {before} -> {}", metric(checksum));
    let changes = metric("streamscore_model_changes_total{action=\"load\",result=\"refused\"}");
    assert!(changes >= 1.0, "counted as a refused change");

    let r = h.call("POST", "/admin/models/4/load", None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("version 5"), "{r:?}");

    let list = h.call("GET", "/admin/models", None).body;
    assert_eq!(state_of(&list, "2")["state"], "failed");
    assert_eq!(state_of(&list, "2")["reason"], "checksum");
    assert_eq!(state_of(&list, "3")["state"], "failed");
    assert_eq!(state_of(&list, "4")["reason"], "manifest");
    assert_eq!(list["deployment"]["champion"]["version"], "1", "the champion keeps serving");
    assert!(h.data_plane.applied().is_empty(), "nothing refused reaches the data plane");
}

#[test]
fn watcher_applies_the_policy_to_a_new_version_and_to_a_changed_manifest() {
    let root = repository(&["1"]);
    let h = Harness::start(
        root.path(),
        "watch_interval = \"100ms\"\non_new_version = \"canary\"\ncanary_weight = 0.1",
        1000,
    );
    let watcher = h.control.spawn_watcher().expect("spawn").expect("watching");

    // A CI job copies into a hidden directory and renames it when complete.
    let incoming = root.path().join("fraud_mlp/.incoming-2");
    copy_version(&incoming, "2");
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.data_plane.applied().is_empty(), "hidden directories are ignored");
    std::fs::rename(&incoming, root.path().join("fraud_mlp/2")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = h.call("GET", "/admin/models", None).body;
        if state_of_opt(&list, "2").is_some_and(|s| s["state"] == "canary") {
            assert_eq!(state_of(&list, "2")["weight"], 0.1);
            break;
        }
        assert!(Instant::now() < deadline, "the watcher did not pick up version 2: {list:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(h.data_plane.applied(), vec!["Challenger(fraud_mlp/2, Canary { weight: 0.1 })"]);

    // A new version whose model is tampered with is refused; the canary and champion stay.
    let v3 = root.path().join("fraud_mlp/.incoming-3");
    copy_version(&v3, "3");
    edit_manifest(&v3, |m| m["sha256"] = json!("0".repeat(64)));
    std::fs::rename(&v3, root.path().join("fraud_mlp/3")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = h.call("GET", "/admin/models", None).body;
        if state_of_opt(&list, "3").is_some_and(|s| s["state"] == "failed") {
            assert_eq!(state_of(&list, "3")["reason"], "checksum");
            assert_eq!(state_of(&list, "2")["state"], "canary");
            break;
        }
        assert!(Instant::now() < deadline, "version 3 was not refused: {list:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its manifest fixed in place: a changed directory is tried again.
    let good = std::fs::read(root.path().join("fraud_mlp/2/manifest.json")).unwrap();
    let mut fixed: Value = serde_json::from_slice(&good).unwrap();
    fixed["version"] = json!("3");
    std::fs::write(root.path().join("fraud_mlp/3/manifest.json"), serde_json::to_vec_pretty(&fixed).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.control.deployment().and_then(|d| d.challenger).map(|(v, _)| v.version) != Some("3".into()) {
        assert!(Instant::now() < deadline, "version 3 was not retried: {:?}", h.data_plane.applied());
        std::thread::sleep(Duration::from_millis(50));
    }
    watcher.stop();
    assert_eq!(h.control.deployment().expect("deployment").champion.version, "1");
}

fn state_of_opt(listing: &Value, version: &str) -> Option<Value> {
    listing["versions"].as_array()?.iter().find(|v| v["version"] == version).cloned()
}

#[test]
fn watcher_with_load_policy_keeps_new_versions_ready_without_serving_them() {
    let root = repository(&["1"]);
    let h = Harness::start(root.path(), "watch_interval = \"100ms\"", 1000);
    let _watcher = h.control.spawn_watcher().expect("spawn").expect("watching");
    add_version(root.path(), "2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = h.call("GET", "/admin/models", None).body;
        if state_of_opt(&list, "2").is_some_and(|s| s["state"] == "loaded") {
            break;
        }
        assert!(Instant::now() < deadline, "version 2 was not loaded: {list:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.data_plane.applied().is_empty(), "load serves nothing");
    // Promoting a loaded version uses the loaded copy (and runs the gate first).
    let r = h.call("POST", "/admin/models/2/promote", Some(RELAXED));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(h.data_plane.applied(), vec!["Promote(fraud_mlp/2)"]);
}

#[test]
fn over_a_deploy_control_the_listing_follows_what_the_data_plane_publishes() {
    let root = repository(&["1", "2"]);
    let settings = ControlSettings::from_config(&config(root.path(), "")).expect("repository");
    let (control, end) = DeployControl::channel();
    let view = end.state.clone();
    let data_plane = FakeDataPlane::publishing(end.receiver, Some(end.state));
    let plane = ControlPlane::from_control(settings, &control);
    // Before the pipeline has loaded its model, nothing is reported as serving.
    let listing = plane.list().expect("list");
    assert_eq!(listing.deployment, None);
    assert!(listing.versions.iter().all(|v| v.state == streamscore::repository::VersionState::Available));
    // The pipeline publishes its champion; the listing reads it.
    *view.lock().unwrap() = Some(DeploymentState { champion: vref("1"), challenger: None, rollback: None });
    assert_eq!(plane.list().unwrap().versions[0].state, streamscore::repository::VersionState::Champion);
    let state = plane.promote("2", true, &Default::default(), "test").expect("promote");
    assert_eq!((state.champion.version.as_str(), state.rollback.map(|r| r.version)), ("2", Some("1".to_string())));
    assert_eq!(control.state().map(|d| d.champion.version), Some("2".to_string()));
    assert_eq!(data_plane.applied(), vec!["Promote(fraud_mlp/2)"]);
}

/// The pipeline's one call: `admin::start` over a `DeployControl` serves the API on
/// `admin.bind` with the configured token and runs the watcher.
#[test]
fn start_serves_the_configured_api_and_watcher_over_a_deploy_control() {
    let root = repository(&["1"]);
    let toml = format!(
        "[model]\ndir = \"{}\"\nonnxruntime_library = \"{}\"\nwatch_interval = \"100ms\"\n\
         [schemas]\nreader_schema = \"{}\"\n[admin]\nenabled = true\nbind = \"127.0.0.1:0\"\n",
        root.path().join("fraud_mlp/1").display(),
        ort_library().display(),
        project().join("schemas/transaction.avsc").display(),
    );
    let env = [(streamscore::config::ADMIN_TOKEN_ENV.to_string(), TOKEN.to_string())];
    let cfg = Config::from_toml_str(&toml, "admin-test", &env).expect("valid");
    let (control, end) = DeployControl::channel();
    *end.state.lock().unwrap() = Some(DeploymentState { champion: vref("1"), challenger: None, rollback: None });
    let data_plane = FakeDataPlane::publishing(end.receiver, Some(end.state));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let running = runtime.block_on(admin::start(&cfg, &control)).expect("start");
    let addr = running.admin_addr.expect("admin API listening");
    assert_eq!(request(addr, "GET", "/admin/models", None, None).status, 401);
    add_version(root.path(), "2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(addr, "GET", "/admin/models", Some(&format!("Bearer {TOKEN}")), None);
        assert_eq!(r.status, 200, "{r:?}");
        if state_of_opt(&r.body, "2").is_some_and(|s| s["state"] == "loaded") {
            break;
        }
        assert!(Instant::now() < deadline, "the watcher did not load version 2: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = request(addr, "POST", "/admin/models/2/promote?force=true", Some(&format!("Bearer {TOKEN}")), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(control.state().map(|d| d.champion.version), Some("2".to_string()));
    assert_eq!(data_plane.applied(), vec!["Promote(fraud_mlp/2)"]);
    runtime.block_on(running.stop());
    assert!(std::net::TcpStream::connect(addr).is_err(), "the admin API stopped");
}

/// Writes log lines into a shared buffer (the test reads them back).
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Changes and refusals are logged with who and what; neither the token nor a wrong one is.
/// (The only test in this binary that installs a global subscriber.)
#[test]
fn changes_and_refusals_are_logged_without_any_token() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init()
        .expect("the only global subscriber in this binary");
    let root = repository(&["1", "2"]);
    let h = Harness::start(root.path(), "", 1000);
    let wrong = "Bearer guessed-token-abcdefghijkl";
    assert_eq!(request(h.addr, "GET", "/admin/models", Some(wrong), None).status, 401);
    assert_eq!(h.call("POST", "/admin/models/2/load", None).status, 200);
    assert_eq!(h.call("POST", "/admin/models/2/promote?force=true", None).status, 200);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("admin request refused"), "{text}");
    let applied: Vec<&str> = text.lines().filter(|l| l.contains("model change applied")).collect();
    assert!(applied.iter().any(|l| l.contains("action=\"load\"") || l.contains("action=load")), "{text}");
    assert!(applied.iter().any(|l| l.contains("promote_forced") && l.contains("actor=\"admin 127.0.0.1:")), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains("guessed-token"), "a token reached the log:\n{text}");
}

/// Rollback by configuration change, without a restart: the watcher re-reads the file the
/// service started with, and a `model.dir` naming another version of the model promotes it;
/// changing it back rolls back. An invalid edit, or a directory outside the repository,
/// changes nothing.
#[test]
fn editing_model_dir_in_the_config_file_switches_the_served_version() {
    let root = repository(&["1", "2"]);
    for v in ["1", "2"] {
        // No validation gate here: its latency limit is not what this test checks.
        edit_manifest(&root.path().join("fraud_mlp").join(v), |m| {
            m.as_object_mut().expect("manifest object").remove("validation");
        });
    }
    let file = root.path().join("streamscore.toml");
    let write = |dir: &Path| {
        let text = format!(
            "[model]\ndir = \"{}\"\nonnxruntime_library = \"{}\"\nwatch_interval = \"0s\"\n\
             [schemas]\nreader_schema = \"{}\"\n",
            dir.display(),
            ort_library().display(),
            project().join("schemas/transaction.avsc").display()
        );
        std::fs::write(&file, text).expect("write config");
    };
    let version = |v: &str| root.path().join("fraud_mlp").join(v);
    write(&version("1"));
    let cfg = Config::load_with_env(Some(&file), &[]).expect("config");
    assert_eq!(cfg.source.as_deref(), Some(file.as_path()));
    let settings = ControlSettings::from_config(&cfg).expect("repository");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let data_plane = FakeDataPlane::start(rx);
    let initial = DeploymentState { champion: vref("1"), challenger: None, rollback: None };
    let control = ControlPlane::new(settings, tx, Some(initial));
    let champion = || control.deployment().map(|d| d.champion.version);

    assert_eq!(control.follow_config_file(), None, "unchanged file: nothing to do");
    write(&version("2"));
    assert_eq!(control.follow_config_file().as_deref(), Some("2"));
    assert_eq!(champion().as_deref(), Some("2"));
    assert_eq!(control.follow_config_file(), None, "a change is acted on once");

    std::fs::write(&file, "[model]\ndir = 5\n").expect("write");
    assert_eq!(control.follow_config_file(), None, "an invalid file changes nothing");
    write(&root.path().join("elsewhere"));
    assert_eq!(control.follow_config_file(), None, "a directory outside the repository changes nothing");
    assert_eq!(champion().as_deref(), Some("2"));

    write(&version("1"));
    assert_eq!(control.follow_config_file().as_deref(), Some("1"), "back to version 1: a rollback");
    let d = control.deployment().expect("deployment");
    assert_eq!((d.champion.version.as_str(), d.rollback.map(|r| r.version)), ("1", Some("2".to_string())));
    assert_eq!(data_plane.applied(), vec!["Promote(fraud_mlp/2)", "Promote(fraud_mlp/1)"]);
}
