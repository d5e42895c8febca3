#!/usr/bin/env python3
"""Write the validation gate's dataset for a model version (docs/model-validation.md).

    python models/make_validation.py --model-dir models/fraud_mlp/1

Writes <model-dir>/validation.jsonl and adds a `validation` object to <model-dir>/manifest.json;
never touches model.onnx. `models/train.py` calls it after every export, so `make model`
regenerates both. Needs only python/requirements.txt (numpy, onnxruntime).

The dataset: `--rows` transactions drawn from the same generative process as the training data
(`train.generate_transactions`, another seed), with the label drawn from the documented fraud
logit (`train.draw_labels`). Every 100th row gets a currency (SEK) and a country (SE) the
generator never draws, so the `__other__` columns are exercised too. One JSON object per line:
the Transaction fields of schemas/transaction.avsc as plain JSON values (null or the value,
`event_time` in epoch milliseconds, the enum as its symbol), then
  - `label`: 0 or 1;
  - `reference_score`: the score onnxruntime gives on the features built by
    python/streamscore_features.py (the reference scorer's extraction, independent of the Rust
    code), as the float32 result widened exactly to a JSON number.

Seeded: a rerun with the same model reproduces both files byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, HERE)
import streamscore_features as sf  # noqa: E402
import train  # noqa: E402  (generate_transactions and draw_labels need no training pins)

DATASET = "validation.jsonl"
# Distinct from the training seeds (train.SEED for the rows, train.SEED + 1 for their labels).
VALIDATION_SEED = train.SEED + 1000
ROWS = 4000
# Field order of schemas/transaction.avsc, so the file reads like the schema.
FIELDS = [
    "event_id", "transaction_id", "account_id", "card_id", "merchant_id", "amount", "currency",
    "merchant_category", "channel", "country", "event_time", "account_age_days", "distance_from_home_km",
    "txn_count_1h", "card_present", "new_device",
]
# The gate's limits. Quality limits sit below what the shipped model reaches on this dataset
# (printed below) by a margin that a retrain of the same recipe keeps, and well above what a
# broken model (e.g. the wrong output column) reaches. Parity: streamscore and onnxruntime in
# Python run the same library on the same features, so anything above float noise is a
# training/serving skew. Latency: generous for CPU inference of a 256-row batch of this MLP
# (tens of microseconds); a model that needs more is a different deployment.
LIMITS = {
    "max_abs_score_diff": 1e-5,
    "min_roc_auc": 0.85,
    "min_precision": 0.30,
    "min_recall": 0.35,
    "batch_size": 256,
    "max_batch_latency_ms": 50.0,
}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Tie-aware ROC AUC (Mann-Whitney U with average ranks), as streamscore computes it."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def make(model_dir: str, rows: int = ROWS, seed: int = VALIDATION_SEED) -> dict:
    import onnxruntime as ort

    manifest_path = os.path.join(model_dir, "manifest.json")
    manifest = sf.load_manifest(model_dir, verify_sha256=True)
    records = train.generate_transactions(rows, seed=seed)
    for r in records[::100]:
        r["currency"] = "SEK"
        r["country"] = "SE"
    labels = train.draw_labels(records, seed=seed + 1)
    X, rejections = sf.FeatureExtractor(manifest["features"]).extract_many(records)
    assert not any(rejections), "the generator never produces rejectable records"

    sess = ort.InferenceSession(os.path.join(model_dir, manifest["model_file"]), providers=["CPUExecutionProvider"])
    out = sess.run([manifest["output"]["name"]], {manifest["input"]["name"]: X.astype(np.float32)})[0]
    scores = out if out.ndim == 1 else out[:, int(manifest["output"].get("column", 0))]

    lines = []
    for r, y, s in zip(records, labels.tolist(), scores.tolist()):
        row = {k: r[k] for k in FIELDS}
        row["label"] = int(y)
        row["reference_score"] = s
        lines.append(json.dumps(row, separators=(",", ":")) + "\n")
    data = "".join(lines).encode("utf-8")
    with open(os.path.join(model_dir, DATASET), "wb") as f:
        f.write(data)

    threshold = float(manifest["threshold"])
    pred = scores >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    stats = {
        "rows": rows,
        "positives": int(labels.sum()),
        "roc_auc": roc_auc(labels, scores.astype(np.float64)),
        "precision": tp / max(int(pred.sum()), 1),
        "recall": tp / max(int(labels.sum()), 1),
    }

    # Re-read the manifest as written (key order kept) and add or replace `validation` last.
    with open(manifest_path, encoding="utf-8") as f:
        doc = json.load(f)
    doc.pop("validation", None)
    doc["validation"] = {"dataset": DATASET, "dataset_sha256": hashlib.sha256(data).hexdigest(), **LIMITS}
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.path.join(REPO, "models", "fraud_mlp", "1"))
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--seed", type=int, default=VALIDATION_SEED)
    args = ap.parse_args(argv)
    stats = make(args.model_dir, args.rows, args.seed)
    size = os.path.getsize(os.path.join(args.model_dir, DATASET))
    print(
        f"wrote {DATASET} ({stats['rows']} rows, {stats['positives']} fraud, {size} bytes): ROC AUC "
        f"{stats['roc_auc']:.4f}, precision {stats['precision']:.3f}, recall {stats['recall']:.3f} at the threshold; "
        f"limits {LIMITS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
