"""Manifest-driven feature extraction, in Python.

This is an independent re-implementation of the transforms in docs/model-manifest.md. It is
used by models/train.py (to build the training matrix) and by python/reference_score.py (the
cross-check for streamscore's Rust extractor), so training and the reference scorer cannot
drift apart. Nothing here knows about particular fields: everything comes from the manifest's
`features` list.

Input records are plain dicts keyed by the reader schema's field names (as fastavro returns
them, or as the training generator builds them). A null value and an absent key both mean
null. `timestamp-millis` values may be int millis or timezone-aware datetimes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

TRANSFORMS = ("numeric", "log1p", "boolean", "one_hot", "hour_of_day")
MISSING_FEATURE = "missing_feature"
INVALID_FEATURE = "invalid_feature"

_MS_PER_HOUR = 3_600_000
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class Rejected(Exception):
    """A record that the manifest says must be dead-lettered.

    `reason` is `missing_feature` or `invalid_feature` (the names streamscore uses);
    `column` names the source field or produced column at fault.
    """

    def __init__(self, reason: str, column: str, detail: str = ""):
        super().__init__(f"{reason}: {column}{': ' + detail if detail else ''}")
        self.reason = reason
        self.column = column


class ManifestError(ValueError):
    """The manifest is malformed or inconsistent (a configuration error, not a per-record one)."""


def _spec_on_null(spec: dict) -> str:
    on_null = spec.get("on_null", "reject")  # the documented default is reject
    if on_null not in ("default", "reject"):
        raise ManifestError(f"feature {spec.get('source')!r}: bad on_null {on_null!r}")
    return on_null


def spec_columns(spec: dict) -> list[str]:
    """Column names one FeatureSpec produces, in order (see docs/model-manifest.md)."""
    src = spec["source"]
    t = spec["transform"]
    if t == "numeric" or t == "boolean":
        cols = [src]
    elif t == "log1p":
        cols = [f"{src}_log1p"]
    elif t == "hour_of_day":
        cols = [f"{src}_hour"]
    elif t == "one_hot":
        cats = spec.get("categories")
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ManifestError(f"feature {src!r}: one_hot needs a list of string categories")
        cols = [f"{src}={c}" for c in cats]
        if spec.get("other", False):
            cols.append(f"{src}=__other__")
    else:
        raise ManifestError(f"feature {src!r}: unknown transform {t!r}")
    if spec.get("missing_flag", False):
        cols.append(f"{src}_missing")
    return cols


def derive_columns(features: Sequence[dict]) -> list[str]:
    """The full model input column list derived from a manifest's `features`."""
    cols: list[str] = []
    for spec in features:
        cols.extend(spec_columns(spec))
    if len(set(cols)) != len(cols):
        raise ManifestError("derived column names are not unique")
    return cols


def _to_millis(value: Any) -> int:
    if isinstance(value, _dt.datetime):
        # Exact integer arithmetic: no float rounding of large timestamps.
        return (value - _EPOCH) // _dt.timedelta(milliseconds=1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"timestamp must be int millis or datetime, got {type(value).__name__}")
    return value


def _as_number(value: Any, src: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"feature {src!r}: expected a number, got {type(value).__name__}")
    return float(value)


def _log1p64(x: float) -> float:
    """ln(1 + x) in float64, with IEEE results (NaN below -1, -inf at -1) instead of exceptions."""
    if math.isnan(x) or x < -1.0:
        return math.nan
    if x == -1.0:
        return -math.inf
    return math.log1p(x)  # log1p(+inf) = +inf


