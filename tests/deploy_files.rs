//! Checks the deployment files against the repository, without Docker or Kubernetes:
//! `Dockerfile`, `.dockerignore`, `docker-compose.yml`, `deploy/` (Kubernetes manifests,
//! Prometheus configuration and alerts, Grafana provisioning and dashboard), `docs/deployment.md`
//! and `docs/runbook.md`.
//!
//! Uses only std, `toml`, `serde_json` and the crate itself (its config parser and metric names).
//! There is no YAML parser among the dependencies: the older compose checks read the file line
//! by line (one `services:` key at column 0, service names one level below it); the checks of
//! `deploy/` use the small YAML-subset parser further down, which refuses what it cannot read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

// ------------------------------------------------------------------------------------------
// config/streamscore.toml and python/requirements.txt
// ------------------------------------------------------------------------------------------

fn config() -> toml::Table {
    read("config/streamscore.toml").parse::<toml::Table>().expect("config/streamscore.toml is valid TOML")
}

fn config_str<'a>(cfg: &'a toml::Table, section: &str, key: &str) -> &'a str {
    cfg.get(section)
        .and_then(|s| s.get(key))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("config/streamscore.toml has no string {section}.{key}"))
}

fn input_topics(cfg: &toml::Table) -> Vec<String> {
    let topics = cfg
        .get("kafka")
        .and_then(|k| k.get("input_topics"))
        .and_then(toml::Value::as_array)
        .expect("config/streamscore.toml has kafka.input_topics");
    let topics: Vec<String> =
        topics.iter().map(|t| t.as_str().expect("kafka.input_topics holds strings").to_string()).collect();
    assert!(!topics.is_empty(), "kafka.input_topics is empty in config/streamscore.toml");
    topics
}

/// Every topic streamscore reads or writes with the shipped defaults.
fn default_topics(cfg: &toml::Table) -> Vec<String> {
    let mut topics = input_topics(cfg);
    for key in ["scored_topic", "dead_letter_topic", "monitoring_topic"] {
        topics.push(config_str(cfg, "kafka", key).to_string());
    }
    topics
}

/// The port of `telemetry.http_bind` in the shipped config.
fn telemetry_port(cfg: &toml::Table) -> String {
    let bind = config_str(cfg, "telemetry", "http_bind");
    let (_, port) = bind.rsplit_once(':').unwrap_or_else(|| panic!("telemetry.http_bind {bind:?} has no port"));
    port.to_string()
}

/// A duration as written in the config and compose files (`10s`, `500ms`, `1m`), in seconds.
fn seconds(text: &str) -> f64 {
    let s = text.trim().trim_matches(|c| c == '"' || c == '\'');
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("cannot read the duration {text:?}"));
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => panic!("unsupported unit in the duration {text:?} (use one of ms, s, m, h)"),
    };
    number * scale
}

/// The version of the `onnxruntime==` pin in python/requirements.txt.
fn onnxruntime_pin() -> String {
    let text = read("python/requirements.txt");
    let pins: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.strip_prefix("onnxruntime=="))
        .map(|v| v.split(|c: char| c.is_whitespace() || c == ';').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        pins.len(),
        1,
        "python/requirements.txt must pin onnxruntime exactly once (onnxruntime==X.Y.Z): {pins:?}"
    );
    let version = pins[0].clone();
    assert!(
        !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "unexpected onnxruntime pin {version:?} in python/requirements.txt"
    );
    version
}

/// Every literal version written right after `needle` (`libonnxruntime.so.1.2.3`,
/// `onnxruntime==1.2.3`); variable forms such as `${ORT_VERSION}` or globs are skipped.
fn literal_versions(text: &str, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        rest = &rest[i + needle.len()..];
        let version: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let version = version.trim_end_matches('.');
        if !version.is_empty() {
            out.push(version.to_string());
        }
    }
    out
}

/// Panics unless `image` names a tag other than `latest` (or a digest).
fn check_pinned_image(image: &str, origin: &str) {
    if image.contains("@sha256:") {
        return;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() && tag != "latest" => {}
        _ => panic!("{origin}: image `{image}` is not pinned to a version tag"),
    }
}

// ------------------------------------------------------------------------------------------
// Dockerfile
// ------------------------------------------------------------------------------------------

/// One instruction: its keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    /// The `AS` name; empty for an unnamed stage.
    name: String,
    base: String,
    line: usize,
    body: Vec<Instruction>,
}

struct Dockerfile {
    /// Instructions before the first `FROM` (global `ARG`s).
    global: Vec<Instruction>,
    stages: Vec<Stage>,
}

fn parse_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // Comment and blank lines carry nothing, also inside a continued instruction.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        if !entry.1.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body);
        if !continues {
            if let Some((line, text)) = current.take() {
                let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text.as_str(), ""));
                out.push(Instruction { line, keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() });
            }
        }
    }
    assert!(current.is_none(), "the Dockerfile ends inside a continued (\\) instruction");
    out
}

impl Dockerfile {
    fn load() -> Self {
        let mut global = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for ins in parse_instructions(&read("Dockerfile")) {
            if ins.keyword == "FROM" {
                let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let base = words.first().unwrap_or_else(|| panic!("Dockerfile:{}: FROM without an image", ins.line));
                let name = match words.as_slice() {
                    [_, kw, name, ..] if kw.eq_ignore_ascii_case("as") => name.to_string(),
                    _ => String::new(),
                };
                stages.push(Stage { name, base: base.to_string(), line: ins.line, body: Vec::new() });
            } else if let Some(stage) = stages.last_mut() {
                stage.body.push(ins);
            } else {
                global.push(ins);
            }
        }
        assert!(!stages.is_empty(), "the Dockerfile has no FROM");
        Dockerfile { global, stages }
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the Dockerfile has no `FROM ... AS {name}` stage"))
    }
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.body.iter().filter(move |i| i.keyword == keyword)
    }

    fn last_of(&self, keyword: &str) -> Option<&Instruction> {
        self.body.iter().rev().find(|i| i.keyword == keyword)
    }

    fn env(&self, var: &str) -> Option<String> {
        self.all("ENV").flat_map(|i| env_pairs(&i.args)).filter(|(k, _)| k == var).map(|(_, v)| v).last()
    }
}

/// An instruction's words: the JSON array form (`["a", "b"]`) or whitespace-separated.
fn words(args: &str) -> Vec<String> {
    let t = args.trim();
    if t.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(t) {
            return v;
        }
    }
    t.split_whitespace().map(str::to_string).collect()
}

/// `ENV A=1 B=2` or the legacy `ENV A 1`.
fn env_pairs(args: &str) -> Vec<(String, String)> {
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    let first = args.split_whitespace().next().unwrap_or("");
    if first.contains('=') {
        args.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), unquote(v))).collect()
    } else {
        let (k, v) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        vec![(k.to_string(), unquote(v))]
    }
}

/// A `COPY`/`ADD`: `--from=` stage (if any), sources and destination.
struct Copy {
    line: usize,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn parse_copy(ins: &Instruction) -> Copy {
    let mut rest = ins.args.trim();
    let mut from = None;
    while rest.starts_with("--") {
        let (flag, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Some(stage) = flag.strip_prefix("--from=") {
            from = Some(stage.to_string());
        }
        rest = tail.trim_start();
    }
    let mut w = words(rest);
    let dest = w.pop().unwrap_or_else(|| panic!("Dockerfile:{}: {} without a destination", ins.line, ins.keyword));
    assert!(!w.is_empty(), "Dockerfile:{}: {} without a source", ins.line, ins.keyword);
    Copy { line: ins.line, from, sources: w, dest }
}

/// Plain path patterns of `.dockerignore` (wildcard and `!` patterns are left out).
fn dockerignore_paths() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter(|l| !l.contains(['*', '?', '[']))
        .map(|l| l.trim_start_matches("./").trim_matches('/').to_string())
        .collect()
}

#[test]
fn dockerfile_has_the_expected_stages() {
    let df = Dockerfile::load();
    let names: Vec<&str> = df.stages.iter().map(|s| s.name.as_str()).collect();
    for want in ["ort", "build", "train", "runtime"] {
        assert!(names.contains(&want), "the Dockerfile has no `FROM ... AS {want}` stage (stages: {names:?})");
    }
    assert_eq!(
        names.last(),
        Some(&"runtime"),
        "the runtime stage must come last: a plain `docker build` (and compose without `target`) builds the last stage"
    );

    // Base images are pinned; `FROM <earlier stage>` is fine.
    let mut earlier: BTreeSet<&str> = BTreeSet::new();
    for stage in &df.stages {
        if !earlier.contains(stage.base.as_str()) {
            check_pinned_image(&stage.base, &format!("Dockerfile:{}", stage.line));
        }
        earlier.insert(stage.name.as_str());
    }

    let build = df.stage("build");
    assert!(
        build.all("RUN").any(|i| i.args.contains("cargo build --release --locked")),
        "the build stage does not run `cargo build --release --locked`"
    );
    // Cargo runs build.rs only when it is there: without it the crate's C shim is not compiled
    // and the link fails (or, with a stale placeholder layer, the image lacks it).
    if repo().join("build.rs").is_file() {
        assert!(
            build.all("COPY").map(parse_copy).any(|c| c.from.is_none() && c.sources.iter().any(|s| s == "build.rs")),
            "the crate has a build.rs, but the build stage does not COPY it"
        );
    }
    let train = df.stage("train");
    assert!(
        train.all("RUN").any(|i| i.args.contains("requirements-train.txt")),
        "the train stage does not install python/requirements-train.txt"
    );
    let train_cmd = train.last_of("CMD").map(|i| words(&i.args)).unwrap_or_default();
    assert!(
        train_cmd.iter().any(|w| w == "models/train.py"),
        "the train stage's CMD does not run models/train.py: {train_cmd:?}"
    );
}

#[test]
fn runtime_stage_runs_streamscore_as_a_non_root_user() {
    let cfg = config();
    let df = Dockerfile::load();
    let rt = df.stage("runtime");

    let user = rt.last_of("USER").expect("the runtime stage has no USER instruction, so it would run as root");
    let name = user.args.split(':').next().unwrap_or("").trim();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "Dockerfile:{}: the runtime stage runs as `{}`; use a non-root user",
        user.line,
        user.args
    );

