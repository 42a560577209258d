#!/usr/bin/env bash
# One GPU session for the training step (GPU efficiency, activation checkpointing, train.compile), run from the
# repository root after the CUDA op is built in place (bench/gpu/msda_session.sh builds it):
#
#     OUT=/some/dir bash bench/gpu/train_session.sh        # OUT defaults to ./train_session_out
#
# Steps, each time-boxed, none stopping the others, most important first; the script ends within
# TRAIN_SESSION_BUDGET seconds (default 480). PART=1 runs steps 1-3, PART=2 steps 4-8 (the lent machine allows 10
# minutes per command: two calls on the warm machine), default both:
#   1. bench/train_step.py at 800x1333, batch 2, float32: DAB, KS-DAB, Deformable, KS-Deformable (ms/iter, kernel
#      time, GPU busy, launches and host syncs per iteration, peak memory);
#   2. the same with bfloat16 autocast (weight copies);
#   3. the main job's config on CUDA, 200 iterations eager, as configured (data loaded in the training process);
#   4. the same with train.compile=True, bfloat16 and 4 loader workers (and the compiled evaluation at the end);
#   5. bench/gpu/amp_profile.py: float32 vs bfloat16 autocast vs bfloat16 with weight copies, host-time profile;
#   6. activation checkpointing: peak memory and time of KS-DAB and KS-Deformable with and without it;
#   7. the main job's config eager with 4 loader workers; 8. compiled, float32, 4 workers;
# then a summary on stdout (s/iteration from metrics.json); full logs in $OUT.
# Needs python3 with torch (CUDA) and the project's pure-Python dependencies (omegaconf, fvcore, iopath, pycocotools,
# ...; on the lent H200 carry them as wheels: ../shared/docs/gpu_findings.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/train_session_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export DETREX_CACHE="${DETREX_CACHE:-/tmp/detrex_cache}" MPLBACKEND=Agg
T0=$(date +%s)
DEADLINE=$((T0 + ${TRAIN_SESSION_BUDGET:-480}))
: > "$OUT/train_steps.txt"

left() { echo $((DEADLINE - $(date +%s))); }
step() {  # step NAME CAP_SECONDS CMD...: CMD with a timeout of min(CAP, time left - 5), output in $OUT/NAME.log
    local name=$1 cap=$2 limit start rc
    shift 2
    limit=$(($(left) - 5))
    if [ "$limit" -gt "$cap" ]; then limit=$cap; fi
    if [ "$limit" -lt 15 ]; then
        echo "$name skipped (budget spent)" | tee -a "$OUT/train_steps.txt"
        return 0
    fi
    start=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s (limit ${limit}s)" | tee -a "$OUT/train_steps.txt"
    return $rc
}

FOUR=DAB-DETR,KS-DAB-DETR,Deformable-DETR,KS-Deformable-DETR
COMMON=(--device cuda --size 800x1333 --batch-size 2 --no-peers --iters 10 --warmup 3)
MAIN=projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py
RUN=(train.device=cuda train.max_iter=200 train.eval_period=0 train.log_period=20 train.checkpointer.period=100000)
PART="${PART:-all}"  # 1, 2 or all: the lent machine runs at most 10 minutes per command, so two calls
# most important first: later steps are skipped when the budget is spent
if [ "$PART" != 2 ]; then
step step_fp32 110 python3 bench/train_step.py "${COMMON[@]}" --models "$FOUR"
step step_bf16 90 python3 bench/train_step.py "${COMMON[@]}" --models "$FOUR" --amp bf16 --no-memory
step main_eager 60 python3 tools/train_net.py --config-file "$MAIN" "${RUN[@]}" train.output_dir="$OUT/main_eager"
fi
if [ "$PART" != 1 ]; then
# the config loads data in the training process (num_workers=0, for the 2-core CPU machine); with a GPU the
# loader needs workers to keep up, so the compiled runs also get 4
step main_compile_bf16 150 python3 tools/train_net.py --config-file "$MAIN" "${RUN[@]}" train.compile=True \
    train.amp.enabled=True train.amp.dtype=bfloat16 dataloader.train.num_workers=4 \
    train.output_dir="$OUT/main_compile_bf16"
step amp_profile 60 python3 bench/gpu/amp_profile.py --model DAB-DETR --size 800x1333
step step_ckpt 70 python3 bench/train_step.py --device cuda --size 800x1333 --batch-size 2 --no-peers --iters 3 \
    --warmup 1 --models KS-DAB-DETR,KS-Deformable-DETR --activation-checkpoint
step main_eager_workers 50 python3 tools/train_net.py --config-file "$MAIN" "${RUN[@]}" \
    dataloader.train.num_workers=4 train.output_dir="$OUT/main_eager_workers"
step main_compile 150 python3 tools/train_net.py --config-file "$MAIN" "${RUN[@]}" train.compile=True \
    dataloader.train.num_workers=4 train.output_dir="$OUT/main_compile"
fi

echo
echo "== train session: steps"
cat "$OUT/train_steps.txt"
for name in step_fp32 step_bf16 amp_profile step_ckpt; do
    [ -f "$OUT/$name.log" ] || continue
    echo
    echo "== $name"
    grep -E "^\||^  aten|^bf16|^float32" "$OUT/$name.log" || tail -n 8 "$OUT/$name.log"
done
echo
echo "== main job config on CUDA (s/iteration: median of the logged 'time' after the first 40 iterations)"
python3 bench/gpu/train_summary.py "$OUT"/main_eager "$OUT"/main_eager_workers "$OUT"/main_compile \
    "$OUT"/main_compile_bf16
