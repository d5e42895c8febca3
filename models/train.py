#!/usr/bin/env python3
"""Train and export streamscore's shipped fraud model (`make model`).

    python models/train.py --out models/fraud_mlp/1

Steps (all seeded, so a rerun with the same pins reproduces the same files):
  1. generate synthetic transactions from the generative process in docs/model-manifest.md,
     with the fraud label drawn from the documented logit;
  2. build the feature matrix with python/streamscore_features.py from the FEATURES list
     below (the same code the reference scorer uses);
  3. train StandardScaler + MLPClassifier(32, 16); report ROC AUC on a held-out split;
  4. export to ONNX with skl2onnx, rewrite it to the serving graph (models/serving_graph.py: the
     Scaler folded into the first layer, the unused `label` output dropped), leaving input
     `features` float32 [N, F] and output `probabilities` float32 [N, 2], and check
     onnxruntime against predict_proba;
  5. write model.onnx and manifest.json (features, columns, threshold, reference histograms);
  6. write the validation gate's dataset validation.jsonl and the manifest's `validation` object
     (models/make_validation.py; docs/model-validation.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "python"))
import streamscore_features as sf  # noqa: E402

SEED = 20240601
N_ROWS = 200_000
# Fixed "generation time" so event_time (uniform over the 7 days before it) is reproducible.
GENERATED_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WEEK_MS = 7 * 24 * 3_600_000

CHANNELS = (["POS", "ECOMMERCE", "MOBILE", "ATM", "MOTO"], [0.45, 0.30, 0.15, 0.07, 0.03])
CURRENCIES = (["EUR", "USD", "GBP", "CHF", "JPY"], [0.50, 0.30, 0.15, 0.03, 0.02])
MCCS = (["5411", "5812", "4111", "5999", "5732", "4829", "7995"], [0.30, 0.20, 0.17, 0.15, 0.10, 0.05, 0.03])
COUNTRIES = (["DE", "FR", "US", "NL", "GB", "BR", "NG"], [0.60, 0.10, 0.10, 0.08, 0.07, 0.03, 0.02])


def _dflt(source: str, transform: str, default: float = 0.0) -> dict:
    """A nullable feature: null -> `default`, plus a `<source>_missing` flag column."""
    return {"source": source, "transform": transform, "on_null": "default", "default": default, "missing_flag": True}


# The model's features (36 columns). Keys follow docs/model-manifest.md (FeatureSpec).
FEATURES = [
    {"source": "amount", "transform": "log1p", "on_null": "reject", "missing_flag": False},
    {"source": "channel", "transform": "one_hot", "on_null": "reject", "missing_flag": False,
     "categories": ["POS", "ECOMMERCE", "MOBILE", "ATM", "MOTO"], "other": False},
    {"source": "currency", "transform": "one_hot", "on_null": "reject", "missing_flag": False,
     "categories": ["EUR", "USD", "GBP"], "other": True},
    {"source": "merchant_category", "transform": "one_hot", "on_null": "reject", "missing_flag": False,
     "categories": ["5411", "5812", "5999", "4829", "7995", "5732"], "other": True},
    {"source": "country", "transform": "one_hot", "on_null": "reject", "missing_flag": False,
     "categories": ["DE", "FR", "NL", "US", "GB", "NG", "BR"], "other": True},
    {"source": "event_time", "transform": "hour_of_day", "on_null": "reject", "missing_flag": False},
    _dflt("account_age_days", "log1p"),
    _dflt("distance_from_home_km", "log1p"),
    _dflt("txn_count_1h", "numeric"),
    _dflt("card_present", "boolean"),
    _dflt("new_device", "boolean"),
]


# ---------------------------------------------------------------------------------------------
# 1. Synthetic data (docs/model-manifest.md, "Synthetic transactions")
# ---------------------------------------------------------------------------------------------

def _choice(rng: np.random.Generator, spec: tuple[list[str], list[float]], n: int) -> list[str]:
    values, p = spec
    return [values[i] for i in rng.choice(len(values), size=n, p=np.asarray(p) / np.sum(p))]


def _nullable(mask_null: np.ndarray, values) -> list:
    return [None if m else v for m, v in zip(mask_null.tolist(), values)]


def generate_transactions(n: int, seed: int = SEED, generated_at_ms: int = GENERATED_AT_MS) -> list[dict]:
    """`n` Transaction records (dicts keyed by transaction.avsc field names; event_time int millis)."""
    rng = np.random.default_rng(seed)
    channel = _choice(rng, CHANNELS, n)
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2).tolist()
    currency = _choice(rng, CURRENCIES, n)
    mcc = _choice(rng, MCCS, n)
    country = _choice(rng, COUNTRIES, n)
    event_time = rng.integers(generated_at_ms - WEEK_MS, generated_at_ms, size=n).tolist()
    age = _nullable(rng.random(n) < 0.10, np.floor(rng.exponential(900.0, n)).astype(np.int64).tolist())
    dist = _nullable(rng.random(n) < 0.15, rng.lognormal(1.5, 1.2, n).tolist())
    count = _nullable(rng.random(n) < 0.10, rng.poisson(1.0, n).tolist())
    card_null = rng.random(n) < 0.05
    card_u = rng.random(n)
    card_present = [
        None if cn else bool(u < (0.97 if ch in ("POS", "ATM") else 0.02))
        for cn, u, ch in zip(card_null.tolist(), card_u.tolist(), channel)
    ]
    new_device = _nullable(rng.random(n) < 0.10, (rng.random(n) < 0.08).tolist())
    id_bytes = rng.bytes(16 * n)
    tx_hex = rng.bytes(8 * n).hex()
    account = rng.integers(0, 100_000, n).tolist()
    card = _nullable(rng.random(n) < 0.2, rng.integers(0, 200_000, n).tolist())
    merchant = rng.integers(0, 10_000, n).tolist()

    records = []
    for i in range(n):
        records.append({
            "event_id": str(uuid.UUID(bytes=id_bytes[16 * i:16 * i + 16], version=4)),
            "transaction_id": "tx-" + tx_hex[16 * i:16 * i + 16],
            "account_id": f"acc-{account[i]}",
            "card_id": None if card[i] is None else f"card-{card[i]}",
            "merchant_id": f"m-{merchant[i]}",
            "amount": amount[i],
            "currency": currency[i],
            "merchant_category": mcc[i],
            "channel": channel[i],
            "country": country[i],
            "event_time": event_time[i],
            "account_age_days": age[i],
            "distance_from_home_km": dist[i],
            "txn_count_1h": count[i],
            "card_present": card_present[i],
            "new_device": new_device[i],
        })
    return records


def fraud_logit(r: dict) -> float:
    """The documented known fraud pattern z (from the raw record, not from model features)."""
    z = -6.0 + 1.2 * (math.log1p(r["amount"]) - 3.5)
    z += 1.8 * (r["channel"] in ("ECOMMERCE", "MOTO"))
    z += 2.0 * (r["new_device"] is True)
    z += 1.5 * (r["account_age_days"] is not None and r["account_age_days"] < 30)
    z += 1.0 * (((r["event_time"] // 3_600_000) % 24) < 5)
    z += 0.3 * (math.log1p(r["distance_from_home_km"]) if r["distance_from_home_km"] is not None else 0.0)
    z += 1.5 * (r["merchant_category"] in ("4829", "7995"))
    z += 1.2 * (r["country"] in ("NG", "BR"))
    z += 0.4 * (min(r["txn_count_1h"], 10) if r["txn_count_1h"] is not None else 0.0)
    return z


def draw_labels(records: list[dict], seed: int) -> np.ndarray:
    z = np.array([fraud_logit(r) for r in records])
    p = 1.0 / (1.0 + np.exp(-z))
    return (np.random.default_rng(seed).random(len(records)) < p).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# 5. Reference histograms
# ---------------------------------------------------------------------------------------------

def histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts per bin: bin 0 = (-inf, e0), bin i = [e(i-1), e(i)), bin k = [e(k-1), +inf).

    searchsorted(side='right') returns the number of edges <= x, which is exactly that bin index
    (x == e0 lands in bin 1).
    """
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values.astype(np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) + 1).tolist()