    let entrypoint = rt.last_of("ENTRYPOINT").map(|i| words(&i.args)).unwrap_or_default();
    assert_eq!(entrypoint, vec!["streamscore".to_string()], "the runtime ENTRYPOINT should be [\"streamscore\"]");
    let cmd = rt.last_of("CMD").map(|i| words(&i.args)).unwrap_or_default();
    assert_eq!(cmd.first().map(String::as_str), Some("run"), "the runtime CMD should start with `run`: {cmd:?}");

    // The config file named by CMD is copied to exactly that path.
    if let Some(i) = cmd.iter().position(|w| w == "--config") {
        let path = cmd.get(i + 1).expect("CMD ends with --config");
        let delivered = rt.all("COPY").map(parse_copy).filter(|c| c.from.is_none()).any(|c| {
            &c.dest == path
                || (c.dest.ends_with('/')
                    && c.sources.iter().any(|s| {
                        let file = Path::new(s).file_name().and_then(|f| f.to_str()).unwrap_or("");
                        format!("{}{file}", c.dest) == *path
                    }))
        });
        assert!(delivered, "CMD reads --config {path}, but no COPY in the runtime stage puts a file there");
    }

    let port = telemetry_port(&cfg);
    let exposed: Vec<String> = rt.all("EXPOSE").flat_map(|i| words(&i.args)).collect();
    assert!(
        exposed.iter().any(|p| p.split('/').next() == Some(port.as_str())),
        "the runtime stage does not EXPOSE {port} (telemetry.http_bind): {exposed:?}"
    );
}

