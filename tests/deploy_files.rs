//! Checks the deployment files against the repository, without Docker: `Dockerfile`,
//! `.dockerignore`, `docker-compose.yml` and `docs/deployment.md`.
//!
//! Uses only std, `toml` and `serde_json`. The compose file is read line by line (there is no
//! YAML parser among the dependencies), which relies on its conventional layout: one
//! `services:` key at column 0 with the service names one indentation level below it.

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
    assert!(
        seconds(&grace) > seconds(drain),
        "stop_grace_period {grace} of the streamscore service must exceed delivery.drain_timeout {drain}, or Docker kills the drain"
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
