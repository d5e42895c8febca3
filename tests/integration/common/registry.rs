//! An in-process stand-in for the Confluent Schema Registry, plus a tiny
//! blocking HTTP client to poke at it.
//!
//! It serves the subset of the REST API streamscore and
//! `schema_registry_converter` use, with Confluent's content type and error
//! bodies, and counts requests so tests can prove caching. Schema ids are
//! global and deduplicated by schema text, as in Confluent.
//!
//! The server runs on its own thread and current-thread Tokio runtime, so it
//! works from `#[test]` and `#[tokio::test]` alike and survives the test's
//! runtime being blocked.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct Store {
    /// Index `i` holds schema id `i + 1`: (schema text, schemaType).
    schemas: Vec<(String, String)>,
    /// Per subject, the schema id of each version (version `v` at `v - 1`).
    subjects: HashMap<String, Vec<u32>>,
}

impl Store {
    fn register(&mut self, subject: &str, schema: &str, schema_type: &str) -> u32 {
        let id = match self.schemas.iter().position(|(s, t)| s == schema && t == schema_type) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push((schema.to_owned(), schema_type.to_owned()));
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    fn version_body(&self, subject: &str, version: usize) -> Option<Value> {
        let id = *self.subjects.get(subject)?.get(version.checked_sub(1)?)?;
        let (schema, schema_type) = &self.schemas[id as usize - 1];
        let mut body = json!({"subject": subject, "version": version, "id": id, "schema": schema});
        if schema_type != "AVRO" {
            body["schemaType"] = json!(schema_type);
        }
        Some(body)
    }
}

#[derive(Default)]
struct Shared {
    store: Mutex<Store>,
    get_by_id: AtomicU64,
    get_version: AtomicU64,
    register: AtomicU64,
    lookup: AtomicU64,
    unavailable: AtomicBool,
}

/// A running mock registry; stops when dropped.
pub struct Registry {
    url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Registry {
    /// Starts the server on a free loopback port.
    pub fn start() -> Registry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind registry");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/schemas/ids/{id}", get(get_by_id))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(get_version))
            .route("/subjects/{subject}", post(lookup))
            .with_state(shared.clone());
        std::thread::Builder::new()
            .name("mock-registry".into())
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("registry runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    // Dropping the runtime on stop cancels open connections too;
                    // a graceful shutdown would wait for idle keep-alives.
                    tokio::select! {
                        result = axum::serve(listener, app).into_future() => {
                            result.expect("registry server");
                        }
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn registry thread");
        Registry { url, shared, stop: Some(stop) }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Registers `schema_json` under `subject` directly (no HTTP, not
    /// counted) and returns its id; the same text always gets the same id.
    pub fn register(&self, subject: &str, schema_json: &str) -> u32 {
        self.shared.store.lock().unwrap().register(subject, schema_json, "AVRO")
    }

    /// Requests to `GET /schemas/ids/{id}` so far, found or not.
    pub fn get_by_id_calls(&self) -> u64 {
        self.shared.get_by_id.load(Ordering::SeqCst)
    }

    /// Requests to `GET /subjects/{subject}/versions/{version|latest}`.
    pub fn get_version_calls(&self) -> u64 {
        self.shared.get_version.load(Ordering::SeqCst)
    }

    /// Requests to `POST /subjects/{subject}/versions`.
    pub fn register_calls(&self) -> u64 {
        self.shared.register.load(Ordering::SeqCst)
    }

    /// Requests to `POST /subjects/{subject}` (schema lookup).
    pub fn lookup_calls(&self) -> u64 {
        self.shared.lookup.load(Ordering::SeqCst)
    }

    /// While unavailable, every request is counted and then answered
    /// `500 {"error_code": 50001, ...}`, like a registry whose store is down.
    pub fn set_available(&self, available: bool) {
        self.shared.unavailable.store(!available, Ordering::SeqCst);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    reply(status, json!({"error_code": code, "message": message}))
}

fn down(shared: &Shared) -> Option<Response> {
    shared
        .unavailable
        .load(Ordering::SeqCst)
        .then(|| error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "Error in the backend data store"))
}

async fn get_by_id(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    shared.get_by_id.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = down(&shared) {
        return r;
    }
    let store = shared.store.lock().unwrap();
    let found = id.parse::<usize>().ok().and_then(|id| id.checked_sub(1)).and_then(|i| store.schemas.get(i));
    match found {
        Some((schema, schema_type)) if schema_type == "AVRO" => reply(StatusCode::OK, json!({"schema": schema})),
        Some((schema, schema_type)) => reply(StatusCode::OK, json!({"schema": schema, "schemaType": schema_type})),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn get_version(State(shared): State<Arc<Shared>>, Path((subject, version)): Path<(String, String)>) -> Response {
    shared.get_version.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = down(&shared) {
        return r;
    }
    let store = shared.store.lock().unwrap();
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, &format!("Subject '{subject}' not found."));
    };
    let version = match version.as_str() {
        "latest" | "-1" => versions.len(),
        v => v.parse().unwrap_or(0),
    };
    match store.version_body(&subject, version) {
        Some(body) => reply(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found."),
    }
}

/// Parses `{"schema": "...", "schemaType"?: "..."}` into (schema, type), or
/// says why it is invalid.
fn schema_request(body: &[u8]) -> Result<(String, String), String> {
    let request: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let schema = request["schema"].as_str().ok_or("no \"schema\" string")?;
    let schema_type = request["schemaType"].as_str().unwrap_or("AVRO").to_owned();
    if schema_type == "AVRO" {
        serde_json::from_str::<Value>(schema).map_err(|e| e.to_string())?;
    }
    Ok((schema.to_owned(), schema_type))
}

fn invalid_schema(why: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201, &format!("Invalid schema: {why}"))
}

async fn register(State(shared): State<Arc<Shared>>, Path(subject): Path<String>, body: Bytes) -> Response {
    shared.register.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = down(&shared) {
        return r;
    }
    match schema_request(&body) {
        Ok((schema, schema_type)) => {
            let id = shared.store.lock().unwrap().register(&subject, &schema, &schema_type);
            reply(StatusCode::OK, json!({"id": id}))
        }
        Err(why) => invalid_schema(&why),
    }
}

async fn lookup(State(shared): State<Arc<Shared>>, Path(subject): Path<String>, body: Bytes) -> Response {
    shared.lookup.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = down(&shared) {
        return r;
    }
    let (schema, schema_type) = match schema_request(&body) {
        Ok(parsed) => parsed,
        Err(why) => return invalid_schema(&why),
    };
    let store = shared.store.lock().unwrap();
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, &format!("Subject '{subject}' not found."));
    };
    let hit = versions.iter().position(|&id| {
        let (s, t) = &store.schemas[id as usize - 1];
        *s == schema && *t == schema_type
    });
    match hit.and_then(|i| store.version_body(&subject, i + 1)) {
        Some(body) => reply(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

/// A response from [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }
}

/// A minimal blocking HTTP/1.1 client for `http://host:port/path` URLs
/// (one request per connection; `Connection: close`). Blocking: from async
/// code, wrap it in `tokio::task::spawn_blocking`.
pub fn http(method: &str, url: &str, body: Option<&str>) -> HttpResponse {
    http_with_headers(method, url, body, &[])
}

/// As [`http`], with extra request headers (e.g. `Authorization`).
pub fn http_with_headers(method: &str, url: &str, body: Option<&str>, extra: &[(&str, &str)]) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {authority}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Accept: {CONTENT_TYPE}, application/json\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Content-Length: {}\r\n{}\r\n{body}",
        body.len(),
        extra.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect::<String>()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut payload = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        payload = dechunk(&payload);
    }
    HttpResponse { status, headers, body: String::from_utf8_lossy(&payload).into_owned() }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}