#[test]
fn every_copy_source_exists_and_is_in_the_build_context() {
    let df = Dockerfile::load();
    let ignored = dockerignore_paths();
    let mut checked = 0;
    for (index, stage) in df.stages.iter().enumerate() {
        for ins in stage.body.iter().filter(|i| i.keyword == "COPY" || i.keyword == "ADD") {
            let copy = parse_copy(ins);
            if let Some(from) = &copy.from {
                let is_stage = df.stages[..index].iter().any(|s| s.name == *from);
                let is_image = from.contains(':') || from.contains('/');
                assert!(is_stage || is_image, "Dockerfile:{}: --from={from} names no earlier stage", copy.line);
                continue;
            }
            for source in &copy.sources {
                if source.contains("://") {
                    continue;
                }
                let rel = source.trim_start_matches("./").trim_end_matches('/');
                let rel = if rel.is_empty() { "." } else { rel };
                assert!(
                    !rel.contains(['*', '?', '[']),
                    "Dockerfile:{}: COPY source {source} is a pattern; name the paths so this test can check them",
                    copy.line
                );
                assert!(
                    repo().join(rel).exists(),
                    "Dockerfile:{}: COPY source {source} does not exist in the repository",
                    copy.line
                );
                for pattern in &ignored {
                    assert!(
                        rel != pattern && !rel.starts_with(&format!("{pattern}/")),
                        "Dockerfile:{}: COPY source {source} is excluded from the build context by .dockerignore ({pattern})",
                        copy.line
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "found no COPY instruction with a local source");
}

#[test]
fn dockerignore_keeps_local_state_out_of_the_build_context() {
    let ignored = dockerignore_paths();
    for want in ["target", ".venv", ".git", "bench-results"] {
        assert!(ignored.iter().any(|p| p == want), ".dockerignore does not exclude {want}: {ignored:?}");
    }
}

#[test]
fn onnxruntime_library_matches_the_pinned_wheel() {
    let version = onnxruntime_pin();
    let library = format!("libonnxruntime.so.{version}");
    let df = Dockerfile::load();
    let rt = df.stage("runtime");

    let path = rt.env("ORT_DYLIB_PATH").expect("the runtime stage does not set ORT_DYLIB_PATH");
    let path = Path::new(&path);
    assert!(path.is_absolute(), "ORT_DYLIB_PATH={} should be absolute", path.display());
    assert_eq!(
        path.file_name().and_then(|f| f.to_str()),
        Some(library.as_str()),
        "ORT_DYLIB_PATH={} does not name the library of the pinned wheel (onnxruntime=={version})",
        path.display()
    );
    let dir = path.parent().and_then(Path::to_str).expect("ORT_DYLIB_PATH has a directory");
    assert!(
        rt.all("COPY").map(parse_copy).any(|c| c.from.as_deref() == Some("ort") && c.dest.trim_end_matches('/') == dir),
        "no `COPY --from=ort ... {dir}/` in the runtime stage fills the directory of ORT_DYLIB_PATH"
    );
    let ort = df.stage("ort");
    assert!(
        ort.body.iter().any(|i| i.args.contains("onnxruntime/capi/libonnxruntime.so.")),
        "the ort stage does not copy onnxruntime/capi/libonnxruntime.so.* out of the wheel"
    );

    // An ORT_VERSION build argument, where it has a default, is the pin.
    for ins in df.global.iter().chain(df.stages.iter().flat_map(|s| s.body.iter())).filter(|i| i.keyword == "ARG") {
        if let Some(("ORT_VERSION", value)) = ins.args.split_once('=') {
            assert_eq!(
                value.trim_matches('"'),
                version,
                "Dockerfile:{}: ARG ORT_VERSION differs from the pin",
                ins.line
            );
        }
    }

    // No stale version anywhere in the image definition or the deployment guide.
    for file in ["Dockerfile", "docs/deployment.md"] {
        let text = read(file);
        let mut found = literal_versions(&text, "libonnxruntime.so.");
        found.extend(literal_versions(&text, "onnxruntime=="));
        for v in found {
            assert_eq!(v, version, "{file} mentions onnxruntime {v}, but python/requirements.txt pins {version}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// docker-compose.yml
// ------------------------------------------------------------------------------------------

struct Compose {
    /// The file as written (comments included).
    raw: String,
    /// Every line with its comment removed.
    lines: Vec<String>,
    /// Service name -> the lines of its definition (comments removed).
    services: BTreeMap<String, Vec<String>>,
}

/// Removes a YAML comment (`#` at the start or after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut after_blank = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && after_blank => return &line[..i],
            None => {}
        }
        after_blank = c.is_whitespace();
    }
    line
}

impl Compose {
    fn load() -> Self {
        let raw = read("docker-compose.yml");
        let lines: Vec<String> = raw.lines().map(|l| strip_comment(l).trim_end().to_string()).collect();
        let start =
            lines.iter().position(|l| l == "services:").expect("docker-compose.yml has no top-level `services:` key");
        let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut service_indent: Option<usize> = None;
        let mut current: Option<String> = None;
        for line in &lines[start + 1..] {
            if line.trim().is_empty() {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            if indent == 0 {
                break; // the next top-level key
            }
            let level = *service_indent.get_or_insert(indent);
            if indent == level {
                let name = line.trim().strip_suffix(':').unwrap_or_else(|| {
                    panic!("docker-compose.yml: expected a service name under `services:`, found {line:?}")
                });
                assert!(services.insert(name.to_string(), Vec::new()).is_none(), "service {name} is defined twice");
                current = Some(name.to_string());
            } else {
                assert!(indent > level, "docker-compose.yml: unexpected indentation under `services:`: {line:?}");
                if let Some(body) = current.as_ref().and_then(|c| services.get_mut(c)) {
                    body.push(line.clone());
                }
            }
        }
        Compose { raw, lines, services }
    }

    fn service(&self, name: &str) -> &[String] {
        self.services
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
    }
}

/// The words of a service's lines, with YAML list markers, quotes and brackets removed:
/// `command: [a, "b"]`, `command: a b` and one-item-per-line lists all give `a`, `b`.
fn service_words(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(|w| w.trim_matches(|c| matches!(c, '"' | '\'' | ',' | '[' | ']')).to_string())
        .filter(|w| !w.is_empty() && w != "-")
        .collect()
}

fn word_after(words: &[String], flag: &str) -> Option<String> {
    words.iter().position(|w| w == flag).and_then(|i| words.get(i + 1)).cloned()
}

/// The value of `key:` (or of an environment entry `KEY=value` / `KEY: value`) in a service.
fn value_of(lines: &[String], key: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        let t = l.trim().trim_start_matches("- ").trim_start();
        let rest = t.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix('='))?;
        Some(rest.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// Every `STREAMSCORE_...` name in a line.
fn streamscore_vars(line: &str) -> Vec<String> {
    const PREFIX: &str = "STREAMSCORE_";
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = line[from..].find(PREFIX) {
        let start = from + i;
        let at_boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let len =
            line[start..].bytes().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_').count();
        if at_boundary && len > PREFIX.len() {
            out.push(line[start..start + len].to_string());
        }
        from = start + len.max(PREFIX.len());
    }
    out
}

/// Tables whose keys are free-form (librdkafka properties, schema ids), as in src/config.rs.
const PASSTHROUGH: [(&str, &str); 4] =
    [("kafka", "common"), ("kafka", "consumer"), ("kafka", "producer"), ("schemas", "local")];

/// Checks that an environment variable is one streamscore reads: a `STREAMSCORE_<SECTION>__<KEY>`
/// override of a key in config/streamscore.toml, a pass-through property, or `STREAMSCORE_CONFIG`.
fn check_env_var(cfg: &toml::Table, var: &str) -> Result<(), String> {
    let rest = var.strip_prefix("STREAMSCORE_").ok_or_else(|| format!("{var} is not a STREAMSCORE_ variable"))?;
    if !rest.contains("__") {
        return if var == "STREAMSCORE_CONFIG" {
            Ok(())
        } else {
            Err(format!("{var} is neither STREAMSCORE_CONFIG nor an override STREAMSCORE_<SECTION>__<KEY>"))
        };
    }
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    let section = cfg
        .get(&parts[0])
        .and_then(toml::Value::as_table)
        .ok_or_else(|| format!("{var}: config/streamscore.toml has no section [{}]", parts[0]))?;
    match parts.as_slice() {
        [s, key] => match section.get(key) {
            Some(toml::Value::Table(_)) => Err(format!("{var}: [{s}.{key}] is a table; set its entries instead")),
            Some(_) => Ok(()),
            None => Err(format!("{var}: config/streamscore.toml has no key {s}.{key}")),
        },
        [s, table, property] if PASSTHROUGH.contains(&(s.as_str(), table.as_str())) => {
            if section.get(table).is_some_and(toml::Value::is_table) && !property.is_empty() {
                Ok(())
            } else {
                Err(format!("{var}: config/streamscore.toml has no table [{s}.{table}]"))
            }
        }
        _ => {
            Err(format!("{var} must look like STREAMSCORE_<SECTION>__<KEY> (or STREAMSCORE_KAFKA__COMMON__<PROPERTY>)"))
        }
    }
}

/// Topics created by `rpk topic create` anywhere in the file, with their `-p` partition count.
fn created_topics(compose: &Compose) -> BTreeMap<String, Option<u32>> {
    const COMMAND: &str = "rpk topic create";
    let mut out = BTreeMap::new();
    for line in &compose.lines {
        let mut rest = line.as_str();
        while let Some(i) = rest.find(COMMAND) {
            rest = &rest[i + COMMAND.len()..];
            let args: Vec<&str> =
                rest.split_whitespace().take_while(|w| !matches!(*w, "||" | "&&" | ";" | "|")).collect();
            let mut partitions = None;
            let mut names = Vec::new();
            let mut it = args.iter();
            while let Some(&w) = it.next() {
                match w {
                    "-p" | "--partitions" => partitions = it.next().and_then(|n| n.parse().ok()),
                    "-r" | "--replicas" | "-c" | "--topic-config" | "-X" => {
                        it.next();
                    }
                    w if w.starts_with("-p=") || w.starts_with("--partitions=") => {
                        partitions = w.split_once('=').and_then(|(_, n)| n.parse().ok());
                    }
                    w if w.starts_with('-') => {}
                    w => names.push(w.trim_matches(|c| c == '"' || c == '\'').to_string()),
                }
            }
            for name in names {
                out.insert(name, partitions);
            }
        }
    }
    out
}

#[test]
fn compose_defines_the_services() {
    let cfg = config();
    let compose = Compose::load();
    for name in ["redpanda", "topics", "console", "streamscore", "producer"] {
        compose.service(name);
    }

    // Third-party images are pinned; our own are built from the Dockerfile.
    for (name, lines) in &compose.services {
        let built = lines.iter().any(|l| l.trim() == "build:" || l.trim().starts_with("build: "));
        if let (Some(image), false) = (value_of(lines, "image"), built) {
            check_pinned_image(&image, &format!("docker-compose.yml service {name}"));
        }
    }

    let service = compose.service("streamscore");
    assert!(
        service.iter().any(|l| l.trim() == "build:" || l.trim().starts_with("build: ")),
        "the streamscore service is not built from the Dockerfile"
    );
    assert!(
        value_of(service, "container_name").is_none(),
        "the streamscore service has a container_name, which prevents `--scale streamscore=N`"
    );
    let port = telemetry_port(&cfg);
    assert!(
        service.iter().any(|l| l.contains(&format!(":{port}"))),
        "the streamscore service does not publish port {port} (telemetry.http_bind)"
    );
    let grace = value_of(service, "stop_grace_period").unwrap_or_else(|| "10s".into()); // Docker's default
    let drain = config_str(&cfg, "delivery", "drain_timeout");
    // The drain, then leaving the group: each up to drain_timeout.
    assert!(
        seconds(&grace) > 2.0 * seconds(drain),
        "stop_grace_period {grace} of the streamscore service must exceed twice delivery.drain_timeout {drain}, or Docker kills the stop"
    );
    let topics_service = compose
        .services
        .iter()
        .find(|(_, lines)| lines.iter().any(|l| l.contains("rpk topic create")))
        .map(|(name, _)| name.clone())
        .expect("no service runs `rpk topic create`");
    assert!(
        service.iter().any(|l| l.trim() == format!("{topics_service}:"))
            && service.iter().any(|l| l.contains("service_completed_successfully")),
        "the streamscore service should depend on `{topics_service}` with condition service_completed_successfully"
    );

    // The producer runs only on demand and feeds an input topic through the same broker.
    let producer = compose.service("producer");
    let profile = producer.iter().position(|l| l.trim_start().starts_with("profiles:")).map(|i| {
        let inline = producer[i].contains("load");
        let next = producer.get(i + 1).map(|l| l.trim().trim_start_matches("- ").trim_matches('"')) == Some("load");
        inline || next
    });
    assert_eq!(profile, Some(true), "the producer service should be under `profiles: [\"load\"]`");
    let producer_words = service_words(producer);
    assert!(producer_words.iter().any(|w| w == "produce"), "the producer service does not run `streamscore produce`");
    let topic = word_after(&producer_words, "--topic").expect("the producer has no --topic");
    assert!(input_topics(&cfg).contains(&topic), "the producer writes to {topic}, which is not in kafka.input_topics");

    let bootstrap = value_of(service, "STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS")
        .expect("the streamscore service does not set STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS");
    assert_eq!(
        word_after(&producer_words, "--bootstrap-servers").as_deref(),
        Some(bootstrap.as_str()),
        "the producer and streamscore should use the same bootstrap servers"
    );
    let advertised = compose
        .service("redpanda")
        .iter()
        .find(|l| l.contains("--advertise-kafka-addr"))
        .expect("the redpanda service has no --advertise-kafka-addr")
        .clone();
    assert!(
        advertised.contains(&format!("://{bootstrap}")),
        "redpanda does not advertise {bootstrap} (STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS): {}",
        advertised.trim()
    );
}

#[test]
fn compose_environment_names_real_config_keys() {
    let cfg = config();
    // The checker itself: known good and bad names.
    assert!(check_env_var(&cfg, "STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS").is_ok());
    assert!(check_env_var(&cfg, "STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD").is_ok());
    assert!(check_env_var(&cfg, "STREAMSCORE_CONFIG").is_ok());
    assert!(check_env_var(&cfg, "STREAMSCORE_KAFKA__BOOTSTRAP_SERVER").is_err());
    assert!(check_env_var(&cfg, "STREAMSCORE_BATCH__MAX_SIZE").is_err());
    assert!(check_env_var(&cfg, "STREAMSCORE_KAFKA__COMMON").is_err());
    assert!(check_env_var(&cfg, "STREAMSCORE_NOPE__KEY").is_err());

    let compose = Compose::load();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, lines) in &compose.services {
        for var in lines.iter().flat_map(|l| streamscore_vars(l)) {
            if let Err(e) = check_env_var(&cfg, &var) {
                problems.push(format!("service {name}: {e}"));
            }
            seen.insert(var);
        }
    }
    assert!(problems.is_empty(), "docker-compose.yml:\n  {}", problems.join("\n  "));
    for want in [
        "STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS",
        "STREAMSCORE_SCHEMAS__REGISTRY_URL",
        "STREAMSCORE_TELEMETRY__HTTP_BIND",
    ] {
        assert!(seen.contains(want), "docker-compose.yml does not set {want} (found {seen:?})");
    }
}

#[test]
fn compose_creates_the_configured_topics() {
    let cfg = config();
    let compose = Compose::load();
    let created = created_topics(&compose);
    for topic in default_topics(&cfg) {
        assert!(created.contains_key(&topic), "docker-compose.yml does not create {topic} (created: {created:?})");
    }
    // `--scale streamscore=N` in the comments and docs only helps with N <= input partitions.
    for topic in input_topics(&cfg) {
        let partitions = created[&topic].unwrap_or_else(|| panic!("no -p partition count for {topic}"));
        for text in [compose.raw.clone(), read("docs/deployment.md")] {
            for n in literal_versions(&text, "--scale streamscore=") {
                let n: u32 = n.parse().unwrap_or_else(|_| panic!("cannot read --scale streamscore={n}"));
                assert!(n <= partitions, "--scale streamscore={n} exceeds the {partitions} partitions of {topic}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// docs/deployment.md
// ------------------------------------------------------------------------------------------

#[test]
fn deployment_guide_covers_topics_health_and_the_trial() {
    let cfg = config();
    let doc = read("docs/deployment.md");
    for topic in default_topics(&cfg) {
        assert!(doc.contains(&format!("`{topic}`")), "docs/deployment.md does not describe the topic {topic}");
    }
    for needle in [
        "/healthz",
        "/readyz",
        "/metrics",
        "ORT_DYLIB_PATH",
        "drain_timeout",
        "docker compose up -d --build",
        "docker compose --profile load up producer",
        "streamscore.dlq.reason",
        "130",
    ] {
        assert!(doc.contains(needle), "docs/deployment.md does not mention {needle}");
    }
}

// ------------------------------------------------------------------------------------------
// A YAML subset for deploy/: block mappings and sequences, `- key: value` items, `|` block
// scalars, quoted and plain scalars, flow sequences of scalars (`[a, "b"]`), `{}`/`[]`, and
// `---` between documents. Anchors, tags, multi-line plain or quoted scalars and non-empty
// flow mappings are refused with a panic rather than misread: the files stay in this subset.
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).and_then(Yaml::as_str)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> &[Yaml] {
        match self {
            Yaml::List(items) => items,
            _ => &[],
        }
    }

    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            _ => &[],
        }
    }

    /// Every string anywhere below this node (values only).
    fn strings(&self) -> Vec<&str> {
        match self {
            Yaml::Null => Vec::new(),
            Yaml::Str(s) => vec![s.as_str()],
            Yaml::List(items) => items.iter().flat_map(Yaml::strings).collect(),
            Yaml::Map(entries) => entries.iter().flat_map(|(_, v)| v.strings()).collect(),
        }
    }
}

struct YamlParser<'a> {
    origin: &'a str,
    lines: Vec<&'a str>,
    pos: usize,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The index of the `:` that ends a mapping key (followed by a blank or the end), outside quotes.
fn key_colon(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if i == 0 && (c == '"' || c == '\'') => quote = Some(c),
            None if c == '[' || c == '{' => return None, // a flow collection, not a key
            None if c == ':' && (i + 1 == text.len() || bytes[i + 1] == b' ') => return Some(i),
            None => {}
        }
    }
    None
}

impl<'a> YamlParser<'a> {
    /// The next line with content: (index, indentation, content without comment).
    fn peek(&self) -> Option<(usize, usize, &'a str)> {
        self.lines[self.pos..].iter().enumerate().find_map(|(i, line)| {
            let content = strip_comment(line).trim_end();
            (!content.trim().is_empty()).then(|| (self.pos + i, indent_of(line), content.trim_start()))
        })
    }

    fn fail(&self, line: usize, what: &str) -> ! {
        panic!("{}:{}: {what}: {:?}", self.origin, line + 1, self.lines.get(line).unwrap_or(&""))
    }

    /// The node whose first line is indented at least `min_indent`.
    fn node(&mut self, min_indent: usize) -> Yaml {
        match self.peek() {
            Some((_, indent, content)) if indent >= min_indent => {
                if content == "-" || content.starts_with("- ") {
                    self.list(indent)
                } else {
                    self.map(indent, None)
                }
            }
            _ => Yaml::Null,
        }
    }

    fn list(&mut self, indent: usize) -> Yaml {
        let mut items = Vec::new();
        while let Some((line, ind, content)) = self.peek() {
            if ind < indent || !(content == "-" || content.starts_with("- ")) {
                break;
            }
            if ind > indent {
                self.fail(line, "unexpected indentation in a sequence");
            }
            self.pos = line + 1;
            let text = content[1..].trim_start();
            let column = ind + (content.len() - text.len());
            let item = if text.is_empty() {
                self.node(indent + 1)
            } else if key_colon(text).is_some() {
                self.map(column, Some((line, text)))
            } else {
                self.value(line, indent, text)
            };
            items.push(item);
        }
        Yaml::List(items)
    }

    /// A mapping at `indent`; `first` is an entry already read (after a `- `).
    fn map(&mut self, indent: usize, first: Option<(usize, &'a str)>) -> Yaml {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        let mut pending = first;
        loop {
            let (line, text) = match pending.take() {
                Some(entry) => entry,
                None => match self.peek() {
                    Some((line, ind, content)) if ind == indent && !content.starts_with("- ") && content != "-" => {
                        self.pos = line + 1;
                        (line, content)
                    }
                    Some((line, ind, _)) if ind > indent => self.fail(line, "unexpected indentation in a mapping"),
                    _ => break,
                },
            };
            let colon = key_colon(text).unwrap_or_else(|| self.fail(line, "expected `key: value`"));
            let key = scalar(text[..colon].trim()).unwrap_or_else(|| self.fail(line, "unsupported key"));
            let Yaml::Str(key) = key else { self.fail(line, "unsupported key") };
            if entries.iter().any(|(k, _)| *k == key) {
                self.fail(line, "duplicate key");
            }
            let rest = text[colon + 1..].trim();
            let value = if rest.is_empty() {
                match self.peek() {
                    Some((_, ind, content)) if ind == indent && (content == "-" || content.starts_with("- ")) => {
                        self.list(indent)
                    }
                    _ => self.node(indent + 1),
                }
            } else {
                self.value(line, indent, rest)
            };
            entries.push((key, value));
        }
        Yaml::Map(entries)
    }

    /// A value written after `key:` or `- ` on `line`, whose parent is indented `indent`.
    fn value(&mut self, line: usize, indent: usize, text: &str) -> Yaml {
        if let Some(style) = text.strip_prefix('|') {
            if !(style.is_empty() || style == "-") {
                self.fail(line, "only `|` and `|-` block scalars are supported");
            }
            return Yaml::Str(self.block(indent, style == "-"));
        }
        if text.starts_with(['>', '&', '*', '!']) {
            self.fail(line, "folded scalars, anchors, aliases and tags are not supported");
        }
        scalar(text).unwrap_or_else(|| self.fail(line, "unsupported or unterminated scalar"))
    }

    /// The lines of a `|` block scalar: every following line indented more than `parent`.
    fn block(&mut self, parent: usize, strip: bool) -> String {
        let mut raw: Vec<&str> = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if !line.trim().is_empty() && indent_of(line) <= parent {
                break;
            }
            raw.push(line);
            self.pos += 1;
        }
        while raw.last().is_some_and(|l| l.trim().is_empty()) {
            raw.pop();
        }
        let cut = raw.iter().filter(|l| !l.trim().is_empty()).map(|l| indent_of(l)).min().unwrap_or(0);
        let mut text: String =
            raw.iter().map(|l| l.get(cut..).unwrap_or("").trim_end_matches('\r')).collect::<Vec<_>>().join("\n");
        if !strip && !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// A one-line scalar or flow sequence; `None` when it is not one this subset reads.
fn scalar(text: &str) -> Option<Yaml> {
    let t = text.trim();
    if let Some(body) = t.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return chars.as_str().trim().is_empty().then_some(Yaml::Str(out)),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
    if let Some(body) = t.strip_prefix('\'') {
        let end = body.rfind('\'')?;
        if !body[end + 1..].trim().is_empty() {
            return None;
        }
        return Some(Yaml::Str(body[..end].replace("''", "'")));
    }
    if t == "[]" {
        return Some(Yaml::List(Vec::new()));
    }
    if t == "{}" {
        return Some(Yaml::Map(Vec::new()));
    }
    if let Some(body) = t.strip_prefix('[') {
        let body = body.strip_suffix(']')?;
        let mut items = Vec::new();
        let (mut start, mut quote) = (0, None);
        for (i, c) in body.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '[' || c == '{' => return None,
                None if c == ',' => {
                    items.push(scalar(&body[start..i])?);
                    start = i + 1;
                }
                None => {}
            }
        }
        if !body[start..].trim().is_empty() {
            items.push(scalar(&body[start..])?);
        }
        return Some(Yaml::List(items));
    }
    if t.starts_with('{') || t.starts_with(['&', '*', '!', '>', '|']) {
        return None;
    }
    Some(match t {
        "~" | "null" => Yaml::Null,
        _ => Yaml::Str(t.to_string()),
    })
}

/// Every document of a YAML file (`---` separated; empty documents are skipped).
fn parse_yaml_docs(text: &str, origin: &str) -> Vec<Yaml> {
    let mut docs = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let lines: Vec<&str> = text.lines().chain(std::iter::once("---")).collect();
    for line in lines {
        if line.trim_end() == "---" {
            let mut parser = YamlParser { origin, lines: std::mem::take(&mut chunk), pos: 0 };
            let doc = parser.node(0);
            if let Some((line, _, _)) = parser.peek() {
                parser.fail(line, "unexpected content after the document");
            }
            if doc != Yaml::Null {
                docs.push(doc);
            }
        } else {
            let lead = &line[..line.len() - line.trim_start().len()];
            assert!(!lead.contains('\t'), "{origin}: tab in indentation: {line:?}");
            chunk.push(line);
        }
    }
    docs
}

fn yaml_file(rel: &str) -> Yaml {
    let mut docs = parse_yaml_docs(&read(rel), rel);
    assert_eq!(docs.len(), 1, "{rel} should hold exactly one YAML document");
    docs.remove(0)
}

#[test]
fn yaml_subset_parser_reads_what_the_deploy_files_use() {
    let text = r#"
# comment
a: 1
b: "two # not a comment" # a comment
c:
  - x
  - key: v
    other: [p, "q, r", 's''t']
  -
    nested: {}
d:
- y
e: |
  line one
    indented # kept
  last
f: http://host:9090/path#anchor
g: sum(rate(m{l="v"}[5m:1m])) > 0
"#;
    let docs = parse_yaml_docs(text, "sample");
    assert_eq!(docs.len(), 1);
    let y = &docs[0];
    assert_eq!(y.str_at(&["a"]), Some("1"));
    assert_eq!(y.str_at(&["b"]), Some("two # not a comment"));
    let c = y.get("c").unwrap().items();
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].as_str(), Some("x"));
    assert_eq!(c[1].str_at(&["key"]), Some("v"));
    assert_eq!(
        c[1].get("other").unwrap().items().iter().filter_map(Yaml::as_str).collect::<Vec<_>>(),
        vec!["p", "q, r", "s't"]
    );
    assert_eq!(c[2].get("nested"), Some(&Yaml::Map(Vec::new())));
    assert_eq!(y.get("d").unwrap().items()[0].as_str(), Some("y"));
    assert_eq!(y.str_at(&["e"]), Some("line one\n  indented # kept\nlast\n"));
    assert_eq!(y.str_at(&["f"]), Some("http://host:9090/path#anchor"));
    assert_eq!(y.str_at(&["g"]), Some("sum(rate(m{l=\"v\"}[5m:1m])) > 0"));
    assert_eq!(parse_yaml_docs("a: 1\n---\nb: 2\n", "two").len(), 2);
    // Outside the subset: refused, not misread.
    for bad in ["a: &x 1\n", "a: >\n  folded\n", "a:\n  b: 1\n   c: 2\n", "a: 1\na: 2\n", "a: \"open\n"] {
        assert!(std::panic::catch_unwind(|| parse_yaml_docs(bad, "bad")).is_err(), "accepted {bad:?}");
    }
}

// ------------------------------------------------------------------------------------------
// deploy/k8s
// ------------------------------------------------------------------------------------------

const K8S: &str = "deploy/k8s";

/// Every Kubernetes object under deploy/k8s, with the file it came from.
fn k8s_objects() -> Vec<(String, Yaml)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join(K8S))
        .expect("deploy/k8s exists")
        .map(|e| e.expect("readable directory entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = format!("{K8S}/{file}");
        for doc in parse_yaml_docs(&read(&rel), &rel) {
            out.push((rel.clone(), doc));
        }
    }
    out
}

fn k8s_object<'a>(objects: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects.iter().filter(|(_, o)| o.str_at(&["kind"]) == Some(kind)).map(|(_, o)| o).collect();
    assert_eq!(found.len(), 1, "deploy/k8s should hold exactly one {kind}");
    found[0]
}

/// The streamscore container of the Deployment.
fn streamscore_container(deployment: &Yaml) -> &Yaml {
    let containers = deployment.at(&["spec", "template", "spec", "containers"]).expect("Deployment has containers");
    containers
        .items()
        .iter()
        .find(|c| c.str_at(&["name"]) == Some("streamscore"))
        .expect("the Deployment has no container named streamscore")
}

/// The Deployment's environment as the service would see it: literal values as written,
/// values from a Secret or the downward API replaced by stand-ins.
fn deployment_env(container: &Yaml) -> Vec<(String, String, &Yaml)> {
    container
        .get("env")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let name = e.str_at(&["name"]).expect("env entry without a name").to_string();
            let value = match (e.str_at(&["value"]), e.get("valueFrom")) {
                (Some(v), None) => v.to_string(),
                (None, Some(from)) if from.get("secretKeyRef").is_some() => "a-stand-in-secret-of-32-characters".into(),
                (None, Some(from)) if from.get("fieldRef").is_some() => "streamscore-7d9f8-abcde".into(),
                _ => panic!("env {name}: expected either `value` or `valueFrom` (secretKeyRef/fieldRef)"),
            };
            (name, value, e)
        })
        .collect()
}

