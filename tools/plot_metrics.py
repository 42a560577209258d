#!/usr/bin/env python
"""Plot training curves from one or more runs' ``metrics.json`` (the JSONWriter's one-object-per-line file).

    python tools/plot_metrics.py output/ks_run output/baseline_run --output curves.png [--smooth 5]

One PNG with panels: total loss, the final-layer loss terms (``loss_class``, ``loss_bbox``, ``loss_giou`` ...,
i.e. loss keys without a ``_<digit>`` layer suffix), the learning rate (log scale) and every evaluation metric
found (``bbox/AP``, and ``bbox/AP50`` when present), all over iterations. Several runs are overlaid, one
colour per run, labelled by their directory name (the shortest distinguishing path suffix). A resumed run's
repeated iterations keep their latest value. ``--keys`` plots chosen keys instead.
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


class MetricsError(Exception):
    pass


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="OUTPUT_DIR", help="run folders (or metrics.json files)")
    p.add_argument("--output", default=None, help="PNG to write (default: <first dir>/metrics.png)")
    p.add_argument("--keys", nargs="+", default=None, help="plot these keys (one panel each) instead of the defaults")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window over the logged points (losses only)")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per run")
    return p


def load_metrics(path: str) -> Dict[str, Dict[int, float]]:
    """``{key: {iteration: value}}`` from a metrics.json (or its folder). Later lines win; bad lines are skipped
    (a line cut short by a crash), but a file with no valid line is an error."""
    file = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise MetricsError(f"no metrics.json at {file!r}: pass a training output folder (train.output_dir)")
    series: Dict[str, Dict[int, float]] = {}
    n_ok = 0
    with open(file) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                it = int(rec["iteration"])
            except (ValueError, KeyError, TypeError):
                continue
            n_ok += 1
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    series.setdefault(k, {})[it] = float(v)
    if n_ok == 0:
        raise MetricsError(f"{file!r} holds no metrics line (one JSON object with 'iteration' per line)")
    return series


def run_labels(dirs: Sequence[str]) -> List[str]:
    """Shortest path suffixes that tell the runs apart."""
    parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in dirs]
    parts = [p[:-1] if p[-1] == "metrics.json" else p for p in parts]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return ["/".join(p) for p in parts]


def default_keys(runs: Sequence[Dict[str, Dict[int, float]]]) -> List[str]:
    keys = set().union(*[r.keys() for r in runs])
    losses = sorted(k for k in keys if k.startswith("loss_") and not re.search(r"_\d+$", k))
    evals = [k for k in ("bbox/AP", "bbox/AP50") if k in keys]
    evals += sorted(k for k in keys if "/" in k and k.endswith("/AP") and k not in evals)[:2]
    out = (["total_loss"] if "total_loss" in keys else []) + losses + (["lr"] if "lr" in keys else []) + evals
    if not out:
        raise MetricsError("no loss, lr or AP keys in the metrics; use --keys")
    return out


def _smooth(ys: List[float], window: int) -> List[float]:
    if window <= 1:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot(runs: Sequence[Dict[str, Dict[int, float]]], labels: Sequence[str], keys: Sequence[str], output: str,
         smooth: int = 1) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            if key not in run:
                continue
            its = sorted(run[key])
            ys = [run[key][t] for t in its]
            is_eval = "/" in key
            if key.startswith("loss") or key == "total_loss":
                ys = _smooth(ys, smooth)
            ax.plot(its, ys, color=colors[i % len(colors)], label=label, marker="o" if is_eval or len(its) < 30 else None,
                    markersize=4, linewidth=1.5)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        if key == "lr":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{key}' in any run", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        runs = [load_metrics(d) for d in args.dirs]
        labels = args.labels or run_labels(args.dirs)
        if len(labels) != len(runs):
            raise MetricsError(f"--labels gives {len(labels)} labels for {len(runs)} runs")
        keys = args.keys or default_keys(runs)
        missing = [k for k in keys if not any(k in r for r in runs)]
        if args.keys and missing:
            raise MetricsError(f"keys {missing} are in no run; available: {sorted(set().union(*[r.keys() for r in runs]))}")
        first = args.dirs[0] if os.path.isdir(args.dirs[0]) else os.path.dirname(args.dirs[0])
        out = args.output or os.path.join(first, "metrics.png")
        plot(runs, labels, keys, out, args.smooth)
        print(f"plotted {', '.join(keys)} for {len(runs)} run(s) ({', '.join(labels)}) -> {out}")
    except MetricsError as e:
        print(f"plot_metrics.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
