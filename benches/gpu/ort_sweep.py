#!/usr/bin/env python3
"""ONNX Runtime alone, from Python, swept over batch sizes on CPU and CUDA.

    ort_sweep.py --providers cpu,cuda --sizes 1,2,4,...,8192 --seconds-per-size 1

The floor under streamscore's inference stage (examples/infer_sweep.rs): the same model, the
same batch sizes, the same session settings as streamscore's defaults (graph optimisation
`all`, memory pattern and CPU arena on, `--intra-op-threads` intra-op and 1 inter-op thread,
sequential execution), `InferenceSession.run` over every output, as `Model::infer` does.

Variants, one JSON object per (variant, batch size) on stdout:
  cpu   / session.run   input and outputs in host memory, CPUExecutionProvider only.
  cuda  / session.run   host numpy array in, host arrays out: each call copies the batch to the
                        GPU and the outputs back (what streamscore's `Model::infer` does).
  cuda  / io_binding    input already on the GPU (an OrtValue), outputs bound to the GPU: no
                        host<->device copy of input or output per call, so the difference to
                        `session.run` is the copy cost. A graph with ai.onnx.ml nodes (Scaler,
                        ArrayFeatureExtractor, as skl2onnx exports them) runs those on the CPU
                        either way, so ONNX Runtime still copies inside the graph; the shipped
                        serving graph has none. The `placement` field says which nodes run where.

CUDA runs only when `onnxruntime.get_available_providers()` has CUDAExecutionProvider (the
onnxruntime-gpu wheel); otherwise a `skipped` object says why. A CUDA session that falls back
to CPU (no driver, CUDA libraries not found) reports `provider_active: cpu`.

Rows: random but plausible (one category per one-hot group, ~10% missing values, numbers
inside the manifest's reference histograms), drawn once per batch size with a fixed seed.
Per batch size: warm-up for --warmup-seconds (at least 3 calls), then calls until
--seconds-per-size have passed and at least --min-calls were made, each timed on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTENDER = "ORT alone (Python)"
DEFAULT_SIZES = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192"


def rows_for(manifest: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` plausible feature rows, built from the manifest's columns as infer_sweep.rs does."""
    columns = manifest["columns"]
    edges = {h["name"]: h["edges"] for h in manifest["reference"]["columns"]}
    x = np.zeros((n, len(columns)), dtype=np.float32)
    i = 0
    while i < len(columns):
        name = columns[i]
        if "=" in name:
            prefix = name.split("=", 1)[0] + "="
            width = 0
            while i + width < len(columns) and columns[i + width].startswith(prefix):
                width += 1
            x[np.arange(n), i + rng.integers(0, width, size=n)] = 1.0
            i += width
            continue
        e = edges.get(name, [])
        if e == [0.5]:
            values = rng.integers(0, 2, size=n).astype(np.float32)
        elif len(e) >= 2 and e[-1] > e[0]:
            values = rng.uniform(e[0], e[-1], size=n).astype(np.float32)
        elif e:
            values = np.full(n, e[0], dtype=np.float32)
        else:
            values = rng.random(n, dtype=np.float32)
        x[:, i] = values
        if i + 1 < len(columns) and columns[i + 1].endswith("_missing"):
            missing = rng.random(n) < 0.1
            x[missing, i] = 0.0
            x[:, i + 1] = missing.astype(np.float32)
            i += 1
        i += 1
    return x


