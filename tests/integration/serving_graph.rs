//! The serving-graph rewrite of `models/serving_graph.py` (the Scaler folded into the first
//! layer, unused outputs dropped), tested by its own Python suite: random skl2onnx-shaped graphs
//! keep their scores, graphs it cannot fold are left alone, a rewrite that would change a score
//! is refused, and the shipped model already is the serving graph.

use std::path::Path;

use crate::common;

#[test]
fn serving_graph_rewrite_keeps_scores_and_the_shipped_model_is_lean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(common::python())
        .arg(root.join("models/test_serving_graph.py"))
        .current_dir(root)
        .output()
        .expect("run models/test_serving_graph.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "models/test_serving_graph.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test_serving_graph: OK (4 tests)"), "unexpected output:\n{stdout}\n{stderr}");
}
