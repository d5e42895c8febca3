#!/usr/bin/env bash
# GPU benchmark: ONNX Runtime alone (Python) next to streamscore's inference stage
# (examples/infer_sweep.rs), at batch sizes 1…8192, on CPU and on CUDA. Prints one markdown table
# and writes it to bench-results/gpu-<date>.md. See benches/README.md, "GPU benchmark".
#
#   bash benches/gpu.sh                 # on a machine with an NVIDIA GPU: CPU and CUDA rows
#   bash benches/gpu.sh --cpu-only      # CPU rows only, with the existing .venv (no install)
#
# Options:
#   --cpu-only               skip CUDA; use .venv's CPU onnxruntime (no onnxruntime-gpu install)
#   --sizes 1,2,4,…          batch sizes (default: powers of two from 1 to 8192)
#   --seconds-per-size S     measured seconds per batch size and series (default 1)
#   --warmup-seconds S       warm-up per batch size and series (default 0.2)
#   --intra-op-threads N     ONNX Runtime intra-op threads for every series (default 1, streamscore's)
#   --device-id N            GPU ordinal (default 0)
#   --cuda-tf32              CUDA: allow TF32 tensor cores in both contenders (ONNX Runtime's own
#                            default; streamscore's model.cuda_tf32 is off, and so is this script's)
#   --wheelhouse DIR         install from DIR only (pip --no-index --find-links DIR); split wheels
#                            (NAME.whl.part-aa, NAME.whl.part-ab, …) are joined first
#   --pip-arg ARG            extra argument for pip install (repeatable), e.g. --pip-arg=--index-url=URL
#   --base-python PY         interpreter that creates the venv (default python3); if it is itself a
#                            virtual environment, the new venv also sees its packages (.pth file)
#   --venv DIR               the venv for onnxruntime-gpu (default .venv-gpu)
#   --python PY              use this interpreter as it is: no venv, no install
#   --no-build               do not run cargo; use INFER_SWEEP_BIN or target/release/examples/infer_sweep
#   --out-dir DIR            where the report goes (default bench-results)
#   --model-dir DIR          model version directory (default models/fraud_mlp/1)
#
# Environment: INFER_SWEEP_BIN=path uses a prebuilt examples/infer_sweep (no cargo needed);
# CARGO_TARGET_DIR is honoured when building.
#
# Exit status: 0 when every series that should run ran; 1 on bad usage or when a series failed;
# 3 when a GPU was found but no series ran on CUDA (the CPU rows are still printed and written).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[gpu.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

CPU_ONLY=0
SIZES=1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192
SECONDS_PER_SIZE=1
WARMUP_SECONDS=0.2
THREADS=1
DEVICE_ID=0
MODEL_DIR=models/fraud_mlp/1
TF32_ARGS=()
WHEELHOUSE=""
PIP_EXTRA=()
BASE_PY=python3
VENV=.venv-gpu
USE_PY=""
NO_BUILD=0
OUT_DIR=bench-results
ARGS_SEEN="$*"

need() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --cpu-only) CPU_ONLY=1 ;;
        --sizes) need "$@"; SIZES=$2; shift ;;
        --sizes=*) SIZES=${1#*=} ;;
        --seconds-per-size) need "$@"; SECONDS_PER_SIZE=$2; shift ;;
        --seconds-per-size=*) SECONDS_PER_SIZE=${1#*=} ;;
        --warmup-seconds) need "$@"; WARMUP_SECONDS=$2; shift ;;
        --warmup-seconds=*) WARMUP_SECONDS=${1#*=} ;;
        --intra-op-threads) need "$@"; THREADS=$2; shift ;;
        --intra-op-threads=*) THREADS=${1#*=} ;;
        --device-id) need "$@"; DEVICE_ID=$2; shift ;;
        --device-id=*) DEVICE_ID=${1#*=} ;;
        --cuda-tf32) TF32_ARGS=(--cuda-tf32) ;;
        --model-dir) need "$@"; MODEL_DIR=$2; shift ;;
        --model-dir=*) MODEL_DIR=${1#*=} ;;
        --wheelhouse) need "$@"; WHEELHOUSE=$2; shift ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=} ;;
        --pip-arg) need "$@"; PIP_EXTRA+=("$2"); shift ;;
        --pip-arg=*) PIP_EXTRA+=("${1#*=}") ;;
        --base-python) need "$@"; BASE_PY=$2; shift ;;
        --base-python=*) BASE_PY=${1#*=} ;;
        --venv) need "$@"; VENV=$2; shift ;;
        --venv=*) VENV=${1#*=} ;;
        --python) need "$@"; USE_PY=$2; shift ;;
        --python=*) USE_PY=${1#*=} ;;
        --no-build) NO_BUILD=1 ;;
        --out-dir) need "$@"; OUT_DIR=$2; shift ;;
        --out-dir=*) OUT_DIR=${1#*=} ;;
        -h | --help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

[[ "$SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes must be comma-separated integers, got '$SIZES'"
[[ "$SECONDS_PER_SIZE" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--seconds-per-size must be a number"
[[ "$WARMUP_SECONDS" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--warmup-seconds must be a number"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 ]] || die "--intra-op-threads must be a positive integer"
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "--device-id must be a non-negative integer"
N_SIZES=$(tr ',' '\n' <<<"$SIZES" | grep -c .)

# The onnxruntime version streamscore is pinned to (ort's api-31 needs 1.31): the same for the GPU wheel.
ORT_VERSION=$(sed -n 's/^onnxruntime==\([0-9][0-9.]*\).*/\1/p' python/requirements.txt | head -1)
[ -n "$ORT_VERSION" ] || die "no onnxruntime==X pin in python/requirements.txt"
[ -f "$MODEL_DIR/manifest.json" ] || die "--model-dir $MODEL_DIR has no manifest.json"
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
META="$TMP/meta.tsv"    # key<TAB>value lines for the report
NOTES="$TMP/notes.txt"  # one note per line for the report
: >"$META"
: >"$NOTES"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
note() { printf '%s\n' "$*" >>"$NOTES"; say "$*"; }

# ---------------------------------------------------------------------------------------------
# 1. Is there a GPU? Looked at first, so that a machine without one never installs CUDA wheels.
# ---------------------------------------------------------------------------------------------
MODE=cpu
GPU_STATE=""
if [ "$CPU_ONLY" = 1 ]; then
    GPU_STATE="not measured (--cpu-only)"
    say "--cpu-only: CPU rows only"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_STATE="not measured: no NVIDIA GPU found (nvidia-smi is not installed)"
elif ! GPU_LIST=$(timeout 60 nvidia-smi -L 2>&1); then
    GPU_STATE="not measured: no NVIDIA GPU found (nvidia-smi failed: $(head -1 <<<"$GPU_LIST"))"
elif ! grep -q '^GPU ' <<<"$GPU_LIST"; then
    GPU_STATE="not measured: no NVIDIA GPU found (nvidia-smi lists none)"
else
    MODE=gpu
    GPU_STATE="measured"
fi
if [ "$MODE" = cpu ] && [ "$CPU_ONLY" = 0 ]; then
    say "=================================================================="
    say "NO GPU FOUND (${GPU_STATE#*found (}."
    say "Running the CPU rows only; the CUDA rows are NOT measured."
    say "=================================================================="
fi
meta "CUDA rows" "$GPU_STATE"

CUDA_DRIVER=""
if [ "$MODE" = gpu ]; then
    GPU_INFO=$(nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id --format=csv,noheader 2>&1 || true)
    CUDA_DRIVER=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
    say "GPU: $GPU_INFO (driver supports CUDA ${CUDA_DRIVER:-?})"
    meta "GPU (nvidia-smi)" "$GPU_INFO"
    meta "CUDA version the driver supports" "${CUDA_DRIVER:-unknown}"
    nvidia-smi >"$TMP/nvidia-smi.txt" 2>&1 || true
    if [ -n "$CUDA_DRIVER" ] && [ "${CUDA_DRIVER%%.*}" -lt 13 ]; then
        note "warning: the driver supports CUDA $CUDA_DRIVER, but onnxruntime-gpu $ORT_VERSION from PyPI is built for CUDA 13 (driver 580 or newer): its CUDA provider will probably fail to start"
    fi
fi

SERIES=2
[ "$MODE" = gpu ] && SERIES=5
EST=$(awk -v n="$N_SIZES" -v s="$SECONDS_PER_SIZE" -v w="$WARMUP_SECONDS" -v k="$SERIES" 'BEGIN { printf "%.0f", n * (s + w) * k + 3 * k }')
say "sweep: $SERIES series × $N_SIZES batch sizes × ($SECONDS_PER_SIZE s + $WARMUP_SECONDS s warm-up) ≈ ${EST} s, plus set-up"
# A generous limit for each series, so a hang (GPU initialisation, say) cannot eat the whole run.
SERIES_LIMIT=$(awk -v n="$N_SIZES" -v s="$SECONDS_PER_SIZE" -v w="$WARMUP_SECONDS" 'BEGIN { printf "%.0f", n * (s + w) * 3 * 2 + 120 }')

# ---------------------------------------------------------------------------------------------
# 2. Python with onnxruntime (CPU wheel in CPU mode, onnxruntime-gpu in GPU mode).
# ---------------------------------------------------------------------------------------------
# Prints shell assignments: ORT_VER, ORT_CUDA (1 when CUDAExecutionProvider is available), ORT_LIB, PY_VER.
PROBE='
import glob, os, shlex, sys
try:
    import onnxruntime as o
    libs = sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.*")))
    out = {"ORT_VER": o.__version__, "ORT_CUDA": "1" if "CUDAExecutionProvider" in o.get_available_providers() else "0",
           "ORT_LIB": libs[0] if libs else ""}
except Exception as e:
    out = {"ORT_VER": "", "ORT_CUDA": "0", "ORT_LIB": "", "ORT_ERR": str(e).splitlines()[0] if str(e) else type(e).__name__}
out["PY_VER"] = sys.version.split()[0]
print("\n".join(f"{k}={shlex.quote(v)}" for k, v in out.items()))
'
probe() {
    ORT_VER="" ORT_CUDA=0 ORT_LIB="" ORT_ERR="" PY_VER=""
    local out
    out=$("$1" -c "$PROBE" 2>/dev/null) || return 1
    eval "$out"
}
# The directories of the NVIDIA CUDA/cuDNN wheels (nvidia/*/lib, nvidia/cu13/lib, …) on the
# interpreter's path: libonnxruntime_providers_cuda.so has no RUNPATH to find them.
NVIDIA_DIRS='
import os, sys
dirs = []
for p in sys.path:
    root = os.path.join(p, "nvidia")
    if os.path.isdir(root):
        for d, _, files in os.walk(root):
            if d not in dirs and any(f.startswith("lib") and ".so" in f for f in files):
                dirs.append(d)
print(":".join(dirs))
'

# pip's arguments for the wheelhouse, in WH_ARGS. Split wheels (NAME.whl.part-aa, -ab, …; made
# with `split -b 50M NAME.whl NAME.whl.part-`) are joined into a temporary folder first.
WH_ARGS=()
wheelhouse_args() {
    [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
    local joined="$TMP/wheelhouse" base name first
    WH_ARGS=(--no-index --find-links "$WHEELHOUSE")
    shopt -s nullglob
    local -a parts=("$WHEELHOUSE"/*.whl.part*)
    shopt -u nullglob
    if [ "${#parts[@]}" -gt 0 ]; then
        mkdir -p "$joined"
        for first in "${parts[@]}"; do
            base=${first%.part*}
            name=$(basename "$base")
            [ -f "$joined/$name" ] && continue
            local -a pieces=("$base".part*) # a glob expands sorted: part-aa, part-ab, …
            say "joining ${#pieces[@]} parts into $joined/$name"
            cat "${pieces[@]}" >"$joined/$name.tmp"
            if ! "$BASE_PY" -m zipfile -t "$joined/$name.tmp" >/dev/null 2>&1; then
                rm -f "$joined/$name.tmp"
                die "the parts of $name do not make a valid wheel (one missing or cut short?)"
            fi
            mv "$joined/$name.tmp" "$joined/$name"
        done
        WH_ARGS+=(--find-links "$joined")
    fi
}

# Creates $VENV (marked with its flavour, so that only a folder this script made is ever
# replaced). Returns 1 when the interpreter cannot make a venv.
make_venv() {
    local flavour=$1
    if [ -e "$VENV" ]; then
        [ -f "$VENV/.gpu-bench" ] || die "$VENV exists and was not made by this script: move it away or pass --venv DIR"
        say "replacing $VENV ($(cat "$VENV/.gpu-bench") flavour) with a $flavour one"
        rm -rf "$VENV"
    fi
    command -v "$BASE_PY" >/dev/null 2>&1 || die "no $BASE_PY to create $VENV with (pass --base-python PY)"
    say "creating $VENV with $BASE_PY"
    if ! "$BASE_PY" -m venv "$VENV"; then
        say "$BASE_PY -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
        rm -rf "$VENV"
        return 1
    fi
    echo "$flavour" >"$VENV/.gpu-bench"
    # A base interpreter that is itself a virtual environment (the CUDA image's python3 is) lends
    # its packages, the NVIDIA CUDA wheels and numpy among them, through a .pth file; the new
    # venv's own site-packages come first, so its onnxruntime wins over any inherited one.
    local inherited site
    inherited=$("$BASE_PY" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
    if [ -n "$inherited" ]; then
        site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        printf '%s\n' "$inherited" >"$site/_gpu_bench_inherited.pth"
        say "$VENV also sees the packages of $BASE_PY: $(tr '\n' ' ' <<<"$inherited")"
        meta "venv inherits" "$(tr '\n' ' ' <<<"$inherited")"
    fi
}

# pip install with interpreter $1, bounded in time (an offline machine fails fast: 15 s timeout,
# 1 retry). pip's own output goes to stderr, so that stdout carries the table alone.
pip_install() {
    local py=$1
    shift
    local -a args=(--disable-pip-version-check --no-compile --timeout 15 --retries 1)
    if [ -n "$WHEELHOUSE" ]; then
        wheelhouse_args
        args+=("${WH_ARGS[@]}")
    fi
    args+=("${PIP_EXTRA[@]}")
    say "$py -m pip install ${args[*]} $*"
    timeout 600 "$py" -m pip install "${args[@]}" "$@" >&2
}

# True when $1 (probed) has the pinned onnxruntime with the CUDA provider.
has_ort_gpu() { probe "$1" && [ "$ORT_VER" = "$ORT_VERSION" ] && [ "$ORT_CUDA" = 1 ]; }

PY=""
CUDA_READY=0
OVERLAY="$VENV/site"
if [ -n "$USE_PY" ]; then
    probe "$USE_PY" || die "--python $USE_PY does not run"
    [ -n "$ORT_VER" ] || die "--python $USE_PY cannot import onnxruntime: $ORT_ERR"
    PY=$USE_PY
elif [ "$MODE" = gpu ]; then
    if [ -x "$VENV/bin/python" ] && has_ort_gpu "$VENV/bin/python"; then
        say "$VENV already has onnxruntime-gpu $ORT_VER"
        PY="$VENV/bin/python"
    elif [ -d "$OVERLAY" ] && PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}" has_ort_gpu "$BASE_PY"; then
        say "$OVERLAY already has onnxruntime-gpu $ORT_VER (on $BASE_PY's PYTHONPATH)"
        export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
        PY=$BASE_PY
    elif make_venv gpu; then
        # The extras pull NVIDIA's CUDA 13 runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN 9 wheels.
        if pip_install "$VENV/bin/python" "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" numpy; then
            PY="$VENV/bin/python"
        else
            note "could not install onnxruntime-gpu $ORT_VERSION (pip output above): the CUDA rows cannot run. Offline? Use --wheelhouse DIR or --python PY"
        fi
    else
        # No venv: onnxruntime-gpu alone into a folder put first on $BASE_PY's PYTHONPATH; its
        # dependencies (numpy, protobuf, the NVIDIA wheels) must be $BASE_PY's already.
        say "no venv: installing onnxruntime-gpu into $OVERLAY for $BASE_PY (no dependencies)"
        mkdir -p "$OVERLAY"
        echo overlay >"$VENV/.gpu-bench"
        if pip_install "$BASE_PY" --upgrade --no-deps --target "$OVERLAY" "onnxruntime-gpu==$ORT_VERSION"; then
            export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
            PY=$BASE_PY
        else
            note "could not install onnxruntime-gpu $ORT_VERSION into $OVERLAY (pip output above): the CUDA rows cannot run"
        fi
    fi
fi
if [ -n "$PY" ]; then
    probe "$PY" || die "$PY does not run"
    [ -n "$ORT_VER" ] || { note "$PY cannot import onnxruntime ($ORT_ERR): the CUDA rows cannot run"; PY=""; }
fi
if [ -z "$PY" ]; then
    # CPU rows: the project's .venv (make setup) has the pinned CPU wheel.
    if [ -x .venv/bin/python ] && probe .venv/bin/python && [ "$ORT_VER" = "$ORT_VERSION" ]; then
        PY=.venv/bin/python
    elif [ -x "$VENV/bin/python" ] && probe "$VENV/bin/python" && [ "$ORT_VER" = "$ORT_VERSION" ]; then
        PY="$VENV/bin/python"
    elif say "no interpreter with onnxruntime $ORT_VERSION: trying a venv with the CPU wheel" && make_venv cpu &&
        pip_install "$VENV/bin/python" "onnxruntime==$ORT_VERSION" numpy; then
        PY="$VENV/bin/python"
    elif probe "$BASE_PY" && [ -n "$ORT_VER" ]; then
        note "warning: could not install onnxruntime $ORT_VERSION; using $BASE_PY's onnxruntime $ORT_VER"
        PY=$BASE_PY
    else
        die "no Python with onnxruntime: could not install onnxruntime $ORT_VERSION (offline? --wheelhouse DIR)"
    fi
    probe "$PY" || die "$PY does not run"
fi
[ -n "$ORT_VER" ] || die "$PY cannot import onnxruntime: $ORT_ERR"
[ -n "$ORT_LIB" ] || die "no libonnxruntime.so.* in $PY's onnxruntime package"
if [ "$ORT_VER" != "$ORT_VERSION" ]; then
    note "warning: $PY has onnxruntime $ORT_VER, not the pinned $ORT_VERSION (streamscore's ort crate needs the 1.31 API)"
fi
if [ "$MODE" = gpu ]; then
    if [ "$ORT_CUDA" = 1 ]; then
        CUDA_READY=1
    else
        note "onnxruntime $ORT_VER of $PY has no CUDAExecutionProvider (the CPU wheel?): the CUDA rows cannot run"
    fi
fi
say "python: $PY (Python $PY_VER, onnxruntime $ORT_VER, CUDA provider available: $ORT_CUDA)"

NV_DIRS=$("$PY" -c "$NVIDIA_DIRS" 2>/dev/null || true)
if [ -n "$NV_DIRS" ]; then
    export LD_LIBRARY_PATH="$NV_DIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "LD_LIBRARY_PATH += $NV_DIRS"
elif [ "$CUDA_READY" = 1 ]; then
    note "warning: no NVIDIA CUDA wheels (nvidia/*/lib) on $PY's path: the CUDA provider relies on a system CUDA 13 and cuDNN 9"
fi
# Both contenders load the very same ONNX Runtime library.
export ORT_DYLIB_PATH="$ORT_LIB"

# ---------------------------------------------------------------------------------------------
# 3. The Rust side: examples/infer_sweep.
# ---------------------------------------------------------------------------------------------
BIN=""
BUILT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/infer_sweep"
if [ -n "${INFER_SWEEP_BIN:-}" ]; then
    [ -x "$INFER_SWEEP_BIN" ] || die "INFER_SWEEP_BIN=$INFER_SWEEP_BIN is not an executable file"
    BIN=$INFER_SWEEP_BIN
    say "infer_sweep: $BIN (INFER_SWEEP_BIN)"
elif [ "$NO_BUILD" = 0 ] && command -v cargo >/dev/null 2>&1; then
    say "cargo build --release --example infer_sweep"
    if cargo build --release --example infer_sweep; then
        BIN=$BUILT_BIN
    elif [ -x "$BUILT_BIN" ]; then
        note "warning: cargo build failed; using the existing $BUILT_BIN, which may be stale"
        BIN=$BUILT_BIN
    else
        note "cargo build --release --example infer_sweep failed: no streamscore rows"
    fi
elif [ -x "$BUILT_BIN" ]; then
    say "infer_sweep: $BUILT_BIN (prebuilt; not rebuilt)"
    BIN=$BUILT_BIN
else
    note "no infer_sweep binary (no cargo, no INFER_SWEEP_BIN, no $BUILT_BIN): no streamscore rows"
fi

# ---------------------------------------------------------------------------------------------
# 4. Record the machine, then run every series.
# ---------------------------------------------------------------------------------------------
meta "date (UTC)" "$(date -u '+%Y-%m-%d %H:%M')"
meta "command" "bash benches/gpu.sh $ARGS_SEEN"
meta "host" "$(uname -srm), $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
meta "load average before the sweeps" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "python" "$PY (Python $PY_VER)"
meta "onnxruntime" "$ORT_VER ($ORT_LIB)"
NV_PKGS=$("$PY" -c '
import importlib.metadata as m
names = {"%s %s" % (d.metadata["Name"], d.version) for d in m.distributions()
         if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "numpy", "onnxruntime"))}
print(", ".join(sorted(names)))' 2>/dev/null || true)
meta "packages" "${NV_PKGS:-?}"
meta "infer_sweep" "${BIN:-none}"
meta "model" "$MODEL_DIR"
meta "settings" "intra-op threads $THREADS, $SECONDS_PER_SIZE s measured + $WARMUP_SECONDS s warm-up per batch size, device $DEVICE_ID, CUDA TF32 $([ ${#TF32_ARGS[@]} -gt 0 ] && echo on || echo "off (use_tf32=0)")"

COMMON=(--sizes "$SIZES" --seconds-per-size "$SECONDS_PER_SIZE" --warmup-seconds "$WARMUP_SECONDS" --intra-op-threads "$THREADS" --device-id "$DEVICE_ID" "${TF32_ARGS[@]}")
PROVIDERS=cpu
[ "$MODE" = gpu ] && [ "$CUDA_READY" = 1 ] && PROVIDERS=cpu,cuda
FAILED=0

say "ONNX Runtime alone (Python): providers $PROVIDERS"
if ! timeout "$((SERIES_LIMIT * 3))" "$PY" benches/gpu/ort_sweep.py --providers "$PROVIDERS" --model-dir "$MODEL_DIR" \
    "${COMMON[@]}" >"$TMP/ort.jsonl"; then
    note "benches/gpu/ort_sweep.py failed or timed out (its output above); its rows may be missing"
    FAILED=1
fi

run_rust() {
    local provider=$1
    say "streamscore inference stage: provider $provider"
    if ! timeout "$SERIES_LIMIT" "$BIN" --provider "$provider" --model-dir "$MODEL_DIR" --json "${COMMON[@]}" \
        >"$TMP/rust-$provider.jsonl"; then
        note "infer_sweep --provider $provider failed or timed out (its output above); its rows may be missing"
        FAILED=1
    fi
}
if [ -n "$BIN" ]; then
    run_rust cpu
    if [ "$MODE" = gpu ]; then
        if [ "$CUDA_READY" = 1 ]; then
            run_rust cuda
        else
            note "streamscore on CUDA not run: no onnxruntime library with the CUDA provider"
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------
# 5. The report.
# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu-$(date -u +%F).md"
i=2
while [ -e "$REPORT" ]; do
    REPORT="$OUT_DIR/gpu-$(date -u +%F)-$i.md"
    i=$((i + 1))
done
[ -f "$TMP/nvidia-smi.txt" ] || : >"$TMP/nvidia-smi.txt"
"$PY" - "$META" "$NOTES" "$TMP/nvidia-smi.txt" "$REPORT" "$TMP/on-cuda" "$TMP"/ort.jsonl "$TMP"/rust-*.jsonl <<'EOF' || die "could not write the report"
import json, sys

meta_path, notes_path, smi_path, report_path, on_cuda_path, *jsonl = sys.argv[1:]
meta = [line.rstrip("\n").split("\t", 1) for line in open(meta_path) if "\t" in line]
notes = [line.strip() for line in open(notes_path) if line.strip()]
smi = open(smi_path).read().strip()
rows, skipped, raw = [], [], []
for path in jsonl:
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        raw.append(line)
        r = json.loads(line)
        (skipped if "skipped" in r else rows).append(r)

def series(r):
    short = "ORT alone (Python)" if r["contender"].startswith("ORT") else "streamscore"
    prov = r["provider_active"] if r["provider_requested"] == r["provider_active"] else f"{r['provider_requested']}→{r['provider_active']}"
    extra = " io_binding" if r.get("variant") == "io_binding" else ""
    return f"{short} · {prov}{extra}"

def num(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"

out = []
cuda_state = dict(meta).get("CUDA rows", "")
on_cuda = sorted({series(r) for r in rows if r["provider_active"] == "cuda"})
with open(on_cuda_path, "w") as f:
    f.write("\n".join(on_cuda))
if cuda_state == "measured" and not on_cuda:
    cuda_state = "requested, but no series ran on CUDA (every CUDA session fell back to CPU or failed: see the notes and the log)"
out.append(f"# GPU benchmark: ONNX Runtime alone vs streamscore's inference stage ({dict(meta).get('date (UTC)', '')} UTC)")
out.append("")
if cuda_state != "measured":
    out.append(f"**CUDA rows: {cuda_state}.**")
    out.append("")
out.append(f"Model `{dict(meta).get('model', 'models/fraud_mlp/1')}` (MLP); every contender runs the same ONNX Runtime library, "
           "cache off, one session per series. µs per call: wall time of one call (Python: `session.run` / "
           "`run_with_iobinding`; streamscore: `Scorer::score`), mean and nearest-rank percentiles over the "
           "measured calls; rows/s = batch × calls / measured time; ns/row = measured time / (batch × calls).")
out.append("")
out.append("## Machine and versions")
out.append("")
for k, v in meta:
    out.append(f"- **{k}**: {cuda_state if k == 'CUDA rows' else v}")
placements = sorted({f"{r['provider_requested']}: {r['placement']}" for r in rows if r.get("placement")})
if placements:
    out.append(f"- **node placement (ONNX Runtime's log)**: {'; '.join(placements)}")
out.append("")
out.append("## Results")
out.append("")
out.append("| contender | variant | provider (requested → active) | batch | calls | µs/call mean | p50 | p99 | rows/s | ns/row | max abs diff vs CPU |")
out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    diff = r.get("max_abs_diff_vs_cpu")
    out.append(
        f"| {r['contender']} | {r.get('variant', '')} | {r['provider_requested']} → {r['provider_active']} | {r['batch']} "
        f"| {r['calls']:,} | {num(r['us_per_call_mean'])} | {num(r['us_per_call_p50'])} | {num(r['us_per_call_p99'])} "
        f"| {num(r['rows_per_s'], 0)} | {num(r['ns_per_row'])} | {'—' if diff is None else f'{diff:.1e}'} |"
    )
if not rows:
    out.append("| (no rows: every series failed) | | | | | | | | | | |")
out.append("")
names = list(dict.fromkeys(series(r) for r in rows))
if names:
    by = {(series(r), r["batch"]): r for r in rows}
    sizes = sorted({r["batch"] for r in rows})
    for title, key in (("µs per call (mean)", "us_per_call_mean"), ("µs per call (p50)", "us_per_call_p50"),
                       ("ns per row", "ns_per_row")):
        out.append(f"## {title} by batch size")
        out.append("")
        out.append("| batch | " + " | ".join(names) + " |")
        out.append("|---:|" + "---:|" * len(names))
        for n in sizes:
            out.append(f"| {n} | " + " | ".join(num(by[(s, n)][key]) if (s, n) in by else "—" for s in names) + " |")
        out.append("")
if notes or skipped:
    out.append("## Notes")
    out.append("")
    for s in skipped:
        out.append(f"- {s['contender']}, {s['provider_requested']}: skipped: {s['skipped']}")
    for n in notes:
        out.append(f"- {n}")
    out.append("")
if smi:
    out += ["<details><summary>nvidia-smi</summary>", "", "```", smi, "```", "", "</details>", ""]
out += ["<details><summary>raw JSON lines</summary>", "", "```json", *raw, "```", "", "</details>", ""]
text = "\n".join(out)
with open(report_path, "w") as f:
    f.write(text)
print(text)
EOF
say "report written to $REPORT"

if [ "$MODE" = gpu ] && { [ "$CUDA_READY" = 0 ] || [ ! -s "$TMP/on-cuda" ]; }; then
    say "a GPU was found but no series ran on CUDA (see the notes)"
    exit 3
fi
[ "$FAILED" = 0 ] || exit 1
