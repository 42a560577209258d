"""Wall time per training iteration of a KS config and its baseline, and their ratio (the study's compute ratio).

`tools/ks_study.py --baseline-max-iter` gives the baseline more iterations so that both arms get the same compute;
the factor is this ratio. Each round runs ``tools/train_net.py`` on both configs in turn (alternating, so a drift of
the machine's speed hits both), ``--iters`` iterations without evaluation, in subprocesses with one thread as the
study runs them; the time per iteration is the mean of the trainer's ``time`` over the iterations after the first
``--skip`` (start-up and the first iterations' allocations excluded), read from ``metrics.json`` (written every
iteration here: ``train.log_period=1``).

    python bench/study_ratio.py                                   # the DAB study pair, 150 iterations, 2 rounds
    python bench/study_ratio.py --ks-config ... --baseline-config ... --iters 200 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = "projects/ks_detr/study/configs"


def iteration_seconds(config: str, iters: int, skip: int, threads: int, opts) -> float:
    """Mean seconds per iteration of one train_net run (iterations ``skip`` .. ``iters - 1``)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, os.path.join(REPO_ROOT, "tools/train_net.py"), "--config-file", config,
               f"train.max_iter={iters}", f"train.output_dir={out}", "train.eval_period=0", "train.log_period=1",
               f"train.checkpointer.period={10 * iters}", *opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{config}: train_net failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        times = []
        with open(os.path.join(out, "metrics.json")) as f:
            for line in f:
                rec = json.loads(line)
                if "time" in rec and rec.get("iteration", -1) >= skip:
                    times.append(rec["time"])
    if not times:
        raise SystemExit(f"{config}: no per-iteration times in metrics.json (iters {iters} <= skip {skip}?)")
    return statistics.mean(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks-config", default=f"{STUDY}/ks_dab_detr_shapes_hard.py")
    parser.add_argument("--baseline-config", default=f"{STUDY}/dab_detr_shapes_hard.py")
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--skip", type=int, default=20, help="first iterations not counted")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("opts", nargs="*", help="config overrides for both runs")
    args = parser.parse_args(argv)
    ks, base = [], []
    for r in range(args.rounds):
        ks.append(iteration_seconds(args.ks_config, args.iters, args.skip, args.threads, args.opts))
        base.append(iteration_seconds(args.baseline_config, args.iters, args.skip, args.threads, args.opts))
        print(f"round {r}: KS {ks[-1]:.4f} s/it, baseline {base[-1]:.4f} s/it, ratio {ks[-1] / base[-1]:.3f}",
              flush=True)
    ratios = [a / b for a, b in zip(ks, base)]
    print(f"\n| config | s/iteration (median of {args.rounds}) |\n|---|---|")
    print(f"| {args.ks_config} | {statistics.median(ks):.4f} |\n| {args.baseline_config} | {statistics.median(base):.4f} |")
    print(f"\nKS / baseline wall time per iteration: {statistics.median(ratios):.3f} "
          f"(per round: {', '.join(f'{x:.3f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
