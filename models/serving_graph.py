#!/usr/bin/env python3
"""The serving graph: what skl2onnx exports, minus the work streamscore never uses.

skl2onnx turns `Pipeline([StandardScaler, MLPClassifier])` into

    Scaler (ai.onnx.ml) -> Cast -> MatMul -> Add -> Relu -> ... -> Sigmoid -> Sub/Concat -> probabilities
                                                               -> ArgMax -> ArrayFeatureExtractor (ai.onnx.ml)
                                                                  -> Reshape -> Cast -> label

streamscore reads one output (the manifest's `output.name`, here `probabilities`). Two rewrites,
each exact up to float32 rounding, give the graph it serves:

1. **Fold the Scaler into the first MatMul.** `Scaler` computes `(x - offset) * scale`; feeding
   `MatMul(W) + b` that is `x @ (scale[:, None] * W) + (b - (offset * scale) @ W)` (computed in
   float64, stored as float32). `Scaler` is an ai.onnx.ml operator with no CUDA kernel, so it
   also pinned the graph's first step to the CPU.
2. **Keep only what the served output needs.** The `label` branch (ArgMax, ArrayFeatureExtractor,
   Reshape, Cast) goes, with its initializers and, when nothing else uses it, the ai.onnx.ml
   opset import.

Measured (benches/README.md, "Figures on an NVIDIA H200"): one ONNX Runtime call costs about a
third as much on CPU (20 vs 67 µs for 256 rows, 1 intra-op thread), almost all of it the fold
(ONNX Runtime's Scaler kernel and the Cast after it: ~45 µs per 256 rows on the 2-core
development machine; dropping the label branch alone saved ~3 µs, since streamscore already asks
for the served output only); and on CUDA every node runs on the GPU (8 CUDA nodes instead of 17
CUDA + 2 CPU) with a fixed cost of ~76 instead of ~128 µs.

    serving_graph.py IN.onnx OUT.onnx --output probabilities   # rewrite a file, print the check

`lean(model, outputs, sample)` is what models/train.py calls. Every rewrite is checked with
onnxruntime on `sample`: the kept outputs must match the original graph's within 1e-5, or it
raises. Graphs that do not have the shape above are left as they are (step by step): a model
without a leading Scaler only loses its unused outputs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Largest |difference| the rewrite may make to a kept output (the validation gate's default
# score parity limit).
TOLERANCE = 1e-5


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(nodes: list[onnx.NodeProto], tensor: str) -> list[onnx.NodeProto]:
    return [n for n in nodes if tensor in n.input]


def fold_leading_scaler(model: onnx.ModelProto) -> bool:
    """Folds `input -> Scaler [-> Cast(float)] -> MatMul(const) [-> Add(const)]` into the MatMul
    and Add. Returns whether it did (False leaves `model` untouched)."""
    g = model.graph
    if len(g.input) != 1:
        return False
    nodes = list(g.node)
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    readers = _consumers(nodes, g.input[0].name)
    if len(readers) != 1 or readers[0].op_type != "Scaler" or readers[0].domain != "ai.onnx.ml":
        return False
    scaler = readers[0]
    removed = [scaler]
    tensor = scaler.output[0]
    after = _consumers(nodes, tensor)
    if len(after) == 1 and after[0].op_type == "Cast" and _attr(after[0], "to") == TensorProto.FLOAT:
        removed.append(after[0])
        tensor = after[0].output[0]
        after = _consumers(nodes, tensor)
    if any(r.output[0] in graph_outputs for r in removed):
        return False
    if len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != tensor or after[0].input[1] not in inits:
        return False
    matmul = after[0]
    w = numpy_helper.to_array(inits[matmul.input[1]]).astype(np.float64)
    if w.ndim != 2:
        return False
    width = w.shape[0]
    offset = np.asarray(_attr(scaler, "offset", [0.0]), dtype=np.float64)
    scale = np.asarray(_attr(scaler, "scale", [1.0]), dtype=np.float64)
    if offset.size == 1:
        offset = np.full(width, offset.item())
    if scale.size == 1:
        scale = np.full(width, scale.item())
    if offset.shape != (width,) or scale.shape != (width,):
        return False
    # The bias: an Add of a constant right after the MatMul, or a new one.
    add_after = _consumers(nodes, matmul.output[0])
    add = None
    if len(add_after) == 1 and add_after[0].op_type == "Add":
        other = [i for i in add_after[0].input if i != matmul.output[0]]
        if len(other) == 1 and other[0] in inits:
            add = add_after[0]
    bias_name = [i for i in add.input if i != matmul.output[0]][0] if add is not None else None
    bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else 0.0
    if matmul.output[0] in graph_outputs and add is None:
        return False

    w_folded = (scale[:, None] * w).astype(np.float32)
    b_folded = (bias - (offset * scale) @ w).astype(np.float32)
    w_name = f"{matmul.input[1]}_scaler_folded"
    b_name = f"{bias_name or matmul.input[1] + '_bias'}_scaler_folded"
    g.initializer.extend([numpy_helper.from_array(w_folded, w_name), numpy_helper.from_array(b_folded, b_name)])
    matmul.input[0] = g.input[0].name
    matmul.input[1] = w_name
    if add is not None:
        for k, name in enumerate(add.input):
            if name != matmul.output[0]:
                add.input[k] = b_name
    else:
        # MatMul -> (new) Add: the MatMul writes a fresh tensor, the Add the old one.
        old = matmul.output[0]
        matmul.output[0] = f"{old}_before_scaler_bias"
        new_add = helper.make_node("Add", [matmul.output[0], b_name], [old], name=f"{matmul.name}_scaler_bias")
        index = list(g.node).index(matmul) + 1
        g.node.insert(index, new_add)
    for r in removed:
        g.node.remove(r)
    return True


def keep_outputs(model: onnx.ModelProto, outputs: list[str]) -> None:
    """Drops the graph outputs not in `outputs` and every node, initializer and opset import
    that only they needed."""
    g = model.graph
    names = {o.name for o in g.output}
    missing = [o for o in outputs if o not in names]
    if missing:
        raise ValueError(f"the graph has no output {missing} (outputs: {sorted(names)})")
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    kept_outputs = [o for o in g.output if o.name in outputs]
    del g.output[:]
    g.output.extend(kept_outputs)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vi = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vi)
    domains = {n.domain for n in g.node}
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)


def max_difference(a: onnx.ModelProto, b: onnx.ModelProto, outputs: list[str], sample: np.ndarray) -> float:
    """Largest |difference| between the two graphs' `outputs` on `sample`, by onnxruntime (CPU)."""
    import onnxruntime as ort

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(outputs, {sess.get_inputs()[0].name: sample})

    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(run(a), run(b)))