/// The ConfigMap's streamscore.toml and the `--config` path the container reads it from.
fn configmap_toml(objects: &[(String, Yaml)]) -> (String, String) {
    let configmap = k8s_object(objects, "ConfigMap");
    let deployment = k8s_object(objects, "Deployment");
    let container = streamscore_container(deployment);
    let args: Vec<&str> =
        container.get("args").map(Yaml::items).unwrap_or_default().iter().filter_map(Yaml::as_str).collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("the streamscore container's args have no --config FILE")
        .to_string();
    let (dir, file) = config_path.rsplit_once('/').expect("--config is an absolute path");
    let cm_name = configmap.str_at(&["metadata", "name"]).expect("ConfigMap has a name");

    // The file is the ConfigMap key mounted at its directory (a directory mount: subPath would
    // stop edits from reaching the pod, and the watcher's rollback through model.dir with them).
    let mount = container
        .get("volumeMounts")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .find(|m| m.str_at(&["mountPath"]) == Some(dir))
        .unwrap_or_else(|| panic!("no volumeMount at {dir}, the directory of --config {config_path}"));
    assert!(mount.get("subPath").is_none(), "mount the ConfigMap without subPath, or edits never reach the pods");
    let volume_name = mount.str_at(&["name"]).expect("volumeMount without a name");
    let volume = deployment
        .at(&["spec", "template", "spec", "volumes"])
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .find(|v| v.str_at(&["name"]) == Some(volume_name))
        .unwrap_or_else(|| panic!("no volume {volume_name}"));
    assert_eq!(
        volume.str_at(&["configMap", "name"]),
        Some(cm_name),
        "volume {volume_name} at {dir} should be the ConfigMap {cm_name}"
    );
    let text = configmap
        .str_at(&["data", file])
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {file} (the file --config {config_path} reads)"))
        .to_string();
    (text, config_path)
}