def column_edges(spec: dict, column: str, values: np.ndarray) -> list[float]:
    if column.endswith("_missing") or spec["transform"] in ("one_hot", "boolean"):
        return [0.5]
    if spec["transform"] == "hour_of_day":
        return [4.0, 8.0, 12.0, 16.0, 20.0]
    # Numeric columns: distinct training deciles. method="lower" picks observed float32 values,
    # so the edges are exactly representable in float32 and compare identically in Rust.
    q = np.quantile(values, np.linspace(0.1, 0.9, 9), method="lower")
    edges = sorted({float(e) for e in q})
    # An edge at the minimum would leave bin 0 empty (it happens for zero-inflated columns such as
    # txn_count_1h); drop it so every reference bin has mass.
    return [e for e in edges if e > float(values.min())] or [float(np.median(values))]


def reference_histograms(features: list[dict], columns: list[str], X: np.ndarray, scores: np.ndarray) -> dict:
    owner = []
    for spec in features:
        owner.extend([spec] * len(sf.spec_columns(spec)))
    cols = []
    for j, (name, spec) in enumerate(zip(columns, owner)):
        edges = column_edges(spec, name, X[:, j])
        assert all(a < b for a, b in zip(edges, edges[1:])), (name, edges)
        cols.append({"name": name, "edges": edges, "counts": histogram(X[:, j], edges)})
    score_edges = [round(0.1 * i, 1) for i in range(1, 10)]
    return {
        "rows": int(X.shape[0]),
        "columns": cols,
        "score": {"name": "score", "edges": score_edges, "counts": histogram(scores, score_edges)},
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "models", "fraud_mlp", "1"), help="output model directory")
    ap.add_argument("--rows", type=int, default=N_ROWS)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)

    # Imported here so `generate_transactions` can be imported without the training pins.
    import onnx
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.metrics import precision_recall_curve, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    records = generate_transactions(args.rows, seed=args.seed)
    y = draw_labels(records, seed=args.seed + 1)
    extractor = sf.FeatureExtractor(FEATURES)
    X, rejections = extractor.extract_many(records)
    assert not any(rejections), "the generator never produces rejectable records"
    columns = extractor.columns
    print(f"generated {len(records)} rows, {X.shape[1]} columns, fraud rate {y.mean():.4f} ({time.time() - t0:.1f}s)")

    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=args.seed, stratify=y)
    X_tr, X_te, y_tr, y_te = X[idx_tr], X[idx_te], y[idx_tr], y[idx_te]
    clf = MLPClassifier(
        hidden_layer_sizes=(32, 16),
        alpha=1e-4,
        batch_size=512,
        learning_rate_init=1e-3,
        max_iter=100,
        early_stopping=True,  # stops on a 10% validation split of the training rows
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=args.seed,
    )
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", clf)])
    t1 = time.time()
    pipe.fit(X_tr, y_tr)
    p_te = pipe.predict_proba(X_te)[:, 1]
    auc = roc_auc_score(y_te, p_te)
    # The true logit is not the model's input (e.g. it uses raw amount), but it bounds the achievable AUC.
    auc_oracle = roc_auc_score(y_te, [fraud_logit(records[i]) for i in idx_te])
    print(f"trained in {time.time() - t1:.1f}s ({clf.n_iter_} epochs); held-out ROC AUC {auc:.4f} (oracle {auc_oracle:.4f})")

    # Threshold: maximise F1 on the held-out split, then round to 3 decimals.
    prec, rec, thr = precision_recall_curve(y_te, p_te)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    threshold = round(float(thr[int(np.argmax(f1))]), 3)
    pred = p_te >= threshold
    tp = int(np.sum(pred & (y_te == 1)))
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(y_te.sum()), 1)
    f1_at = 2 * precision * recall / max(precision + recall, 1e-12)
    print(f"threshold {threshold} (max F1 on held-out): precision {precision:.3f} recall {recall:.3f} F1 {f1_at:.3f}")

    # Export. Opset 17 / ai.onnx.ml 3: well inside what onnxruntime 1.31 runs, and the IR version
    # that goes with it (8) is readable by older runtimes too.
    onx = convert_sklearn(
        pipe,
        name="fraud_mlp",
        initial_types=[("features", FloatTensorType([None, len(columns)]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # The serving graph: the Scaler folded into the first MatMul, the unused `label` branch
    # dropped (models/serving_graph.py; exact up to float32 rounding, checked there).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import serving_graph

    exported_nodes = len(onx.graph.node)
    onx, lean_info = serving_graph.lean(onx, ["probabilities"], X_te[:4096])
    print(f"serving graph: {exported_nodes} -> {len(lean_info['nodes_after'])} nodes, scaler folded "
          f"{lean_info['folded_scaler']}, dropped {lean_info['dropped_outputs']}, max |diff| {lean_info['max_abs_diff']:.2e}")
    onx.doc_string = "streamscore fraud_mlp v1 (synthetic data; see models/README.md)"
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.onnx")
    with open(model_path, "wb") as f:
        f.write(onx.SerializeToString())
    onnx.checker.check_model(onnx.load(model_path))

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    ins = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    print(f"onnx inputs {ins} outputs {outs} (ir_version {onx.ir_version}, opsets "
          f"{ {o.domain or 'ai.onnx': o.version for o in onx.opset_import} })")
    assert [o[0] for o in outs] == ["probabilities"], outs
    check = X_te[:1000]
    (proba_o,) = sess.run(None, {"features": check})
    assert proba_o.dtype == np.float32 and proba_o.shape == (1000, 2)
    max_diff = float(np.max(np.abs(proba_o - pipe.predict_proba(check))))
    assert max_diff < 1e-5, f"onnxruntime differs from sklearn by {max_diff}"
    print(f"onnxruntime vs sklearn predict_proba on 1000 rows: max |diff| {max_diff:.2e}")

    # Reference histograms over all generated rows, scored by the exported model (what streamscore sees).
    scores = sess.run(["probabilities"], {"features": X})[0][:, 1]
    manifest = {
        "format_version": 1,
        "name": "fraud_mlp",
        "version": "1",
        "description": (
            "MLP (StandardScaler, folded into the first layer, + 32-16 ReLU) fraud score for payment transactions, trained by "
            f"models/train.py on {args.rows} synthetic rows (seed {args.seed}) from the generative process in "
            f"docs/model-manifest.md. Held-out ROC AUC {auc:.4f}; threshold = max-F1 on the held-out split."
        ),
        "model_file": "model.onnx",
        "sha256": sf.sha256_file(model_path),
        "input": {"name": "features"},
        "output": {"name": "probabilities", "column": 1},
        "threshold": threshold,
        "features": FEATURES,
        "columns": columns,
        "reference": reference_histograms(FEATURES, columns, X, scores),
    }
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    sf.load_manifest(args.out)  # round-trip: columns derive, sha256 matches
    print(f"wrote {model_path} ({os.path.getsize(model_path)} bytes, sha256 {manifest['sha256']}) and manifest.json")

    # 6. The validation gate's dataset and limits (the manifest gains its `validation` object).
    import make_validation

    v = make_validation.make(args.out)
    print(f"wrote {make_validation.DATASET} ({v['rows']} rows): ROC AUC {v['roc_auc']:.4f}, precision "
          f"{v['precision']:.3f}, recall {v['recall']:.3f} at the threshold; total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
