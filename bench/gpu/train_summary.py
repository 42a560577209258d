"""Seconds per training iteration of train_net runs, from their metrics.json (a table, for the GPU session).

    python bench/gpu/train_summary.py OUTPUT_DIR [OUTPUT_DIR ...]

Per run: the median of the per-iteration ``time`` the trainer logs (a windowed median of iteration times) over the
lines after iteration ``--skip`` (compilation and warm-up excluded), the median ``data_time``, the last
``total_loss``, the evaluation AP if there was one, and the first logged time (which includes a compilation).
"""

import argparse
import json
import os
import statistics
import sys


def summarize(run_dir: str, skip: int):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return [os.path.basename(run_dir), "no metrics.json", "", "", "", ""]
    times, data_times, first, loss, ap = [], [], None, None, None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            it = rec.get("iteration", -1)
            if "time" in rec:
                first = rec["time"] if first is None else first
                if it >= skip:
                    times.append(rec["time"])
                    data_times.append(rec.get("data_time", float("nan")))
            loss = rec.get("total_loss", loss)
            ap = rec.get("bbox/AP", ap)
    med = statistics.median(times) if times else float("nan")
    return [os.path.basename(run_dir), f"{med:.4f}", f"{statistics.median(data_times):.4f}" if data_times else "-",
            f"{first:.3f}" if first is not None else "-", f"{loss:.3f}" if loss is not None else "-",
            f"{ap:.2f}" if ap is not None else "-"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--skip", type=int, default=40)
    args = parser.parse_args(argv)
    print("| run | s/iteration | data s/iteration | first logged time | last total loss | AP |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        print("| " + " | ".join(summarize(run, args.skip)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
