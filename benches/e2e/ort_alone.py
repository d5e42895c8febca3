#!/usr/bin/env python3
"""ONNX Runtime alone on the benchmark's batches: the inference floor under every contender.

    ort_alone.py --bootstrap 127.0.0.1:9092 --input transactions --count 300000

Reads the N preloaded transactions from the input topic once (its own consumer group, no
commits), decodes them with fastavro and extracts the feature rows with
python/streamscore_features.py (none of that is timed), then times `session.run` over the rows
in batches of 256 (the last one shorter), one InferenceSession with 1 intra-op and 1 inter-op
thread (streamscore's defaults). The pass over all rows is repeated until at least
--min-seconds of wall time have been measured; the figures are per row over all passes.

CPU time is `time.process_time()` of this process around the timed loop (all threads). The
Python binding adds a small fixed cost per call (a few µs for argument conversion and the
output array) next to a 256-row batch of this MLP (~tens of µs), so this is close to what a
Rust caller pays per batch; it slightly overstates ONNX Runtime's share, if anything.

Prints `result {json}` with rows, calls, wall_s, cpu_s, rows_per_s, cpu_s_per_million_rows,
us_per_call.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import fastavro
import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import streamscore_features as sf  # noqa: E402
from peer import load_schema  # noqa: E402


def read_rows(bootstrap: str, topic: str, count: int, extractor, schema) -> np.ndarray:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"ort-alone-{os.getpid()}-{time.time_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    consumer.subscribe([topic])
    rows = []
    seen = 0
    deadline = time.time() + 120
    while seen < count and time.time() < deadline:
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            if m.error():
                continue
            seen += 1
            v = m.value()
            if v is None or len(v) < 5 or v[0] != 0:
                continue
            try:
                rows.append(extractor.extract(fastavro.schemaless_reader(io.BytesIO(v[5:]), schema, None)))
            except Exception:
                continue
    consumer.close()
    if seen < count:
        raise SystemExit(f"ort_alone: read only {seen} of {count} messages from {topic}")
    return np.vstack(rows).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--model-dir", default=os.path.join(REPO, "models", "fraud_mlp", "1"))
    args = ap.parse_args(argv)

    manifest = sf.load_manifest(args.model_dir, verify_sha256=True)
    extractor = sf.FeatureExtractor(manifest["features"])
    schema = load_schema(os.path.join(REPO, "schemas", "transaction.avsc"))
    X = read_rows(args.bootstrap, args.input, args.count, extractor, schema)
    batches = [X[i:i + args.batch] for i in range(0, len(X), args.batch)]

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(args.model_dir, manifest["model_file"]), so, providers=["CPUExecutionProvider"])
    in_name, out_name = manifest["input"]["name"], manifest["output"]["name"]
    for b in batches[:50]:  # warm-up
        sess.run([out_name], {in_name: b})

    rows = calls = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        for b in batches:
            sess.run([out_name], {in_name: b})
        rows += len(X)
        calls += len(batches)
        if time.perf_counter() - wall0 >= args.min_seconds:
            break
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    res = {
        "rows": rows, "distinct_rows": len(X), "calls": calls, "batch": args.batch,
        "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall,
        "cpu_s_per_million_rows": cpu / rows * 1e6, "us_per_call": wall / calls * 1e6,
    }
    print("result " + json.dumps(res), flush=True)
    print(f"ort_alone: {rows} rows in {calls} calls of <= {args.batch}: {rows / wall:,.0f} rows/s, "
          f"{cpu / rows * 1e6:.3f} CPU-s per million rows, {wall / calls * 1e6:.1f} µs per call "
          f"(Python binding overhead per call is a few µs, small next to a {args.batch}-row batch)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