/// The port of a probe or Service target: a number or a container port name.
fn container_port(container: &Yaml, port: &str) -> u16 {
    if let Ok(n) = port.parse() {
        return n;
    }
    container
        .get("ports")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .find(|p| p.str_at(&["name"]) == Some(port))
        .and_then(|p| p.str_at(&["containerPort"]))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the streamscore container has no port named {port}"))
}

#[test]
fn k8s_configmap_is_a_valid_streamscore_config() {
    let objects = k8s_objects();
    let (text, path) = configmap_toml(&objects);
    let container = streamscore_container(k8s_object(&objects, "Deployment"));
    let env: Vec<(String, String)> = deployment_env(container).into_iter().map(|(n, v, _)| (n, v)).collect();
    // Relative paths (schemas/, models/) resolve against the working directory: /app in the
    // image, the repository root here, which holds the same files.
    let config = streamscore::config::Config::from_toml_str(&text, &path, &env).unwrap_or_else(|e| {
        panic!("the ConfigMap's streamscore.toml with the Deployment's environment is invalid:\n{e}")
    });
    assert!(!config.kafka.input_topics.is_empty());

    // Every override names a real key (the same check as for docker-compose.yml).
    let cfg = self::config();
    let mut problems = Vec::new();
    for (name, _) in &env {
        if name.starts_with("STREAMSCORE_") && name != streamscore::config::ADMIN_TOKEN_ENV {
            if let Err(e) = check_env_var(&cfg, name) {
                problems.push(e);
            }
        }
    }
    assert!(problems.is_empty(), "deploy/k8s/deployment.yaml:\n  {}", problems.join("\n  "));

    // The admin token is not in the ConfigMap: without the Secret the config is refused.
    if config.admin.enabled {
        let without: Vec<(String, String)> =
            env.iter().filter(|(n, _)| n != streamscore::config::ADMIN_TOKEN_ENV).cloned().collect();
        assert!(
            streamscore::config::Config::from_toml_str(&text, &path, &without).is_err(),
            "the ConfigMap enables the admin API with a token of its own; the token must come from the Secret"
        );
    }
}

