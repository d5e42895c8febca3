#!/usr/bin/env python3
"""The Python peer of streamscore: what a user would write with confluent-kafka + fastavro + onnxruntime.

    peer.py --bootstrap 127.0.0.1:9092 --input transactions --output transactions.scored.peer \\
            --dlq transactions.dlq.peer --group peer --count 300000

Same job as streamscore, same outputs: a consumer group reads Confluent-framed Avro
transactions (schemas/transaction.avsc), batches of up to 256 are decoded with fastavro, turned
into features by python/streamscore_features.py (from the model's manifest), scored by one
onnxruntime InferenceSession call per batch (1 intra-op thread, like streamscore's default), and
one ScoredTransaction (schemas/scored_transaction.avsc, Confluent framing, schema id 2) per
input is produced to the output topic with the input's key and headers. Inputs that fail
(framing, decode, features) go to the dead-letter topic with their original bytes and a
`streamscore.dlq.reason` header. No prediction cache: this is the straightforward peer.

Commits (at-least-once, as streamscore): per batch, the records are produced with a delivery
callback, `producer.poll(0)` serves callbacks, then `producer.flush()` waits until the broker has
acknowledged the whole batch, and only then are the batch's offsets (explicit, next offset per
partition) committed, asynchronously; the final commit is synchronous. A flush per batch is what
a typical user writes to get at-least-once without an offset tracker. (librdkafka's flush wakes
the producer at once, so it does not wait the 5 ms linger; it does cost a broker round trip per
batch.)

librdkafka settings are streamscore's (compare code, not configuration):
fetch.queue.backoff.ms=10, enable.idempotence=true, linger.ms=5, no auto-commit; plus the
session settings the harness gives every contender for Tansu (session.timeout.ms=6000,
heartbeat.interval.ms=1000).

Output on stdout: `progress <consumed> <outputs delivered> <unix-seconds>` about every 50 ms, and
at the end one line `done {json}`. Exits after --count outputs are delivered and committed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time

import fastavro
import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))
import streamscore_features as sf  # noqa: E402
from reference_score import load_schema  # noqa: E402  (logical types kept as millis / plain strings)

BATCH = 256
SCORED_SCHEMA_ID = 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--count", type=int, required=True, help="exit after this many outputs are delivered and committed")
    ap.add_argument("--model-dir", default=os.path.join(REPO, "models", "fraud_mlp", "1"))
    ap.add_argument("--batch-timeout", type=float, default=0.005, help="consume() timeout (streamscore's max_batch_delay)")
    args = ap.parse_args(argv)

    manifest = sf.load_manifest(args.model_dir, verify_sha256=True)
    extractor = sf.FeatureExtractor(manifest["features"])
    tx_schema = load_schema(os.path.join(REPO, "schemas", "transaction.avsc"))
    scored_schema = load_schema(os.path.join(REPO, "schemas", "scored_transaction.avsc"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(args.model_dir, manifest["model_file"]), so, providers=["CPUExecutionProvider"])
    in_name = manifest["input"]["name"]
    out_name = manifest["output"]["name"]
    out_col = int(manifest["output"].get("column", 0))
    threshold = float(manifest["threshold"])
    model_name, model_version = manifest["name"], str(manifest["version"])
    scored_header = b"\x00" + struct.pack(">I", SCORED_SCHEMA_ID)

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "client.id": "peer",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "client.id": "peer",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "queue.buffering.max.messages": 1000000,
    })
    delivered = 0
    failures = []

    def on_delivery(err, _msg):
        nonlocal delivered
        if err is not None:
            failures.append(str(err))
        else:
            delivered += 1

    consumer.subscribe([args.input])
    consumed = 0
    t_first = None
    cpu_first = 0.0
    last_progress = 0.0
    buf = io.BytesIO()
    while delivered < args.count:
        msgs = consumer.consume(num_messages=BATCH, timeout=args.batch_timeout)
        now = time.time()
        if now - last_progress >= 0.05:
            last_progress = now
            print(f"progress {consumed} {delivered} {now:.6f}", flush=True)
        if not msgs:
            continue
        if t_first is None:
            t_first = time.time()
            cpu_first = time.process_time()  # all threads of this process (librdkafka's included)
        good = []  # (msg, record)
        next_offsets = {}
        for m in msgs:
            if m.error():
                print(f"peer: consumer error: {m.error()}", file=sys.stderr)
                continue
            consumed += 1
            tp = (m.topic(), m.partition())
            next_offsets[tp] = max(next_offsets.get(tp, 0), m.offset() + 1)
            v = m.value()
            reason = None
            if v is None or len(v) < 5:
                reason = "truncated"
            elif v[0] != 0:
                reason = "bad_magic"
            elif struct.unpack(">I", v[1:5])[0] != 1:
                reason = "unknown_schema"
            else:
                try:
                    rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), tx_schema, None)
                except Exception:
                    reason = "undecodable"
            if reason is None:
                good.append((m, rec))
            else:
                dead_letter(producer, args.dlq, m, reason, on_delivery)

        rows = []
        scored = []
        for m, rec in good:
            try:
                rows.append(extractor.extract(rec))
                scored.append((m, rec))
            except sf.Rejected as r:
                dead_letter(producer, args.dlq, m, r.reason, on_delivery)
        if rows:
            out = sess.run([out_name], {in_name: np.vstack(rows)})[0]
            scores = out if out.ndim == 1 else out[:, out_col]
            scored_at = int(time.time() * 1000)
            for (m, rec), s in zip(scored, scores.tolist()):
                buf.seek(0)
                buf.truncate()
                buf.write(scored_header)
                fastavro.schemaless_writer(buf, scored_schema, {
                    "event_id": rec["event_id"],
                    "transaction_id": rec["transaction_id"],
                    "model_name": model_name,
                    "model_version": model_version,
                    "score": s,
                    "label": s >= threshold,
                    "threshold": threshold,
                    "cache_hit": False,
                    "source_topic": m.topic(),
                    "source_partition": m.partition(),
                    "source_offset": m.offset(),
                    "event_time": rec["event_time"],
                    "scored_at": scored_at,
                })
                produce(producer, args.output, buf.getvalue(), m.key(), m.headers(), on_delivery)
        producer.poll(0)
        # At-least-once: the batch's outcomes must be acknowledged before its offsets are committed.
        remaining = producer.flush(30)
        if remaining or failures:
            print(f"peer: {remaining} outcome(s) undelivered, failures: {failures[:3]}; not committing", file=sys.stderr)
            return 1
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=True)

    # The last batch's commit again, synchronously, so the run ends with its offsets stored.
    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=False)
    t_done = time.time()
    print(f"progress {consumed} {delivered} {t_done:.6f}", flush=True)
    secs = max(t_done - (t_first or t_done), 1e-9)
    print("done " + json.dumps({"consumed": consumed, "delivered": delivered, "t_first": t_first, "t_done": t_done,
                                "cpu_first": cpu_first,
                                "events_per_s": delivered / secs}), flush=True)
    print(f"peer: {delivered} delivered and committed in {secs:.2f} s from the first message: "
          f"{delivered / secs:.0f} events/s", file=sys.stderr)
    consumer.close()
    return 0


def produce(producer, topic, value, key, headers, on_delivery):
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.01)


def dead_letter(producer, topic, m, reason, on_delivery):
    headers = list(m.headers() or []) + [("streamscore.dlq.reason", reason.encode())]
    produce(producer, topic, m.value(), m.key(), headers, on_delivery)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"peer: kafka error: {e}", file=sys.stderr)
        sys.exit(1)
