//! The validation gate through the real binary: `streamscore validate` (and `keygen`/`sign`)
//! on the shipped model and on deliberately broken copies of it. No broker needed; ONNX Runtime
//! comes from `ORT_DYLIB_PATH` or the project's `.venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CHECKS: [&str; 6] =
    ["rows_scored", "score_parity", "roc_auc", "precision_at_threshold", "recall_at_threshold", "batch_latency_p99_ms"];

/// Tests that expect a pass relax the shipped 50 ms p99 budget: on a loaded 2-core test machine a
/// descheduled process can stall one batch for longer; the check itself is covered either way.
const RELAXED_LATENCY: [&str; 2] = ["--max-batch-latency-ms", "2000"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library `make test` provides (ORT_DYLIB_PATH), or the virtualenv's.
fn ort_library() -> PathBuf {
    streamscore::model::project_onnxruntime_library(repo())
        .unwrap_or_else(|| panic!("no libonnxruntime.so.* under .venv: run `make setup`"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn streamscore(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(args)
        .current_dir(repo())
        .env("ORT_DYLIB_PATH", ort_library())
        .env_remove("STREAMSCORE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run streamscore");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `validate --json` on `dir` with extra arguments: (exit code, report or None, stderr).
fn validate_json(dir: &Path, extra: &[&str]) -> (i32, Option<Value>, String) {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["validate", "--model", dir, "--json"];
    args.extend_from_slice(extra);
    let run = streamscore(&args);
    let report = serde_json::from_str(&run.stdout).ok();
    (run.code, report, run.stderr)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}"))
}

/// A copy of the shipped model directory (manifest, model, dataset) to break.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["manifest.json", "model.onnx", "validation.jsonl"] {
        std::fs::copy(repo().join("models/fraud_mlp/1").join(f), dir.path().join(f)).expect("copy");
    }
    dir
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn shipped_model_passes_the_gate_and_the_table_names_every_check() {
    let run = streamscore(&["validate", "--model", "models/fraud_mlp/1", RELAXED_LATENCY[0], RELAXED_LATENCY[1]]);
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    for name in CHECKS {
        let line = run.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {}", run.stdout));
        assert!(line.ends_with("pass"), "{line}");
    }
    assert!(run.stdout.contains("PASSED: fraud_mlp v1"), "{}", run.stdout);
    assert!(run.stdout.contains("matches the manifest"), "{}", run.stdout);
    assert!(run.stdout.contains("signature  not checked"), "{}", run.stdout);
}

#[test]
fn json_report_has_each_check_with_value_limit_and_result() {
    let (code, report, stderr) = validate_json(&repo().join("models/fraud_mlp/1"), &RELAXED_LATENCY);
    let report = report.unwrap_or_else(|| panic!("no JSON report; stderr: {stderr}"));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!((report["rows"].as_u64(), report["rows_scored"].as_u64()), (Some(4000), Some(4000)));
    assert_eq!(report["dataset_sha256_checked"], true);
    for name in CHECKS {
        let c = check(&report, name);
        assert_eq!(c["status"], "pass", "{c}");
        assert!(c["value"].is_number() && c["limit"].is_number(), "{c}");
    }
    // Rust's decode + features + ONNX Runtime reproduce the Python reference scores.
    assert!(check(&report, "score_parity")["value"].as_f64().unwrap() <= 1e-6, "{report:#}");
    assert!(report["metrics"]["roc_auc"].as_f64().unwrap() > 0.85, "{report:#}");
}

#[test]
fn a_model_scoring_the_wrong_column_fails_on_quality() {
    let dir = model_copy();
    // Column 0 is P(not fraud) = 1 - score: the same model file, a useless ranking.
    edit_manifest(dir.path(), |m| m["output"]["column"] = 0.into());
    let (code, report, stderr) = validate_json(dir.path(), &[]);
    let report = report.unwrap_or_else(|| panic!("no JSON report; stderr: {stderr}"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    let auc = check(&report, "roc_auc");
    assert_eq!(auc["status"], "fail", "{auc}");
    assert!(auc["value"].as_f64().unwrap() < 0.5, "{auc}");
    assert_eq!(check(&report, "score_parity")["status"], "fail");

    // The table says what failed.
    let run = streamscore(&["validate", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("FAILED: fraud_mlp v1 fails score_parity, roc_auc"), "{}", run.stdout);
}

#[test]
fn training_serving_skew_fails_on_parity() {
    let dir = model_copy();
    // The service would fill unknown account ages with 5.0 where training used 0.0.
    edit_manifest(dir.path(), |m| {
        let f = m["features"].as_array_mut().unwrap().iter_mut().find(|f| f["source"] == "account_age_days").unwrap();
        f["default"] = 5.0.into();
    });
    let (code, report, stderr) = validate_json(dir.path(), &[]);
    let report = report.unwrap_or_else(|| panic!("no JSON report; stderr: {stderr}"));
    assert_eq!(code, 1, "{report:#}");
    let parity = check(&report, "score_parity");
    assert_eq!(parity["status"], "fail", "{parity}");
    assert!(parity["detail"].as_str().unwrap().contains("differ from reference_score"), "{parity}");
    let over = report["metrics"]["rows_over_diff_limit"].as_u64().unwrap();
    // Only rows with a null account_age_days (about 10%) are affected.
    assert!(over > 100 && over < 1000, "{over}");
}

#[test]
fn stricter_limits_on_the_command_line_fail_a_good_model() {
    let (code, report, _) = validate_json(&repo().join("models/fraud_mlp/1"), &["--min-roc-auc", "0.99"]);
    let report = report.expect("report");
    assert_eq!(code, 1);
    let auc = check(&report, "roc_auc");
    assert_eq!((auc["status"].as_str(), auc["limit"].as_f64()), (Some("fail"), Some(0.99)));
    assert_eq!(check(&report, "recall_at_threshold")["status"], "pass");
}

#[test]
fn tampered_artifacts_are_refused_before_scoring() {
    // A dataset changed after the manifest pinned it.
    let dir = model_copy();
    let path = dir.path().join("validation.jsonl");
    let text = std::fs::read_to_string(&path).unwrap().replacen("\"label\":0", "\"label\":1", 1);
    std::fs::write(&path, text).unwrap();
    let run = streamscore(&["validate", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("validation.jsonl") && run.stderr.contains("sha256"), "{}", run.stderr);

    // A model file changed after the manifest was written.
    let dir = model_copy();
    let path = dir.path().join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let run = streamscore(&["validate", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused") && run.stderr.contains("sha256"), "{}", run.stderr);
}

#[test]
fn keygen_sign_and_a_required_signature_work_end_to_end() {
    let keys = tempfile::tempdir().unwrap();
    let prefix = keys.path().join("release");
    let run = streamscore(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (secret, public) = (keys.path().join("release.key"), keys.path().join("release.pub"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // keygen never overwrites.
    assert_ne!(streamscore(&["keygen", "--out", prefix.to_str().unwrap()]).code, 0);

    let dir = model_copy();
    let d = dir.path().to_str().unwrap();
    let trust = [
        "--trusted-public-key",
        public.to_str().unwrap(),
        "--require-signature",
        RELAXED_LATENCY[0],
        RELAXED_LATENCY[1],
    ];

    let (code, _, stderr) = validate_json(dir.path(), &trust);
    assert_eq!(code, 1, "unsigned must be refused");
    assert!(stderr.contains("not signed") && stderr.contains("manifest.json.sig"), "{stderr}");

    let run = streamscore(&["sign", "--model", d, "--key", secret.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (code, report, stderr) = validate_json(dir.path(), &trust);
    assert_eq!(code, 0, "signed by the trusted key: {stderr}");
    let report = report.unwrap();
    assert_eq!(report["passed"], true);
    let signature = report["signature"].as_str().unwrap();
    assert!(signature.starts_with("verified with") && signature.ends_with("release.pub"), "{signature}");

    // Any change to the signed manifest (here: a laxer limit) is refused.
    edit_manifest(dir.path(), |m| m["validation"]["min_roc_auc"] = 0.5.into());
    let (code, _, stderr) = validate_json(dir.path(), &trust);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not verify") && stderr.contains("release.pub"), "{stderr}");
}

#[test]
fn usage_and_input_errors_exit_2() {
    let shipped = repo().join("models/fraud_mlp/1");
    let (code, _, stderr) = validate_json(&shipped, &["--dataset", "/nonexistent/data.jsonl"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/data.jsonl"), "{stderr}");

    let (code, _, stderr) = validate_json(&shipped, &["--min-precision", "1.5"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("min_precision 1.5"), "{stderr}");

    // No `validation` object and no --dataset.
    let dir = model_copy();
    edit_manifest(dir.path(), |m| {
        m.as_object_mut().unwrap().remove("validation");
    });
    let (code, _, stderr) = validate_json(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no validation dataset"), "{stderr}");

    // A malformed row names its line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"label\": 1, \"reference_score\": 0.5}\n").unwrap();
    let (code, _, stderr) = validate_json(dir.path(), &["--dataset", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 1") && stderr.contains("missing"), "{stderr}");
}