class FeatureExtractor:
    """Turns records into float32 rows according to a manifest `features` list."""

    def __init__(self, features: Sequence[dict]):
        self.features = [dict(s) for s in features]
        for spec in self.features:
            if spec.get("transform") not in TRANSFORMS:
                raise ManifestError(f"feature {spec.get('source')!r}: unknown transform {spec.get('transform')!r}")
            on_null = _spec_on_null(spec)
            if on_null == "default" and spec["transform"] != "one_hot" and not isinstance(spec.get("default"), (int, float)):
                raise ManifestError(f"feature {spec['source']!r}: on_null=default needs a numeric default")
        self.columns = derive_columns(self.features)
        # Dicts for O(1) one-hot lookups; categories are compared by exact text.
        self._cat_index = [
            {c: i for i, c in enumerate(s["categories"])} if s["transform"] == "one_hot" else None
            for s in self.features
        ]

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def _values64(self, record: dict) -> list[float]:
        """Column values in float64 (before the float32 cast); raises Rejected for nulls that must reject."""
        out: list[float] = []
        for spec, cat_index in zip(self.features, self._cat_index):
            src = spec["source"]
            t = spec["transform"]
            value = record.get(src)
            is_null = value is None
            if is_null:
                if _spec_on_null(spec) == "reject":
                    raise Rejected(MISSING_FEATURE, src, "null or absent")
                if t == "one_hot":
                    out.extend([0.0] * len(spec_columns({**spec, "missing_flag": False})))
                else:
                    # The default is used as is: not log1p'd, not hour'd.
                    out.append(float(spec["default"]))
            elif t == "numeric":
                out.append(_as_number(value, src))
            elif t == "log1p":
                out.append(_log1p64(_as_number(value, src)))
            elif t == "boolean":
                if not isinstance(value, bool):
                    raise TypeError(f"feature {src!r}: expected a boolean, got {type(value).__name__}")
                out.append(1.0 if value else 0.0)
            elif t == "one_hot":
                if not isinstance(value, str):
                    raise TypeError(f"feature {src!r}: expected a string/enum symbol, got {type(value).__name__}")
                row = [0.0] * len(cat_index)
                i = cat_index.get(value)
                if i is not None:
                    row[i] = 1.0
                if spec.get("other", False):
                    row.append(0.0 if i is not None else 1.0)
                out.extend(row)
            elif t == "hour_of_day":
                # Python's // and % are floor division / non-negative modulo, as documented.
                out.append(float((_to_millis(value) // _MS_PER_HOUR) % 24))
            if spec.get("missing_flag", False):
                out.append(1.0 if is_null else 0.0)
        return out

    def extract(self, record: dict) -> np.ndarray:
        """One float32 row of length n_columns. Raises Rejected (missing_feature / invalid_feature)."""
        with np.errstate(over="ignore", invalid="ignore"):
            row = np.asarray(self._values64(record), dtype=np.float64).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(row))
        if bad.size:
            # Checked after the float32 cast: a finite double can overflow float32.
            col = self.columns[int(bad[0])]
            raise Rejected(INVALID_FEATURE, col, f"value {row[bad[0]]!r}")
        return row

    def extract_many(self, records: Iterable[dict]) -> tuple[np.ndarray, list[Rejected | None]]:
        """Extract a batch. Returns (X, rejections): X has one row per record (zeros where rejected)."""
        rows: list[np.ndarray] = []
        rejections: list[Rejected | None] = []
        zero = np.zeros(self.n_columns, dtype=np.float32)
        for rec in records:
            try:
                rows.append(self.extract(rec))
                rejections.append(None)
            except Rejected as r:
                rows.append(zero)
                rejections.append(r)
        X = np.vstack(rows) if rows else np.zeros((0, self.n_columns), dtype=np.float32)
        return X, rejections


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: str, verify_sha256: bool = True) -> dict:
    """Read and validate `<model_dir>/manifest.json` (format, columns, and model sha256)."""
    with open(os.path.join(model_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format_version") != 1:
        raise ManifestError(f"unsupported format_version {manifest.get('format_version')!r}")
    derived = derive_columns(manifest["features"])
    if manifest.get("columns") != derived:
        raise ManifestError(f"manifest columns {manifest.get('columns')} != derived {derived}")
    if verify_sha256:
        model_path = os.path.join(model_dir, manifest["model_file"])
        actual = sha256_file(model_path)
        if actual != manifest.get("sha256"):  # exact: the format says lowercase hex
            raise ManifestError(
                f"sha256 mismatch for {model_path}: manifest says {manifest.get('sha256')}, file is {actual}"
            )
    return manifest