#[test]
fn k8s_deployment_agrees_with_the_config() {
    let objects = k8s_objects();
    let (text, path) = configmap_toml(&objects);
    let deployment = k8s_object(&objects, "Deployment");
    let container = streamscore_container(deployment);
    let env_full = deployment_env(container);
    let env: Vec<(String, String)> = env_full.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
    let config = streamscore::config::Config::from_toml_str(&text, &path, &env).expect("valid (checked above)");

    let image = container.str_at(&["image"]).expect("the container has an image");
    check_pinned_image(image, "deploy/k8s/deployment.yaml");

    // Ports: telemetry.http_bind (and admin.bind when the API is on) are container ports.
    let ports: Vec<u16> = container
        .get("ports")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.str_at(&["containerPort"]).and_then(|n| n.parse().ok()))
        .collect();
    let metrics_port = config.telemetry.http_bind.expect("telemetry.http_bind is set in the ConfigMap").port();
    assert!(ports.contains(&metrics_port), "container ports {ports:?} lack {metrics_port} (telemetry.http_bind)");
    assert!(
        !config.telemetry.http_bind.is_some_and(|a| a.ip().is_loopback()),
        "telemetry.http_bind is loopback: probes and Prometheus cannot reach it"
    );
    if config.admin.enabled {
        assert!(
            ports.contains(&config.admin.bind.port()),
            "container ports {ports:?} lack admin.bind {}",
            config.admin.bind
        );
    }

    // Probes: liveness on /healthz, readiness on /readyz, both on the metrics port.
    for (probe, want) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = container.at(&[probe, "httpGet"]).unwrap_or_else(|| panic!("no {probe}.httpGet"));
        assert_eq!(get.str_at(&["path"]), Some(want), "{probe} should GET {want}");
        let port = get.str_at(&["port"]).unwrap_or_else(|| panic!("{probe} has no port"));
        assert_eq!(container_port(container, port), metrics_port, "{probe} does not probe telemetry.http_bind");
    }

    // Secrets come from a Secret, never inline; the admin token in particular.
    for (name, _, entry) in &env_full {
        let secretish = ["TOKEN", "PASSWORD", "SECRET"].iter().any(|s| name.contains(s));
        if secretish {
            assert!(
                entry.at(&["valueFrom", "secretKeyRef", "name"]).is_some(),
                "env {name} looks like a secret but does not come from a Secret (valueFrom.secretKeyRef)"
            );
        }
    }
    if config.admin.enabled {
        assert!(
            env_full.iter().any(|(n, _, _)| n == streamscore::config::ADMIN_TOKEN_ENV),
            "the admin API is enabled but {} is not set from a Secret",
            streamscore::config::ADMIN_TOKEN_ENV
        );
    }
    for (file, object) in &objects {
        assert_ne!(object.str_at(&["kind"]), Some("Secret"), "{file}: do not commit a Secret; create it out of band");
    }

    // Shutdown: the grace period covers the drain, then leaving the group (each up to drain_timeout).
    let grace: f64 = deployment
        .str_at(&["spec", "template", "spec", "terminationGracePeriodSeconds"])
        .unwrap_or("30") // Kubernetes' default
        .parse()
        .expect("terminationGracePeriodSeconds is a number");
    assert!(
        grace > 2.0 * config.delivery.drain_timeout.as_secs_f64(),
        "terminationGracePeriodSeconds {grace} must exceed twice delivery.drain_timeout {:?}",
        config.delivery.drain_timeout
    );

    // The image's non-root user.
    let user = deployment.str_at(&["spec", "template", "spec", "securityContext", "runAsNonRoot"]);
    assert_eq!(user, Some("true"), "the pod should set securityContext.runAsNonRoot: true");

    // Labels: the selector picks the template's pods, and the metrics Service selects them too
    // and targets the metrics port (not the admin API).
    let pod_labels = deployment.at(&["spec", "template", "metadata", "labels"]).expect("pod template labels");
    let matches = |selector: &Yaml| {
        !selector.entries().is_empty()
            && selector.entries().iter().all(|(k, v)| pod_labels.get(k).and_then(Yaml::as_str) == v.as_str())
    };
    assert!(
        matches(deployment.at(&["spec", "selector", "matchLabels"]).expect("selector.matchLabels")),
        "the Deployment's selector does not match its pod template's labels"
    );
    let service = k8s_object(&objects, "Service");
    assert!(
        matches(service.at(&["spec", "selector"]).expect("Service selector")),
        "the Service selects no streamscore pod"
    );
    let service_ports = service.at(&["spec", "ports"]).map(Yaml::items).unwrap_or_default();
    assert!(!service_ports.is_empty(), "the Service has no ports");
    for p in service_ports {
        let target = p.str_at(&["targetPort"]).or_else(|| p.str_at(&["port"])).expect("Service port");
        assert_eq!(
            container_port(container, target),
            metrics_port,
            "the metrics Service exposes {target}; only telemetry.http_bind belongs on it (docs/admin-api.md)"
        );
    }

    // kustomization.yaml lists every manifest.
    let kustomization = yaml_file(&format!("{K8S}/kustomization.yaml"));
    let listed: BTreeSet<&str> =
        kustomization.get("resources").map(Yaml::items).unwrap_or_default().iter().filter_map(Yaml::as_str).collect();
    let files: BTreeSet<&str> = objects
        .iter()
        .map(|(f, _)| f.rsplit('/').next().unwrap_or(f))
        .filter(|f| !f.starts_with("kustomization."))
        .collect();
    assert_eq!(listed, files, "deploy/k8s/kustomization.yaml resources should list every manifest");
}