def lean(model: onnx.ModelProto, outputs: list[str], sample: np.ndarray) -> tuple[onnx.ModelProto, dict]:
    """The serving graph of `model` (a copy) and what was done: {"folded_scaler", "dropped_outputs",
    "nodes_before", "nodes_after", "max_abs_diff"}. Raises when the rewrite changes a kept output by
    more than TOLERANCE on `sample` (float32 rows of the model's input width)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dropped = [o.name for o in model.graph.output if o.name not in outputs]
    folded = fold_leading_scaler(out)
    keep_outputs(out, outputs)  # also drops what the fold left unused
    onnx.checker.check_model(out)
    diff = max_difference(model, out, outputs, sample.astype(np.float32))
    if not diff <= TOLERANCE:
        raise ValueError(f"the serving graph differs from the exported one by {diff:.3g} (> {TOLERANCE}); not rewritten")
    return out, {
        "folded_scaler": folded,
        "dropped_outputs": dropped,
        "nodes_before": [n.op_type for n in model.graph.node],
        "nodes_after": [n.op_type for n in out.graph.node],
        "max_abs_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_in")
    ap.add_argument("model_out")
    ap.add_argument("--output", action="append", required=True, help="graph output to keep (repeatable)")
    ap.add_argument("--rows", type=int, default=4096, help="random rows for the equality check")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    model = onnx.load(args.model_in)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    width = dims[-1].dim_value
    if not width:
        ap.error("the input's last dimension is not static: cannot draw check rows")
    sample = np.random.default_rng(args.seed).normal(0, 3, size=(args.rows, width)).astype(np.float32)
    out, info = lean(model, args.output, sample)
    onnx.save(out, args.model_out)
    print(
        f"{args.model_out}: {len(info['nodes_before'])} -> {len(info['nodes_after'])} nodes "
        f"({' '.join(info['nodes_after'])}); scaler folded: {info['folded_scaler']}; outputs dropped: "
        f"{info['dropped_outputs'] or 'none'}; max |diff| {info['max_abs_diff']:.2e} on {args.rows} rows"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
