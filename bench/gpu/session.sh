#!/usr/bin/env bash
# The GPU session in two calls of the lent machine (at most 10 minutes each; the second right after the first, on the
# warm machine, which keeps the built op): call 1 = the MSDA op (build, GPU tests, kernel variants, ncu) and part 1 of
# the training session; call 2 = part 2 of the training session (SKIP_MSDA=1 PART=2). Outputs are packed into
# $OUT/session.tgz (the machine returns at most 8 files) and the summaries are printed last.
#
#     OUT=/some/dir bash bench/gpu/session.sh                                   # call 1
#     OUT=/some/dir SKIP_MSDA=1 PART=2 TRAIN_SESSION_BUDGET=330 bash bench/gpu/session.sh   # call 2
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_session_out}"
WORK=/tmp/gpu_session
mkdir -p "$OUT" "$WORK"
if [ "${SKIP_MSDA:-0}" != 1 ]; then
    MSDA_SESSION_BUDGET="${MSDA_SESSION_BUDGET:-190}" OUT="$WORK/msda" bash bench/gpu/msda_session.sh \
        > "$WORK/msda_stdout.txt" 2>&1
fi
TRAIN_SESSION_BUDGET="${TRAIN_SESSION_BUDGET:-480}" OUT="$WORK/train" bash bench/gpu/train_session.sh \
    > "$WORK/train_stdout.txt" 2>&1
find "$WORK" -name "*.ncu-rep" -size +8M -delete  # the csv exports stay
tar czf "$OUT/session.tgz" -C "$WORK" . 2>/dev/null
cp "$WORK/train_stdout.txt" "$OUT/" 2>/dev/null
if [ "${SKIP_MSDA:-0}" != 1 ]; then
    cp "$WORK/msda_stdout.txt" "$OUT/" 2>/dev/null
    cat "$WORK/msda_stdout.txt"
fi
echo
cat "$WORK/train_stdout.txt"
