#!/usr/bin/env python3
"""Tests of models/serving_graph.py (run by `make test` through tests/serving_graph.rs):

- on skl2onnx-shaped graphs built here with random weights, scaler parameters and shapes
  (several seeds; per-column and scalar offset/scale; with and without the bias Add; with and
  without the Cast), the rewrite folds the Scaler, drops the label branch, leaves only ai.onnx
  operators and keeps the served output equal to the original's within float32 rounding;
- a graph it cannot fold (no leading Scaler, or the Scaler feeding two nodes) only loses its
  unused outputs;
- a rewrite that would change a score beyond the tolerance is refused;
- the shipped model is already the serving graph (a second pass changes nothing), with one
  output and no ai.onnx.ml node.

    .venv/bin/python models/test_serving_graph.py      # prints "test_serving_graph: OK"
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_graph as sg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exported_like(rng: np.random.Generator, width: int, hidden: int, *, scalar_scaler: bool, cast: bool,
                  bias: bool) -> onnx.ModelProto:
    """A graph shaped like skl2onnx's MLPClassifier export: Scaler [-> Cast] -> MatMul [-> Add] ->
    Relu -> MatMul -> Add -> Sigmoid -> Sub/Concat -> probabilities, plus the label branch
    ArgMax -> ArrayFeatureExtractor -> Reshape -> Cast -> label."""
    n = 1 if scalar_scaler else width
    offset = rng.normal(0, 5, n).tolist()
    scale = rng.uniform(0.05, 3.0, n).tolist()
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (width, hidden)).astype(np.float32), "W0"),
        numpy_helper.from_array(rng.normal(0, 0.5, hidden).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.normal(0, 0.5, (hidden, 1)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(0, 0.5, 1).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "unity"),
        numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "classes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape"),
    ]
    nodes = [helper.make_node("Scaler", ["features"], ["scaled"], domain="ai.onnx.ml", offset=offset, scale=scale)]
    first_in = "scaled"
    if cast:
        nodes.append(helper.make_node("Cast", ["scaled"], ["cast_input"], to=TensorProto.FLOAT))
        first_in = "cast_input"
    nodes.append(helper.make_node("MatMul", [first_in, "W0"], ["mm0"], name="MatMul"))
    relu_in = "mm0"
    if bias:
        nodes.append(helper.make_node("Add", ["mm0", "b0"], ["add0"]))
        relu_in = "add0"
    nodes += [
        helper.make_node("Relu", [relu_in], ["h0"]),
        helper.make_node("MatMul", ["h0", "W1"], ["mm1"]),
        helper.make_node("Add", ["mm1", "b1"], ["add1"]),
        helper.make_node("Sigmoid", ["add1"], ["p1"]),
        helper.make_node("Sub", ["unity", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["argmax"], axis=1),
        helper.make_node("ArrayFeatureExtractor", ["classes", "argmax"], ["afe"], domain="ai.onnx.ml"),
        helper.make_node("Reshape", ["afe", "shape"], ["reshaped"]),
        helper.make_node("Cast", ["reshaped"], ["label"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "exported_like",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8
    )
    onnx.checker.check_model(model)
    return model


def rows(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.normal(0, 4, (n, width)).astype(np.float32)


def test_random_exported_graphs_fold_and_keep_their_scores() -> None:
    cases = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        width, hidden = int(rng.integers(1, 40)), int(rng.integers(1, 33))
        scalar, cast, bias = bool(seed % 2), seed % 3 != 0, seed % 4 != 1
        model = exported_like(rng, width, hidden, scalar_scaler=scalar, cast=cast, bias=bias)
        sample = rows(rng, 512, width)
        out, info = sg.lean(model, ["probabilities"], sample)
        where = f"seed {seed} (width {width}, hidden {hidden}, scalar {scalar}, cast {cast}, bias {bias})"
        assert info["folded_scaler"], where
        assert info["dropped_outputs"] == ["label"], (where, info)
        ops = [n.op_type for n in out.graph.node]
        assert "Scaler" not in ops and "ArrayFeatureExtractor" not in ops and "ArgMax" not in ops, (where, ops)
        assert all(n.domain in ("", "ai.onnx") for n in out.graph.node), where
        assert [o.domain for o in out.opset_import] == [""], (where, out.opset_import)
        assert [o.name for o in out.graph.output] == ["probabilities"], where
        used = {i for n in out.graph.node for i in n.input}
        assert all(i.name in used for i in out.graph.initializer), (where, "an unused initializer is left")
        # Independent of lean()'s own check: fresh rows, compared here.
        fresh = rows(np.random.default_rng(1000 + seed), 257, width)
        diff = sg.max_difference(model, out, ["probabilities"], fresh)
        assert diff <= 1e-5, (where, diff)
        cases += 1
    assert cases == 12


def test_graph_without_a_leading_scaler_only_loses_unused_outputs() -> None:
    rng = np.random.default_rng(99)
    model = exported_like(rng, 6, 4, scalar_scaler=False, cast=True, bias=True)
    # The Scaler also feeds a second node: folding it would be wrong, so it stays.
    model.graph.node.append(helper.make_node("Identity", ["scaled"], ["scaled_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("scaled_copy", TensorProto.FLOAT, [None, 6]))
    out, info = sg.lean(model, ["probabilities"], rows(rng, 64, 6))
    assert not info["folded_scaler"], info
    assert "Scaler" in [n.op_type for n in out.graph.node]
    assert info["dropped_outputs"] == ["label", "scaled_copy"], info
    assert "Identity" not in [n.op_type for n in out.graph.node]


def test_a_rewrite_that_changes_scores_is_refused() -> None:
    rng = np.random.default_rng(5)
    model = exported_like(rng, 8, 4, scalar_scaler=False, cast=True, bias=True)
    def refused(outputs: list[str], message: str, what: str) -> None:
        try:
            sg.lean(model, outputs, rows(rng, 32, 8))
        except ValueError as e:
            assert message in str(e), e
        else:
            raise AssertionError(f"{what} was accepted")

    saved = sg.TOLERANCE
    sg.TOLERANCE = -1.0  # no difference at all is small enough: the check must refuse
    try:
        refused(["probabilities"], "differs from the exported one", "a rewrite beyond the tolerance")
    finally:
        sg.TOLERANCE = saved
    refused(["score"], "no output ['score']", "an unknown output")


def test_shipped_model_is_the_serving_graph() -> None:
    model = onnx.load(os.path.join(REPO, "models/fraud_mlp/1/model.onnx"))
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), [n.op_type for n in model.graph.node]
    out, info = sg.lean(model, ["probabilities"], rows(np.random.default_rng(3), 256, 36))
    assert not info["folded_scaler"] and info["dropped_outputs"] == [], info
    assert out.SerializeToString() == model.SerializeToString(), "a second pass changed the shipped graph"


def main() -> int:
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    for t in tests:
        t()
    print(f"test_serving_graph: OK ({len(tests)} tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