def session_options(threads: int, verbose: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    if verbose:
        so.log_severity_level = 0
    return so


def providers_for(provider: str, device_id: int, tf32: bool) -> list:
    """`tf32`: TF32 for the CUDA provider's float32 math. ONNX Runtime's default is on,
    streamscore's (`model.cuda_tf32`) off; --cuda-tf32 sets it for both contenders."""
    if provider == "cuda":
        options = {"device_id": device_id, "use_tf32": int(tf32)}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def placement(model: str, provider: str, device_id: int, threads: int, tf32: bool) -> str:
    """Which execution provider runs how many nodes, from ONNX Runtime's verbose log of a
    throwaway session (verbose logging would slow the timed one). The log goes to fd 2."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            ort.InferenceSession(model, session_options(threads, verbose=True), providers=providers_for(provider, device_id, tf32))
        except Exception as e:  # noqa: BLE001 - reported, the timed session will fail loudly
            return f"unknown ({e})"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    found = re.findall(r"placed on \[(\w+)\]\. Number of nodes: (\d+)", text)
    return ", ".join(f"{ep.replace('ExecutionProvider', '')}: {n} nodes" for ep, n in found) or "not in the log"


def timed(call, warmup_s: float, seconds: float, min_calls: int) -> tuple[float, list[int]]:
    started = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - started < warmup_s:
        call()
        warm += 1
    calls = []
    clock = time.perf_counter_ns
    started = clock()
    deadline = started + int(seconds * 1e9)
    while len(calls) < min_calls or clock() < deadline:
        t = clock()
        call()
        calls.append(clock() - t)
    total = (clock() - started) / 1e9
    calls.sort()
    return total, calls


def point(base: dict, n: int, total_s: float, calls: list[int]) -> dict:
    k = len(calls)

    def q(p: float) -> float:
        return calls[min(k, max(1, int(np.ceil(p * k)))) - 1] / 1e3

    return {
        **base,
        "batch": n,
        "calls": k,
        "seconds": total_s,
        "us_per_call_mean": total_s * 1e6 / k,
        "us_per_call_p50": q(0.50),
        "us_per_call_p99": q(0.99),
        "rows_per_s": n * k / total_s,
        "ns_per_row": total_s * 1e9 / (n * k),
    }


def check_scores(probabilities: np.ndarray, column: int, n: int, what: str) -> np.ndarray:
    p = np.asarray(probabilities)
    scores = p[:, column] if p.ndim == 2 else p
    if scores.shape != (n,) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise SystemExit(f"ort_sweep: {what}, batch {n}: the output is not {n} probabilities")
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--providers", default="cpu,cuda", help="comma-separated: cpu, cuda")
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--seconds-per-size", type=float, default=1.0)
    ap.add_argument("--warmup-seconds", type=float, default=0.2)
    ap.add_argument("--min-calls", type=int, default=20)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--model-dir", default=os.path.join(REPO, "models/fraud_mlp/1"))
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--no-iobinding", action="store_true", help="skip the CUDA io_binding variant")
    ap.add_argument("--cuda-tf32", action="store_true", help="CUDA: allow TF32 (use_tf32=1; default 0, as streamscore)")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        ap.error("--sizes must list batch sizes of at least 1")
    with open(os.path.join(args.model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    model = os.path.join(args.model_dir, manifest["model_file"])
    input_name = manifest["input"]["name"]
    output_name = manifest["output"]["name"]
    column = manifest["output"]["column"]
    available = ort.get_available_providers()
    common = {
        "contender": CONTENDER,
        "intra_op_threads": args.intra_op_threads,
        "cuda_tf32": args.cuda_tf32,
        "model": f"{manifest['name']} {manifest['version']}",
        "ort_version": ort.__version__,
        "ort_package": os.path.dirname(ort.__file__),
    }
    inputs = {n: rows_for(manifest, n, np.random.default_rng([args.seed, n])) for n in sizes}
    cpu_reference = ort.InferenceSession(model, session_options(args.intra_op_threads), providers=["CPUExecutionProvider"])

    for provider in [p.strip() for p in args.providers.split(",") if p.strip()]:
        if provider not in ("cpu", "cuda"):
            ap.error(f"unknown provider {provider!r} (cpu, cuda)")
        if provider == "cuda" and "CUDAExecutionProvider" not in available:
            why = f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: {', '.join(available)})"
            print(f"ort_sweep: cuda skipped: {why}", file=sys.stderr)
            print(json.dumps({**common, "provider_requested": "cuda", "skipped": why}), flush=True)
            continue
        where = placement(model, provider, args.device_id, args.intra_op_threads, args.cuda_tf32)
        loading = time.perf_counter()
        sess = ort.InferenceSession(
            model, session_options(args.intra_op_threads), providers=providers_for(provider, args.device_id, args.cuda_tf32)
        )
        load_s = time.perf_counter() - loading
        active = "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"
        outputs = [o.name for o in sess.get_outputs()]
        out_index = outputs.index(output_name)
        variants = ["session.run"]
        if active == "cuda" and not args.no_iobinding:
            variants.append("io_binding")
        per_size = args.warmup_seconds + args.seconds_per_size
        print(
            f"ort_sweep: {provider} requested, {active} active ({where}); session ready in {load_s:.2f} s; "
            f"{len(variants)} variant(s) x {len(sizes)} sizes x >= {per_size:.1f} s ~ {len(variants) * len(sizes) * per_size:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        for variant in variants:
            base = {
                **common,
                "variant": variant,
                "provider_requested": provider,
                "provider_active": active,
                "device_id": args.device_id,
                "placement": where,
                "session_load_s": load_s,
            }
            for n in sizes:
                x = inputs[n]
                feed = {input_name: x}
                if variant == "session.run":
                    call = lambda: sess.run(None, feed)  # noqa: E731
                    total, calls = timed(call, args.warmup_seconds, args.seconds_per_size, args.min_calls)
                    result = sess.run(None, feed)[out_index]
                else:
                    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", args.device_id)
                    binding = sess.io_binding()
                    binding.bind_ortvalue_input(input_name, x_dev)
                    for name in outputs:
                        binding.bind_output(name, "cuda", args.device_id)

                    def call(binding=binding):
                        sess.run_with_iobinding(binding)
                        binding.synchronize_outputs()

                    total, calls = timed(call, args.warmup_seconds, args.seconds_per_size, args.min_calls)
                    result = binding.copy_outputs_to_cpu()[out_index]
                scores = check_scores(result, column, n, f"{provider}/{variant}")
                row = point(base, n, total, calls)
                if active != "cpu":
                    ref = check_scores(cpu_reference.run(None, feed)[out_index], column, n, "cpu reference")
                    row["max_abs_diff_vs_cpu"] = float(np.max(np.abs(ref - scores)))
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