#[test]
fn keda_scales_on_the_configured_group_within_the_partitions() {
    let objects = k8s_objects();
    let (text, path) = configmap_toml(&objects);
    let deployment = k8s_object(&objects, "Deployment");
    let env: Vec<(String, String)> =
        deployment_env(streamscore_container(deployment)).into_iter().map(|(n, v, _)| (n, v)).collect();
    let config = streamscore::config::Config::from_toml_str(&text, &path, &env).expect("valid (checked above)");

    let scaled = k8s_object(&objects, "ScaledObject");
    assert_eq!(
        scaled.str_at(&["spec", "scaleTargetRef", "kind"]),
        Some("Deployment"),
        "KEDA should scale the Deployment"
    );
    assert_eq!(
        scaled.str_at(&["spec", "scaleTargetRef", "name"]),
        deployment.str_at(&["metadata", "name"]),
        "the ScaledObject does not scale the streamscore Deployment"
    );
    let triggers = scaled.at(&["spec", "triggers"]).map(Yaml::items).unwrap_or_default();
    let kafka: Vec<&Yaml> = triggers.iter().filter(|t| t.str_at(&["type"]) == Some("kafka")).collect();
    assert_eq!(kafka.len(), triggers.len().max(1), "the ScaledObject should scale on Kafka lag only");
    let meta = kafka[0].get("metadata").expect("kafka trigger metadata");
    assert_eq!(
        meta.str_at(&["consumerGroup"]),
        Some(config.kafka.group_id.as_str()),
        "consumerGroup != kafka.group_id"
    );
    let topic = meta.str_at(&["topic"]).expect("the kafka trigger names a topic");
    assert!(config.kafka.input_topics.iter().any(|t| t == topic), "trigger topic {topic} is not in kafka.input_topics");
    assert_eq!(
        meta.str_at(&["bootstrapServers"]),
        Some(config.kafka.bootstrap_servers.as_str()),
        "the trigger's bootstrapServers differ from kafka.bootstrap_servers"
    );
    let lag: u64 = meta.str_at(&["lagThreshold"]).and_then(|l| l.parse().ok()).expect("a numeric lagThreshold");
    assert!(lag > 0);
    assert_ne!(meta.str_at(&["allowIdleConsumers"]), Some("true"), "idle consumers (replicas > partitions) do no work");

    // Replicas beyond the input topic's partition count are idle.
    let partitions: u32 = scaled
        .str_at(&["metadata", "annotations", "streamscore.io/input-partitions"])
        .and_then(|p| p.parse().ok())
        .expect("the ScaledObject documents the input topic's partition count in streamscore.io/input-partitions");
    let max: u32 = scaled.str_at(&["spec", "maxReplicaCount"]).and_then(|m| m.parse().ok()).expect("maxReplicaCount");
    let min: u32 = scaled.str_at(&["spec", "minReplicaCount"]).and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(max <= partitions, "maxReplicaCount {max} exceeds the {partitions} partitions of {topic}");
    assert!(min <= max, "minReplicaCount {min} > maxReplicaCount {max}");
    let replicas: u32 = deployment.str_at(&["spec", "replicas"]).and_then(|r| r.parse().ok()).unwrap_or(1);
    assert!(replicas <= partitions, "the Deployment's replicas {replicas} exceed the {partitions} partitions");
    // Each replica runs kafka.consumer_threads group members.
    let members = config.kafka.consumer_threads as u32 * max;
    assert!(members <= partitions, "{members} group members at maxReplicaCount exceed the {partitions} partitions");
}

// ------------------------------------------------------------------------------------------
// deploy/prometheus, deploy/grafana, docs/runbook.md
// ------------------------------------------------------------------------------------------

/// Every metric streamscore exports (src/telemetry.rs), and which are histograms.
fn known_metrics() -> (BTreeSet<&'static str>, BTreeSet<&'static str>) {
    use streamscore::telemetry::names::*;
    let histograms =
        BTreeSet::from([BATCH_SIZE, INFERENCE_SECONDS, END_TO_END_SECONDS, PROCESSING_SECONDS, BATCH_STAGE_SECONDS]);
    let all = BTreeSet::from([
        EVENTS_CONSUMED,
        EVENTS_SCORED,
        EVENTS_DEAD_LETTERED,
        BATCH_SIZE,
        INFERENCE_SECONDS,
        END_TO_END_SECONDS,
        PROCESSING_SECONDS,
        BATCH_STAGE_SECONDS,
        BATCH_TARGET_SIZE,
        BATCH_TARGET_DELAY,
        CACHE_HITS,
        CACHE_MISSES,
        CACHE_BYPASSED,
        CACHE_BYPASSES,
        CONSUMER_LAG,
        DRIFT_PSI,
        DRIFT_REPORTS,
        COMMITS,
        DELIVERY_FAILURES,
        REBALANCES,
        ASSIGNED_PARTITIONS,
        TRANSACTIONS,
        BACKPRESSURE_PAUSES,
        PAUSED,
        REVOKED_DROPPED,
        MODEL_INFO,
        READY,
        MODEL_LOAD_FAILURES,
        ADMIN_REQUESTS,
        MODEL_CHANGES,
        DEPLOYMENTS,
        SHADOW_RECORDS,
        SHADOW_DELIVERY_FAILURES,
        REPOSITORY_SCANS,
        DRIFT_JS,
        DRIFT_P_VALUE,
        DRIFT_ALERTS,
        DRIFT_ALERTING,
        LABELS,
        LABELS_WAITED,
        LABEL_PARTITIONS,
        QUALITY_PENDING_PREDICTIONS,
        QUALITY_WAITING_LABELS,
        QUALITY_PREDICTIONS_DROPPED,
        QUALITY_PRECISION,
        QUALITY_RECALL,
        QUALITY_CALIBRATION_ERROR,
        QUALITY_BRIER,
        QUALITY_LABELLED,
        QUALITY_REPORTS,
    ]);
    (all, histograms)
}

/// The `streamscore_*` series a PromQL expression reads, histogram suffixes removed; panics on
/// a name streamscore does not export.
fn metrics_in(expr: &str, origin: &str) -> BTreeSet<String> {
    let (known, histograms) = known_metrics();
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut from = 0;
    while let Some(i) = expr[from..].find("streamscore_") {
        let start = from + i;
        let len =
            expr[start..].bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_').count();
        from = start + len;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let name = &expr[start..start + len];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(b)))
            .unwrap_or(name);
        assert!(
            known.contains(base),
            "{origin}: `{name}` is not a metric streamscore exports (src/telemetry.rs):\n  {expr}"
        );
        out.insert(base.to_string());
    }
    out
}

#[test]
fn metric_name_check_catches_typos() {
    assert!(metrics_in("sum(rate(streamscore_batch_size_bucket[5m]))", "t").contains("streamscore_batch_size"));
    assert!(std::panic::catch_unwind(|| metrics_in("streamscore_events_consumed", "t")).is_err());
    assert!(std::panic::catch_unwind(|| metrics_in("streamscore_ready_bucket", "t")).is_err());
}

struct Alert {
    name: String,
    expr: String,
    runbook_url: String,
}

fn alerts() -> Vec<Alert> {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let mut out = Vec::new();
    for group in rules.get("groups").map(Yaml::items).unwrap_or_default() {
        for rule in group.get("rules").map(Yaml::items).unwrap_or_default() {
            let name = rule.str_at(&["alert"]).expect("alerts.yml: a rule without `alert`").to_string();
            let expr = rule.str_at(&["expr"]).unwrap_or_else(|| panic!("alert {name} has no expr")).to_string();
            let runbook_url = rule.str_at(&["annotations", "runbook_url"]).unwrap_or_default().to_string();
            assert!(rule.str_at(&["labels", "severity"]).is_some(), "alert {name} has no severity label");
            out.push(Alert { name, expr, runbook_url });
        }
    }
    assert!(!out.is_empty(), "deploy/prometheus/alerts.yml holds no alert");
    out
}

