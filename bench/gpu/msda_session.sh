#!/usr/bin/env bash
# One GPU session for the MSDA op (issue 16 profiling; issue 15's GPU acceptance), run from the repository root:
#
#     OUT=/some/dir bash bench/gpu/msda_session.sh        # OUT defaults to ./msda_session_out
#
# Steps, each time-boxed, none stopping the others; the whole script ends within MSDA_SESSION_BUDGET seconds (default
# 225: under 4 minutes with start-up):
#   1. build the extension in place (FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0, ptxas -v: registers and spills per
#      kernel -> ptxas.md), and, in the background, the im2col baseline that bench/msda.py compares with;
#   2. python3 -m pytest tests/layers/test_msda_cuda.py (GPU tests; the slow compile-only tests are CPU CI's);
#   3. python3 bench/msda.py --variants all: every backward variant, encoder and decoder, float32/float16/bfloat16;
#   4. ncu --clock-control none on the forward and backward kernels (bench/gpu/msda_ncu.py: 20 launches);
#   5. a compact summary of all of it on stdout (bench/gpu/session_summary.py); full logs and tables in $OUT.
# Needs python3 with torch (2.11 or newer, CUDA), setuptools, pytest and nvcc; nothing else (no omegaconf, fvcore, ...).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/msda_session_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/msda_session_torch_extensions}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # H200; the same flags for the baseline build and bench
T0=$(date +%s)
DEADLINE=$((T0 + ${MSDA_SESSION_BUDGET:-225}))
: > "$OUT/steps.txt"

left() { echo $((DEADLINE - $(date +%s))); }
# step NAME CAP_SECONDS CMD...: run CMD with a timeout of min(CAP, time left - 5), log to $OUT/NAME.log
step() {
    local name=$1 cap=$2 limit start rc
    shift 2
    limit=$(left)
    limit=$((limit - 5))
    if [ "$limit" -gt "$cap" ]; then limit=$cap; fi
    if [ "$limit" -lt 10 ]; then
        echo "$name skipped (budget spent)" | tee -a "$OUT/steps.txt"
        return 0
    fi
    start=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s (limit ${limit}s)" | tee -a "$OUT/steps.txt"
    return $rc
}

{
    echo "date: $(date -u)"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    nvcc --version | tail -1
    echo "ncu: $(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || echo none)"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader
} > "$OUT/env.txt" 2>&1

# 1. builds
BASELINE_LOG="$OUT/baseline_build.log"
(timeout 170 python3 -c "import sys; sys.path.insert(0, 'bench'); import msda; msda._original_design_op(); print('baseline built')" \
    > "$BASELINE_LOG" 2>&1) &
BASELINE_PID=$!
rm -rf build/temp.* build/lib.*  # a fresh compile, so that ptxas -v reports every kernel
step build "${MSDA_BUILD_CAP:-120}" env FORCE_CUDA=1 MAX_JOBS=8 NVCC_APPEND_FLAGS="-Xptxas -v" \
    python3 setup.py build_ext --inplace
BUILD_RC=$?
python3 bench/gpu/ptxas_report.py "$OUT/build.log" > "$OUT/ptxas.md" 2>&1

if [ "$BUILD_RC" -eq 0 ]; then
    # 2. tests (own process per bad input; a crash fails a test, not the run)
    step pytest 100 python3 -m pytest tests/layers/test_msda_cuda.py -v -m "not slow" -p no:cacheprovider -rfEx \
        --durations=8 --junitxml="$OUT/pytest.xml"
    # 3. benchmark: every variant; the baseline (for "x orig") if its build is done in time (it is not timed)
    while kill -0 "$BASELINE_PID" 2>/dev/null && [ "$(left)" -gt 110 ]; do sleep 1; done
    IMPLS=cuda,original
    grep -q "baseline built" "$BASELINE_LOG" || { IMPLS=cuda; echo "baseline not built in time: no x orig" >> "$OUT/steps.txt"; }
    step bench 75 python3 bench/msda.py --variants all --impls "$IMPLS" --iters 20 --warmup 5
    # 4. Nsight Compute
    NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
    if [ -n "$NCU" ]; then
        step ncu 70 "$NCU" --clock-control none --target-processes all --kernel-name regex:msda_ --launch-count 24 \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
            -f -o "$OUT/msda" python3 bench/gpu/msda_ncu.py run --order "$OUT/ncu_order.json"
        if [ -f "$OUT/msda.ncu-rep" ]; then
            "$NCU" --import "$OUT/msda.ncu-rep" --csv --page raw --print-units base > "$OUT/ncu_raw.csv" 2> "$OUT/ncu_import.log"
            python3 bench/gpu/msda_ncu.py summarize "$OUT/ncu_raw.csv" --order "$OUT/ncu_order.json" > "$OUT/ncu.md" 2>&1
        fi
    else
        echo "ncu skipped (not found)" | tee -a "$OUT/steps.txt"
    fi
else
    echo "build failed: tests, benchmark and profile skipped (see $OUT/build.log)" | tee -a "$OUT/steps.txt"
fi
kill "$BASELINE_PID" 2>/dev/null
echo "total $(($(date +%s) - T0))s" >> "$OUT/steps.txt"

# 5. summary
python3 bench/gpu/session_summary.py "$OUT"
