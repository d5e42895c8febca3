//! Secrets given in the config file or through `STREAMSCORE_*` variables never appear in what
//! the binary prints (`check-config`, the "starting streamscore" log line, error messages), and
//! they are applied: the effective pass-through properties show them as `<redacted>`.
//!
//! Needs no broker: the instance starts with a registry URL nobody listens on, logs its
//! effective configuration, and stops with an error when it cannot register its schema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRETS: &[&str] = &[
    "S3CRET-sasl-password-env",
    "S3CRET-ssl-key-password-file",
    "S3CRET-ssl-key-pem-file",
    "S3CRET-keystore-password-env",
    "S3CRET-registry-password-file",
    "S3CRET-admin-token-env-0123456789abcdef",
    "S3CRET-oauth-client-secret-env",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config_file(dir: &Path) -> PathBuf {
    let root = root();
    let ort = streamscore::model::project_onnxruntime_library(&root)
        .unwrap_or_else(|| panic!("no libonnxruntime.so.* under .venv: run `make test`"));
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:9"
group_id = "redaction"
input_topics = ["in"]

[kafka.common]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "svc-streamscore"
"ssl.key.password" = "{key_password}"
"ssl.key.pem" = "{key_pem}"

[model]
dir = "{model}"
onnxruntime_library = "{ort}"

[schemas]
reader_schema = "{schema}"
registry_url = "http://127.0.0.1:9"
registry_username = "registry-user"
registry_password = "{registry_password}"

[schemas.local]
"1" = "{schema}"

[telemetry]
http_bind = ""

[admin]
enabled = true
bind = "127.0.0.1:0"
"#,
        key_password = SECRETS[1],
        key_pem = SECRETS[2],
        registry_password = SECRETS[4],
        model = root.join("models/fraud_mlp/1").display(),
        ort = ort.display(),
        schema = root.join("schemas/transaction.avsc").display(),
    );
    let path = dir.join("secrets.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn command(config: &Path, sub: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamscore"));
    c.arg(sub)
        .arg("--config")
        .arg(config)
        .env("STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD", SECRETS[0])
        .env("STREAMSCORE_KAFKA__CONSUMER__SSL_KEYSTORE_PASSWORD", SECRETS[3])
        .env("STREAMSCORE_ADMIN_TOKEN", SECRETS[5])
        .env("STREAMSCORE_KAFKA__PRODUCER__SASL_OAUTHBEARER_CLIENT_SECRET", SECRETS[6])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_no_secret(what: &str, printed: &str) {
    for secret in SECRETS {
        assert!(!printed.contains(secret), "{what} printed the secret {secret:?}:\n{printed}");
    }
}

/// Runs with a deadline; kills the process if it does not stop by itself.
fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command.spawn().expect("start streamscore");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

#[test]
fn check_config_never_prints_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path());
    let out = output_within(command(&config, "check-config"), Duration::from_secs(60));
    let printed = text(&out);
    assert!(out.status.success(), "the config is valid:\n{printed}");
    assert_no_secret("check-config", &printed);

    // An invalid configuration: the problems are listed, still without a secret.
    let mut bad = command(&config, "check-config");
    bad.env("STREAMSCORE_ADMIN__BIND", "not an address").env("STREAMSCORE_BATCH__MAX_BATCH_SIZE", "0");
    let out = output_within(bad, Duration::from_secs(60));
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(2), "invalid config exits 2:\n{printed}");
    assert!(printed.contains("admin.bind"), "the problem names its key:\n{printed}");
    assert_no_secret("check-config (invalid)", &printed);
}

#[test]
fn startup_log_shows_secrets_applied_but_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path());
    let out = output_within(command(&config, "run"), Duration::from_secs(90));
    let printed = text(&out);
    assert_no_secret("streamscore run", &printed);
    let start = printed
        .lines()
        .find(|l| l.contains("starting streamscore"))
        .unwrap_or_else(|| panic!("no start-up line:\n{printed}"));
    // Applied (present in the effective properties, from the file and from the environment)...
    for key in
        ["sasl.password", "ssl.key.password", "ssl.key.pem", "ssl.keystore.password", "sasl.oauthbearer.client.secret"]
    {
        assert!(
            start.contains(&format!("\"{key}\": \"<redacted>\"")),
            "{key} is not shown as <redacted> in the start-up line:\n{start}"
        );
    }
    // ...while ordinary properties are printed as they are.
    assert!(start.contains("\"sasl.username\": \"svc-streamscore\""), "{start}");
    assert!(start.contains("\"security.protocol\": \"SASL_SSL\""), "{start}");
    // The instance did get past configuration (it stopped at the unreachable registry).
    assert!(!out.status.success(), "no registry listens there, so it must stop with an error:\n{printed}");
}
