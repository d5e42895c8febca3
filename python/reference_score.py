#!/usr/bin/env python3
"""Independent reference scorer for streamscore's integration tests.

    reference_score.py --model-dir models/fraud_mlp/1 --schema schemas/transaction.avsc \\
                       --input IN --output OUT

IN has one line per Kafka message value: base64 (standard alphabet) of the Confluent-framed
bytes (byte 0 = magic 0, bytes 1..5 = big-endian schema id, then the Avro binary body written
with `--schema` as the writer schema). The body is decoded with fastavro, resolved to the
reader schema (`--reader-schema`, by default the repository's schemas/transaction.avsc), turned
into features by streamscore_features (from the manifest), and scored by onnxruntime on the CPU
in a single batch.

OUT gets one JSON line per input line, in input order:
    {"event_id": "...", "score": 0.123, "label": false}
    {"event_id": "...", "rejected": "missing_feature" | "invalid_feature"}
Framing/decoding failures are written as rejections too, with event_id null and the reason
names streamscore uses (truncated, bad_magic, schema_mismatch, undecodable). The schema id is
not checked: this scorer knows only one writer schema.

The manifest's sha256 must match model.onnx, and its columns must match those derived from its
features; otherwise the script exits non-zero without writing OUT.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import sys

import fastavro
import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import streamscore_features as sf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_READER_SCHEMA = os.path.join(REPO, "schemas", "transaction.avsc")


def strip_logical_types(schema):
    """Drop `logicalType` annotations so fastavro returns raw values.

    Logical types do not change the binary encoding; without them event_time stays an int of
    millis (fastavro would otherwise build a datetime, which fails outside years 1..9999) and the
    uuid-typed event_id stays the exact string that was written.
    """
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


def load_schema(path: str):
    with open(path, encoding="utf-8") as f:
        return fastavro.parse_schema(strip_logical_types(json.load(f)))


class FramingError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_message(value: bytes, writer, reader) -> dict:
    """Confluent-framed Avro bytes -> record dict (reader-schema field names)."""
    if len(value) < 5:
        raise FramingError("truncated")
    if value[0] != 0:
        raise FramingError("bad_magic")
    try:
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, reader)
    except fastavro.read.SchemaResolutionError:
        raise FramingError("schema_mismatch")
    except Exception:  # EOF, bad union index, bad utf-8, ...: the body does not decode
        raise FramingError("undecodable")


def score_lines(lines: list[str], model_dir: str, writer_schema_path: str, reader_schema_path: str | None) -> list[dict]:
    manifest = sf.load_manifest(model_dir, verify_sha256=True)
    extractor = sf.FeatureExtractor(manifest["features"])
    writer = load_schema(writer_schema_path)
    reader = None
    if reader_schema_path and os.path.abspath(reader_schema_path) != os.path.abspath(writer_schema_path):
        reader = load_schema(reader_schema_path)

    results: list[dict | None] = [None] * len(lines)
    rows: list[np.ndarray] = []
    row_owner: list[tuple[int, object]] = []
    for i, line in enumerate(lines):
        try:
            value = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError) as e:
            raise SystemExit(f"line {i + 1}: not base64: {e}")
        try:
            record = decode_message(value, writer, reader)
        except FramingError as e:
            results[i] = {"event_id": None, "rejected": e.reason}
            continue
        event_id = record.get("event_id")
        try:
            rows.append(extractor.extract(record))
        except sf.Rejected as r:
            results[i] = {"event_id": event_id, "rejected": r.reason}
            continue
        row_owner.append((i, event_id))

    if rows:
        sess = ort.InferenceSession(os.path.join(model_dir, manifest["model_file"]),
                                    providers=["CPUExecutionProvider"])
        out_name = manifest["output"]["name"]
        out = sess.run([out_name], {manifest["input"]["name"]: np.vstack(rows).astype(np.float32)})[0]
        scores = out if out.ndim == 1 else out[:, int(manifest["output"].get("column", 0))]
        threshold = float(manifest["threshold"])
        for (i, event_id), s in zip(row_owner, scores.tolist()):
            # s is the float32 score widened exactly to a Python float.
            results[i] = {"event_id": event_id, "score": s, "label": bool(s >= threshold)}
    return results  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--schema", required=True, help="writer schema (.avsc) of the input bodies")
    ap.add_argument("--reader-schema", default=DEFAULT_READER_SCHEMA if os.path.exists(DEFAULT_READER_SCHEMA) else None,
                    help="reader schema (default: the repository's schemas/transaction.avsc)")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)

    with open(args.input, encoding="ascii") as f:
        lines = f.read().splitlines()
    try:
        results = score_lines(lines, args.model_dir, args.schema, args.reader_schema)
    except sf.ManifestError as e:
        print(f"reference_score: refusing model: {e}", file=sys.stderr)
        return 2
    with open(args.output, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