/// The compose service's `volumes:` as (host path, container path).
fn compose_mounts(service: &Yaml) -> Vec<(String, String)> {
    service
        .get("volumes")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(Yaml::as_str)
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

fn compose_yaml() -> Yaml {
    yaml_file("docker-compose.yml")
}

/// The container path where the compose `service` mounts the repository directory `host`.
fn mounted_at(service: &Yaml, name: &str, host: &str) -> String {
    compose_mounts(service)
        .into_iter()
        .find(|(h, _)| h.trim_start_matches("./").trim_end_matches('/') == host)
        .map(|(_, c)| c.trim_end_matches('/').to_string())
        .unwrap_or_else(|| panic!("the compose service {name} does not mount ./{host}"))
}

#[test]
fn prometheus_scrapes_every_replica_and_loads_the_alerts() {
    let cfg = config();
    let compose = compose_yaml();
    let services = compose.get("services").expect("compose services");
    let prom_service = services.get("prometheus").expect("docker-compose.yml has no prometheus service");
    let prom = yaml_file("deploy/prometheus/prometheus.yml");
    let conf_dir = mounted_at(prom_service, "prometheus", "deploy/prometheus");
    let args = prom_service.get("command").map(Yaml::strings).unwrap_or_default();
    assert!(
        args.iter().any(|a| *a == format!("--config.file={conf_dir}/prometheus.yml")),
        "the prometheus service does not read {conf_dir}/prometheus.yml: {args:?}"
    );

    // The streamscore service by name through DNS (every replica of `--scale`), on its port.
    let port = telemetry_port(&cfg);
    let jobs = prom.get("scrape_configs").map(Yaml::items).unwrap_or_default();
    let scrapes_streamscore = jobs.iter().any(|job| {
        job.get("dns_sd_configs").map(Yaml::items).unwrap_or_default().iter().any(|sd| {
            sd.get("names").map(Yaml::items).unwrap_or_default().iter().any(|n| n.as_str() == Some("streamscore"))
                && sd.str_at(&["port"]) == Some(port.as_str())
                && sd.str_at(&["type"]).unwrap_or("SRV") == "A"
        })
    });
    assert!(
        scrapes_streamscore,
        "prometheus.yml should discover every replica of the streamscore service (dns_sd_configs, type A, port {port})"
    );
    assert!(services.get("streamscore").is_some(), "the scraped service streamscore is not in docker-compose.yml");

    // The rule file is the mounted alerts.yml.
    let rule_files: Vec<&str> =
        prom.get("rule_files").map(Yaml::items).unwrap_or_default().iter().filter_map(Yaml::as_str).collect();
    assert!(
        rule_files.contains(&format!("{conf_dir}/alerts.yml").as_str()),
        "prometheus.yml does not load {conf_dir}/alerts.yml: {rule_files:?}"
    );

    // Alerts read real metrics and cover what the operations issue asks for.
    let mut used = BTreeSet::new();
    for alert in alerts() {
        used.extend(metrics_in(&alert.expr, &format!("alert {}", alert.name)));
    }
    use streamscore::telemetry::names;
    for want in [
        names::CONSUMER_LAG,
        names::EVENTS_DEAD_LETTERED,
        names::DRIFT_PSI,
        names::READY,
        names::MODEL_LOAD_FAILURES,
        names::DELIVERY_FAILURES,
    ] {
        assert!(used.contains(want), "no alert in deploy/prometheus/alerts.yml watches {want}");
    }
    let drift = alerts().into_iter().find(|a| a.expr.contains(names::DRIFT_PSI)).expect("a drift alert");
    assert!(drift.expr.contains("> 0.25"), "the drift alert should fire above PSI 0.25: {}", drift.expr);
}

#[test]
fn every_alert_has_a_runbook_section() {
    let runbook = read("docs/runbook.md");
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().trim_matches('`').to_string())
        .collect();
    let mut names = BTreeSet::new();
    for alert in alerts() {
        assert!(names.insert(alert.name.clone()), "alert {} is defined twice", alert.name);
        assert!(headings.contains(&alert.name), "docs/runbook.md has no `### {}` section", alert.name);
        assert_eq!(
            alert.runbook_url,
            format!("docs/runbook.md#{}", alert.name.to_ascii_lowercase()),
            "alert {}: runbook_url should point at its section",
            alert.name
        );
    }
    for needle in [
        "/admin/rollback",
        "model.dir",
        "partitions",
        "maxReplicaCount",
        "streamscore.dlq.reason",
        "rpk topic consume",
        "| 130 |",
        "| 2 |",
        "| 1 |",
        "| 0 |",
        "deploy/k8s/",
    ] {
        assert!(runbook.contains(needle), "docs/runbook.md does not mention {needle}");
    }
    for reason in streamscore::outcome::DeadLetterReason::ALL {
        assert!(
            runbook.contains(&format!("`{}`", reason.as_str())),
            "docs/runbook.md does not explain the dead-letter reason {}",
            reason.as_str()
        );
    }
}

#[test]
fn grafana_provisions_the_dashboard_over_the_prometheus_data_source() {
    let compose = compose_yaml();
    let services = compose.get("services").expect("compose services");
    let grafana = services.get("grafana").expect("docker-compose.yml has no grafana service");
    assert_eq!(
        mounted_at(grafana, "grafana", "deploy/grafana/provisioning"),
        "/etc/grafana/provisioning",
        "mount deploy/grafana/provisioning at Grafana's provisioning directory"
    );
    let dashboards_dir = mounted_at(grafana, "grafana", "deploy/grafana/dashboards");

    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = datasources.get("datasources").map(Yaml::items).unwrap_or_default();
    let prom = ds.iter().find(|d| d.str_at(&["type"]) == Some("prometheus")).expect("a prometheus data source");
    let uid = prom.str_at(&["uid"]).expect("the data source has a uid (the dashboard refers to it)");
    let url = prom.str_at(&["url"]).expect("the data source has a url");
    let host = url.trim_start_matches("http://").split(':').next().unwrap_or("");
    assert!(services.get(host).is_some(), "the data source points at {url}, but there is no compose service {host}");

    let providers = yaml_file("deploy/grafana/provisioning/dashboards/streamscore.yml");
    let paths: Vec<&str> = providers
        .get("providers")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.str_at(&["options", "path"]))
        .collect();
    assert!(
        paths.iter().any(|p| p.trim_end_matches('/') == dashboards_dir),
        "no dashboard provider reads {dashboards_dir}, where compose mounts deploy/grafana/dashboards: {paths:?}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/streamscore.json")).expect("the dashboard is JSON");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()), "the dashboard has no uid");
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    let mut ids = BTreeSet::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel id of {title} is not unique");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "panel {title} does not use the data source {uid}");
        for target in panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets")) {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            metrics_in(expr, &format!("panel {title}"));
            exprs.push((title.clone(), expr.to_string()));
        }
    }

    // What the operations issue asks the dashboard to show.
    use streamscore::telemetry::names;
    let shows = |needles: &[&str]| exprs.iter().any(|(_, e)| needles.iter().all(|n| e.contains(n)));
    let wanted: [(&str, &[&str]); 12] = [
        ("throughput: consumed", &["rate(", names::EVENTS_CONSUMED]),
        ("throughput: scored", &["rate(", names::EVENTS_SCORED]),
        ("lag", &[names::CONSUMER_LAG]),
        (
            "end-to-end latency percentiles",
            &["histogram_quantile(0.99", "streamscore_end_to_end_latency_seconds_bucket"],
        ),
        (
            "processing latency percentiles",
            &["histogram_quantile(0.5", "streamscore_processing_latency_seconds_bucket"],
        ),
        ("batch sizes", &["streamscore_batch_size_"]),
        ("time per pipeline stage", &["by (le, stage)", "streamscore_batch_stage_seconds_bucket"]),
        ("cache hit rate", &[names::CACHE_HITS, names::CACHE_MISSES]),
        ("dead letters by reason", &["by (reason)", names::EVENTS_DEAD_LETTERED]),
        ("drift per feature", &["feature", names::DRIFT_PSI]),
        ("model version", &["version", names::MODEL_INFO]),
        ("readiness", &[names::READY]),
    ];
    for (what, needles) in wanted {
        assert!(shows(needles), "the dashboard shows no {what} (an expr with {needles:?})");
    }
}

#[test]
fn compose_runs_the_monitoring_and_schema_registration() {
    let cfg = config();
    let compose = compose_yaml();
    let services = compose.get("services").expect("compose services");
    for name in ["redpanda", "topics", "schemas", "console", "streamscore", "producer", "prometheus", "grafana"] {
        assert!(services.get(name).is_some(), "docker-compose.yml has no service {name}");
    }
    for (name, service) in services.entries() {
        if service.get("build").is_none() {
            let image =
                service.str_at(&["image"]).unwrap_or_else(|| panic!("service {name} has neither image nor build"));
            check_pinned_image(image, &format!("docker-compose.yml service {name}"));
        }
        // Mounted repository paths exist.
        for (host, _) in compose_mounts(service) {
            if let Some(rel) = host.strip_prefix("./") {
                assert!(repo().join(rel).exists(), "service {name} mounts {host}, which does not exist");
            }
        }
    }
    // The input's writer schema is registered under <input topic>-value before streamscore starts.
    let schemas = services.get("schemas").expect("schemas service");
    let script = schemas.strings().join("\n");
    let topic = &input_topics(&cfg)[0];
    assert!(
        script.contains(&format!("rpk registry schema create {topic}-value")),
        "the schemas service does not register {topic}-value"
    );
    let avsc = config_str(&cfg, "schemas", "reader_schema");
    let file = Path::new(avsc).file_name().and_then(|f| f.to_str()).expect("reader_schema file");
    assert!(script.contains(file), "the schemas service does not register {file}");
    assert_eq!(
        services.str_at(&["streamscore", "depends_on", "schemas", "condition"]),
        Some("service_completed_successfully"),
        "streamscore should start after the schema registration completed"
    );
}

#[test]
fn deployment_guide_links_the_deploy_files() {
    let doc = read("docs/deployment.md");
    for needle in [
        "deploy/k8s/",
        "deploy/k8s/keda-scaledobject.yaml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/dashboards/streamscore.json",
        "runbook.md",
        "http://localhost:3000",
        "http://localhost:9090",
    ] {
        assert!(doc.contains(needle), "docs/deployment.md does not mention {needle}");
    }
}
