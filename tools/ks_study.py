#!/usr/bin/env python
"""Does knowledge sharing help? Train a KS-DETR variant and its baseline with identical settings over several
seeds, then tabulate and plot their AP with a paired confidence interval.

    python tools/ks_study.py \
        --ks-config projects/ks_detr/study/configs/ks_dab_detr_shapes_hard.py \
        --baseline-config projects/ks_detr/study/configs/dab_detr_shapes_hard.py \
        --seeds 0 1 2 --max-iter 1000 --eval-period 250 --output-dir output/ks_study/dab_hard \
        --report-dir projects/ks_detr/study/results/dab_hard --jobs 2 --threads 1 --eval-teachers \
        [key=value ...]                       # overrides applied to both arms

    # compute-matched: give the baseline the KS/baseline wall-time ratio times the iterations (bench/study_ratio.py
    # measures it: 1.37 for the DAB study pair on a CPU)
    python tools/ks_study.py ... --max-iter 1500 --baseline-max-iter 2060 ...

    # AP of a trained KS model's teacher branches, which see the ground truth (as KS-DETR's teacher-attn-accu.png)
    python tools/ks_study.py teachers --config-file <ks config> --checkpoint <model_final.pth> [--output t.json]

Study (only public entry points): every (arm, seed) run is ``tools/train_net.py`` in a subprocess (``--jobs`` at a
time, each limited to ``--threads`` CPU threads through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), with
``train.seed=<seed>`` and ``dataloader.train.seed=<seed>``, so both arms of a seed see the same images in the same
order with the same augmentation (the train loader seeds each sample from the sampler seed and its position). Model
initialisation cannot be identical: the KS model has extra (teacher) parameters that consume random numbers.
Every run writes into ``<output-dir>/runs/<arm>/seed<k>/``; the tool then reads the runs' ``metrics.json``
(evaluation lines ``bbox/AP``, ``bbox/AP50``, ...).

Resumable: a run whose ``model_final.pth`` and final evaluation exist is skipped; an interrupted one continues
from its last checkpoint (``train_net.py --resume``). ``<output-dir>/study.json`` pins the settings (configs,
schedule, overrides): rerunning with other settings into the same folder is refused.

Report (``--report-dir``, default ``<output-dir>``): ``report.md`` (settings, per-run table, per-arm mean and
standard deviation, paired difference KS - baseline per seed with a two-sided Student-t confidence interval and
p-value, teachers' AP), ``runs.csv``, ``summary.csv``, ``curves.csv``, ``teachers.csv`` and ``curves.png`` (AP and
AP50 vs iteration: each run a thin line, each arm's mean over seeds a thick line). AP values are COCO AP x 100.

Teachers (``--eval-teachers`` or the ``teachers`` command): the model is put in eval mode (no dropout, BN
statistics frozen), the test split is loaded with its annotations (``DetrDatasetMapper(keep_annotations_in_test=
True)``), and one forward pass per batch is made with the ground truth, so that the detector builds the teachers'
GT-enhanced tokens exactly as in training; the student's last decoder layer and each teacher's final layer are
then evaluated with the config's evaluator. The GT pass's student predictions must equal the ordinary GT-free
evaluation (the student never depends on a teacher); both are reported as a check.
"""
import argparse
import contextlib
import copy
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
TRAIN_NET = os.path.join(_REPO_ROOT, "tools", "train_net.py")

#: evaluation metrics tabulated (keys ``bbox/<name>`` in metrics.json, COCO AP x 100)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ARMS = ("ks", "baseline")


class StudyError(Exception):
    """A user error: reported in one line, exit code 2."""


# ------------------------------------------------------------------------------------------------- statistics
def summarize(values: Sequence[float]) -> Dict[str, float]:
    """``{"n", "mean", "sd"}`` of the finite values (sample standard deviation, ddof=1; NaN when n < 2)."""
    import numpy as np

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    return {
        "n": n,
        "mean": float(x.mean()) if n else float("nan"),
        "sd": float(x.std(ddof=1)) if n >= 2 else float("nan"),
    }


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
    """Paired difference ``a[i] - b[i]`` (e.g. KS minus baseline of the same seed).

    Pairs with a non-finite member are dropped. Returns ``n``, ``mean``, ``sd`` (ddof=1), ``ci_low``/``ci_high``
    (the two-sided ``confidence`` interval mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)), ``t`` and the two-sided
    ``p`` of the paired t-test of "mean difference = 0". Interval, t and p are NaN when n < 2.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} values; pairs need equal lengths")
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    s = summarize(d)
    out = dict(s, ci_low=float("nan"), ci_high=float("nan"), t=float("nan"), p=float("nan"), confidence=confidence)
    n = s["n"]
    if n >= 2:
        se = s["sd"] / math.sqrt(n)
        half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
        out.update(ci_low=s["mean"] - half, ci_high=s["mean"] + half)
        if se > 0:
            t = s["mean"] / se
            out.update(t=t, p=float(2.0 * stats.t.sf(abs(t), n - 1)))
    return out


# ------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    arm: str  # "ks" or "baseline"
    seed: int
    config: str
    run_dir: str
    max_iter: int

    @property
    def name(self) -> str:
        return f"{self.arm} seed {self.seed}"


def _load_metrics_fn():
    """``load_metrics`` of tools/plot_metrics.py (``{key: {iteration: value}}``, later lines win)."""
    path = os.path.join(_REPO_ROOT, "tools", "plot_metrics.py")
    spec = importlib.util.spec_from_file_location("_detrex_plot_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_metrics


def read_eval_curves(run_dir: str) -> Dict[str, Dict[int, float]]:
    """``{metric: {iteration: value}}`` of the run's evaluation lines (metrics ``bbox/*`` without the prefix);
    ``{}`` when the run has no metrics.json yet."""
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
        return {}
    series = _load_metrics_fn()(run_dir)
    return {k.split("/", 1)[1]: v for k, v in series.items() if k.startswith("bbox/")}


def final_metrics(curves: Dict[str, Dict[int, float]]) -> Tuple[Optional[int], Dict[str, float]]:
    """(iteration, {metric: value}) of the last evaluation (None, {} when there is none)."""
    if not curves.get("AP"):
        return None, {}
    it = max(curves["AP"])
    return it, {m: curves[m].get(it, float("nan")) if m in curves else float("nan") for m in METRICS}


def reached_end(iteration: Optional[int], max_iter: int) -> bool:
    """Whether an evaluation logged at ``iteration`` (None: no evaluation) is the run's final one."""
    return iteration is not None and iteration >= max_iter - 1


def run_is_finished(run_dir: str, max_iter: int) -> bool:
    """``model_final.pth`` exists and an evaluation was logged at (or after) the last iteration."""
    if not os.path.isfile(os.path.join(run_dir, "model_final.pth")):
        return False
    it, _ = final_metrics(read_eval_curves(run_dir))
    return reached_end(it, max_iter)


def study_overrides(run: Run, max_iter: int, eval_period: int) -> List[str]:
    """The overrides that make the two arms' runs identical in everything but the model (applied last)."""
    return [
        f"train.output_dir={run.run_dir}",
        f"++dataloader.evaluator.output_dir={run.run_dir}",
        f"train.seed={run.seed}",
        f"++dataloader.train.seed={run.seed}",
        f"train.max_iter={max_iter}",
        f"train.eval_period={eval_period}",
        f"train.checkpointer.period={eval_period}",
        "train.checkpointer.max_to_keep=1",
    ]


def train_command(run: Run, max_iter: int, eval_period: int, opts: Sequence[str], num_gpus: int = 1) -> List[str]:
    cmd = [sys.executable, TRAIN_NET, "--config-file", run.config]
    if num_gpus != 1:
        cmd += ["--num-gpus", str(num_gpus)]
    if os.path.isfile(os.path.join(run.run_dir, "last_checkpoint")):
        cmd.append("--resume")
    return cmd + list(opts) + study_overrides(run, max_iter, eval_period)


def teachers_command(run: Run, threads: int, opts: Sequence[str]) -> List[str]:
    return [sys.executable, os.path.abspath(__file__), "teachers", "--config-file", run.config,
            "--checkpoint", os.path.join(run.run_dir, "model_final.pth"),
            "--output", os.path.join(run.run_dir, "teachers.json"), "--threads", str(threads),
            *opts]


def _subprocess_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _call(cmd: List[str], log_file: str, threads: int) -> Tuple[int, float]:
    """Run ``cmd`` with its output appended to ``log_file``; returns (exit code, seconds)."""
    start = time.time()
    with open(log_file, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env(threads), cwd=_REPO_ROOT)
    return proc.returncode, time.time() - start


def _read_json(path: str, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path) as f:
            return " | ".join(line.strip() for line in f.readlines()[-n:])
    except OSError:
        return ""


def execute_run(run: Run, args, opts: Sequence[str]) -> Optional[str]:
    """Train ``run`` unless finished, then (KS arm, ``--eval-teachers``) evaluate its teachers unless done.
    Returns an error line, or None."""
    os.makedirs(run.run_dir, exist_ok=True)
    log_file = os.path.join(run.run_dir, "study_stdout.log")
    info_file = os.path.join(run.run_dir, "study_run.json")
    info = _read_json(info_file, {"wall_s": 0.0})
    if run_is_finished(run.run_dir, run.max_iter):
        print(f"[ks_study] {run.name}: already finished, skipped", flush=True)
    else:
        cmd = train_command(run, run.max_iter, args.eval_period, opts, args.num_gpus)
        print(f"[ks_study] {run.name}: training ({'resume' if '--resume' in cmd else 'start'}) -> {run.run_dir}",
              flush=True)
        code, seconds = _call(cmd, log_file, args.threads)
        info["wall_s"] = info.get("wall_s", 0.0) + seconds
        info["command"] = cmd
        with open(info_file, "w") as f:
            json.dump(info, f, indent=1)
        if code != 0 or not run_is_finished(run.run_dir, run.max_iter):
            return f"{run.name}: train_net.py exited with {code} ({_tail(log_file)}); log: {log_file}"
        _, final = final_metrics(read_eval_curves(run.run_dir))
        print(f"[ks_study] {run.name}: done in {seconds:.0f} s, AP {final.get('AP', float('nan')):.2f}", flush=True)
    if run.arm == "ks" and args.eval_teachers and not os.path.isfile(os.path.join(run.run_dir, "teachers.json")):
        print(f"[ks_study] {run.name}: evaluating the teachers with ground truth", flush=True)
        code, seconds = _call(teachers_command(run, args.threads, opts), log_file, args.threads)
        if code != 0:
            return f"{run.name}: teacher evaluation exited with {code} ({_tail(log_file)}); log: {log_file}"
    return None


def _check_settings(output_dir: str, settings: Dict) -> None:
    """Write ``study.json`` the first time; afterwards refuse other settings (other seeds are fine)."""
    path = os.path.join(output_dir, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in settings if k != "seeds" and old.get(k) != settings[k]]
        if diff:
            raise StudyError(
                f"{path} records other settings ({', '.join(f'{k}: {old.get(k)!r} -> {settings[k]!r}' for k in diff)});"
                " use another --output-dir (or delete that folder) to run a different study.")
        settings = dict(settings, seeds=sorted(set(old.get("seeds", [])) | set(settings["seeds"])))
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)


def _validate_config(path: str, opts: Sequence[str], arm: str) -> None:
    """Load the config with the overrides (as train_net.py will), to fail early with one clear line."""
    from detrex.config import LazyConfig, try_get_key

    if not os.path.isfile(path):
        raise StudyError(f"--{arm}-config {path!r} does not exist")
    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
    except Exception as e:  # noqa: BLE001 - reported in one line
        raise StudyError(f"--{arm}-config {path}: {type(e).__name__}: {' '.join(str(e).split())}") from e
    for key in ("dataloader.train", "dataloader.test", "dataloader.evaluator"):
        if try_get_key(cfg, key) is None:
            raise StudyError(f"--{arm}-config {path} has no {key}: the study needs training data and an evaluator")


# ------------------------------------------------------------------------------------------------- teachers
@contextlib.contextmanager
def _ground_truth_forward(model):
    """Make only the detector itself report ``training=True`` (its submodules stay in eval mode: no dropout,
    frozen BN) so that its ``transformer_inputs`` builds the teachers' GT-enhanced tokens from the targets."""
    was = model.training
    model.training = True
    try:
        yield
    finally:
        model.training = was


def teacher_names(model, num_teachers: int) -> List[str]:
    """Display names of the teacher prediction sets, in the transformer's order."""
    mode = getattr(getattr(getattr(model, "transformer", None), "encoder", None), "ks_mode", "triple")
    if num_teachers == 2 and mode == "triple":
        return ["teacher1 (share V)", "teacher2 (share A)"]
    if num_teachers == 1 and mode in ("dual_share_a", "dual_share_v"):
        return [f"teacher (share {mode[-1].upper()})"]
    return [f"teacher{i + 1}" for i in range(num_teachers)]


def evaluate_teachers(cfg, checkpoint: str) -> Dict[str, Dict[str, float]]:
    """Evaluate a trained KS model's student and teacher branches on ``cfg.dataloader.test`` with ground truth.

    Returns ``{"student (no GT)": bbox metrics, "student (GT pass)": ..., "teacher1 (share V)": ...,
    "teacher2 (share A)": ...}`` (COCO AP x 100, the evaluator's ``bbox`` results). The teachers' predictions
    are the last prediction sets of the training-mode output (``pred_logits``/``pred_boxes`` and the last
    ``aux_outputs``); the student's is the one of its last decoder layer.
    """
    import torch

    from detrex.checkpoint import DetectionCheckpointer
    from detrex.config import instantiate, try_get_key

    cfg = copy.deepcopy(cfg)
    model = instantiate(cfg.model)
    if not hasattr(model, "ksgt"):
        raise StudyError(f"the model {type(model).__name__} has no KS teachers (no 'ksgt' module)")
    device = str(try_get_key(cfg, "train.device", default="cpu"))
    model.to(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")
    DetectionCheckpointer(model, match="exact").load(checkpoint, check_match=True)
    model.eval()
    cfg.dataloader.test.mapper.keep_annotations_in_test = True
    cfg.dataloader.evaluator.output_dir = None  # keep the run's coco_instances_results.json
    loader = instantiate(cfg.dataloader.test)
    num_student_layers = len(model.transformer.decoder.layers)

    evaluators = {}

    def evaluator(name):
        if name not in evaluators:
            evaluators[name] = instantiate(cfg.dataloader.evaluator)
            evaluators[name].reset()
        return evaluators[name]

    with torch.no_grad():
        for inputs in loader:
            evaluator("student (no GT)").process(inputs, model(inputs))
            images = model.preprocess_image(inputs)
            targets = model.prepare_targets(inputs)
            with _ground_truth_forward(model):
                out = model.forward_raw(images, targets)
            sets = list(out.get("aux_outputs", [])) + [{"pred_logits": out["pred_logits"],
                                                        "pred_boxes": out["pred_boxes"]}]
            num_teachers = len(sets) - num_student_layers
            if num_teachers < 1:
                raise StudyError(f"the GT forward pass gave {len(sets)} prediction sets for {num_student_layers} "
                                 "decoder layers: no teacher outputs (is this a KS model with aux_loss=True?)")
            named = {"student (GT pass)": sets[num_student_layers - 1]}
            named.update(zip(teacher_names(model, num_teachers), sets[num_student_layers:]))
            for name, s in named.items():
                results = model.inference(s["pred_logits"], s["pred_boxes"], images.image_sizes)
                evaluator(name).process(inputs, model.postprocess(results, inputs, images.image_sizes))
    return {name: dict(ev.evaluate().get("bbox", {})) for name, ev in evaluators.items()}


def teachers_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="ks_study.py teachers", description="AP of a KS model's teacher branches "
                                "evaluated with ground truth (and of its student, with and without GT).")
    p.add_argument("--config-file", required=True)
    p.add_argument("--checkpoint", required=True, help="trained weights (e.g. <run>/model_final.pth)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = p.parse_args(argv)
    import torch

    from detrex.config import LazyConfig
    from detrex.utils.logger import setup_logger

    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(name="detrex")
    if not os.path.isfile(args.checkpoint):
        raise StudyError(f"--checkpoint {args.checkpoint!r} does not exist")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    results = evaluate_teachers(cfg, args.checkpoint)
    for name, res in results.items():
        print(f"{name:>22}: " + ", ".join(f"{m} {res.get(m, float('nan')):.2f}" for m in METRICS))
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"checkpoint": os.path.abspath(args.checkpoint), "results": results}, f, indent=1)
        os.replace(tmp, args.output)
    return 0


# ------------------------------------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(s: Dict[str, float]) -> str:
    return f"{_fmt(s['mean'])} ± {_fmt(s['sd'])}" if s["n"] else "–"


def collect(runs: Sequence[Run]) -> List[Dict]:
    """One record per run: arm, seed, final iteration and metrics, eval curves, wall time, teachers."""
    records = []
    for run in runs:
        curves = read_eval_curves(run.run_dir)
        it, final = final_metrics(curves)
        teachers = _read_json(os.path.join(run.run_dir, "teachers.json"))
        records.append({
            "arm": run.arm, "seed": run.seed, "run_dir": run.run_dir, "iteration": it, "final": final,
            "max_iter": run.max_iter,
            "curves": curves,
            "wall_s": _read_json(os.path.join(run.run_dir, "study_run.json"), {}).get("wall_s"),
            "teachers": teachers["results"] if teachers else None,
        })
    return records


def _finished(records):
    return [r for r in records if reached_end(r["iteration"], r["max_iter"])]


def arm_iterations(settings: Dict) -> Dict[str, int]:
    """Iterations per arm: ``max_iter`` for both, unless ``baseline_max_iter`` gives the baseline its own
    (a compute-matched comparison: a KS iteration costs more than a baseline one)."""
    return {"ks": settings["max_iter"], "baseline": settings.get("baseline_max_iter", settings["max_iter"])}


def summary_rows(records: Sequence[Dict], seeds: Sequence[int]) -> List[Dict]:
    """Per metric: each arm's mean/sd and the paired KS - baseline difference over seeds finished in both arms."""
    by = {(r["arm"], r["seed"]): r["final"] for r in records}
    paired = [s for s in seeds if ("ks", s) in by and ("baseline", s) in by]
    rows = []
    for m in METRICS:
        ks = [by[("ks", s)][m] for s in seeds if ("ks", s) in by]
        base = [by[("baseline", s)][m] for s in seeds if ("baseline", s) in by]
        d = paired_difference([by[("ks", s)][m] for s in paired], [by[("baseline", s)][m] for s in paired])
        rows.append({"metric": m, "ks": summarize(ks), "baseline": summarize(base), "diff": d})
    return rows


def plot_curves(records: Sequence[Dict], names: Dict[str, str], output: str, metrics=("AP", "AP50")) -> None:
    """AP-vs-iteration: thin line per run, thick line per arm (mean over its runs at common iterations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = {"baseline": "tab:blue", "ks": "tab:red"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for arm in ("baseline", "ks"):
            runs = [r["curves"].get(m, {}) for r in records if r["arm"] == arm and r["curves"].get(m)]
            for c in runs:
                its = sorted(c)
                ax.plot(its, [c[i] for i in its], color=colors[arm], lw=0.8, alpha=0.45)
            if runs:
                common = sorted(set.intersection(*[set(c) for c in runs]))
                mean = [float(np.nanmean([c[i] for c in runs])) for i in common]
                ax.plot(common, mean, color=colors[arm], lw=2.6, marker="o", ms=3,
                        label=f"{names[arm]} (mean of {len(runs)})")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"bbox {m}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{names['ks']} vs {names['baseline']}: thin = one seed, thick = mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def write_report(records: Sequence[Dict], settings: Dict, names: Dict[str, str], report_dir: str) -> str:
    """Write report.md, runs.csv, summary.csv, curves.csv, teachers.csv and curves.png; returns report.md's path."""
    os.makedirs(report_dir, exist_ok=True)
    done = _finished(records)
    iters = arm_iterations(settings)
    seeds = settings["seeds"]
    rows = summary_rows(done, seeds)
    label = {"ks": names["ks"], "baseline": names["baseline"]}

    with open(os.path.join(report_dir, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "iteration", *METRICS, "wall_s"])
        for r in sorted(done, key=lambda r: (r["arm"], r["seed"])):
            w.writerow([label[r["arm"]], r["seed"], r["iteration"], *[f"{r['final'][m]:.4f}" for m in METRICS],
                        f"{r['wall_s']:.0f}" if r["wall_s"] else ""])
    with open(os.path.join(report_dir, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "baseline_mean", "baseline_sd", "ks_mean", "ks_sd", "diff_mean", "diff_sd",
                    "ci95_low", "ci95_high", "t", "p", "n_pairs"])
        for row in rows:
            d = row["diff"]
            w.writerow([row["metric"], row["baseline"]["mean"], row["baseline"]["sd"], row["ks"]["mean"],
                        row["ks"]["sd"], d["mean"], d["sd"], d["ci_low"], d["ci_high"], d["t"], d["p"], d["n"]])
    with open(os.path.join(report_dir, "curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "iteration", *METRICS])
        for r in sorted(records, key=lambda r: (r["arm"], r["seed"])):
            for it in sorted(r["curves"].get("AP", {})):
                w.writerow([label[r["arm"]], r["seed"], it,
                            *[f"{r['curves'].get(m, {}).get(it, float('nan')):.4f}" for m in METRICS]])
    plot_curves(done, label, os.path.join(report_dir, "curves.png"))  # finished runs only: comparable means

    teacher_runs = [r for r in done if r["arm"] == "ks" and r["teachers"]]
    branch_names = list(teacher_runs[0]["teachers"]) if teacher_runs else []
    if teacher_runs:
        with open(os.path.join(report_dir, "teachers.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seed", "branch", *METRICS])
            for r in teacher_runs:
                for b, res in r["teachers"].items():
                    w.writerow([r["seed"], b, *[f"{res.get(m, float('nan')):.4f}" for m in METRICS]])

    L = []
    L.append(f"# {names['ks']} vs {names['baseline']}\n")
    L.append(f"- KS config: `{settings['ks_config']}`")
    L.append(f"- baseline config: `{settings['baseline_config']}`")
    schedule = (f"{iters['ks']} iterations" if iters["ks"] == iters["baseline"] else
                f"{iters['ks']} iterations for {names['ks']}, {iters['baseline']} for {names['baseline']} "
                "(each arm's LR schedule spans its own iterations)")
    L.append(f"- seeds: {', '.join(str(s) for s in seeds)}; {schedule}, evaluation every "
             f"{settings['eval_period']}; overrides for both arms: "
             f"{' '.join(f'`{o}`' for o in settings['opts']) if settings['opts'] else 'none'}")
    L.append(f"- finished runs: {len(done)} of {2 * len(seeds)}; AP = COCO AP x 100 on the config's test split "
             "at the last iteration\n")
    L.append("## Per run\n")
    L.append("| arm | seed | " + " | ".join(METRICS) + " | wall time (s) |")
    L.append("|---|---|" + "---|" * len(METRICS) + "---|")
    for r in sorted(done, key=lambda r: (r["arm"] != "baseline", r["seed"])):
        L.append(f"| {label[r['arm']]} | {r['seed']} | " + " | ".join(_fmt(r["final"][m]) for m in METRICS)
                 + f" | {_fmt(r['wall_s'], 0) if r['wall_s'] else '–'} |")
    L.append("\n## Per arm: mean ± standard deviation over seeds\n")
    L.append("| arm | n | " + " | ".join(METRICS) + " |")
    L.append("|---|---|" + "---|" * len(METRICS))
    for arm in ("baseline", "ks"):
        L.append(f"| {label[arm]} | {rows[0][arm]['n']} | " + " | ".join(_pm(row[arm]) for row in rows) + " |")
    n_pairs = rows[0]["diff"]["n"]
    L.append(f"\n## Paired difference {names['ks']} − {names['baseline']} (same seed), 95% t interval\n")
    L.append("| metric | mean Δ | sd Δ | 95% CI | t | p (two-sided) | pairs |")
    L.append("|---|---|---|---|---|---|---|")
    for row in rows:
        d = row["diff"]
        L.append(f"| {row['metric']} | {_fmt(d['mean'])} | {_fmt(d['sd'])} | [{_fmt(d['ci_low'])}, "
                 f"{_fmt(d['ci_high'])}] | {_fmt(d['t'])} | {_fmt(d['p'], 3)} | {d['n']} |")
    if n_pairs < 2:
        L.append("\n(fewer than 2 finished pairs: no interval)")
    if teacher_runs:
        L.append("\n## Teachers' AP (evaluated with ground truth; student rows as a check)\n")
        L.append("| branch | n | " + " | ".join(METRICS) + " |")
        L.append("|---|---|" + "---|" * len(METRICS))
        value = {b: {m: [r["teachers"].get(b, {}).get(m, float("nan")) for r in teacher_runs] for m in METRICS}
                 for b in branch_names}
        for b in branch_names:
            stats_b = [summarize(value[b][m]) for m in METRICS]
            L.append(f"| {b} | {stats_b[0]['n']} | " + " | ".join(_pm(s) for s in stats_b) + " |")
        student = "student (no GT)"
        teachers = [b for b in branch_names if b.startswith("teacher")]
        if student in value and teachers:
            L.append("\nTeacher − student AP on the same model (per seed), 95% t interval:\n")
            L.append("| branch | metric | mean Δ | 95% CI | pairs |")
            L.append("|---|---|---|---|---|")
            for b in teachers:
                for m in ("AP", "AP50"):
                    d = paired_difference(value[b][m], value[student][m])
                    L.append(f"| {b} | {m} | {_fmt(d['mean'])} | [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}] "
                             f"| {d['n']} |")
    L.append("\n![AP vs iteration](curves.png)\n")
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path


# ------------------------------------------------------------------------------------------------- main
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks-config", required=True, help="LazyConfig of the KS variant")
    p.add_argument("--baseline-config", required=True, help="LazyConfig of its baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-iter", type=int, required=True, help="training iterations of each run")
    p.add_argument("--baseline-max-iter", type=int, default=None,
                   help="the baseline's iterations, if not --max-iter (e.g. to match the KS arm's compute)")
    p.add_argument("--eval-period", type=int, required=True)
    p.add_argument("--output-dir", required=True, help="runs go to <output-dir>/runs/<arm>/seed<k>/")
    p.add_argument("--report-dir", default=None, help="tables and plot (default: --output-dir)")
    p.add_argument("--names", nargs=2, default=None, metavar=("KS", "BASELINE"),
                   help="display names of the two arms (default: the config file names)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (OMP_NUM_THREADS)")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py (processes per run)")
    p.add_argument("--eval-teachers", action="store_true",
                   help="also evaluate every KS run's teacher branches with ground truth")
    p.add_argument("--report-only", action="store_true", help="train nothing; tabulate the finished runs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides for both arms")
    return p


def study_main(argv: Sequence[str]) -> int:
    args = get_parser().parse_args(argv)
    if args.baseline_max_iter is None:
        args.baseline_max_iter = args.max_iter
    if min(args.max_iter, args.baseline_max_iter, args.eval_period, args.jobs, args.threads) < 1:
        raise StudyError("--max-iter, --baseline-max-iter, --eval-period, --jobs and --threads must be positive")
    if len(set(args.seeds)) != len(args.seeds):
        raise StudyError(f"--seeds has duplicates: {args.seeds}")
    opts = [o for o in args.opts if o != "--"]
    ks_config, base_config = os.path.abspath(args.ks_config), os.path.abspath(args.baseline_config)
    output_dir = os.path.abspath(args.output_dir)
    names = {"ks": args.names[0] if args.names else os.path.splitext(os.path.basename(ks_config))[0],
             "baseline": args.names[1] if args.names else os.path.splitext(os.path.basename(base_config))[0]}
    settings = {"ks_config": os.path.relpath(ks_config, _REPO_ROOT),
                "baseline_config": os.path.relpath(base_config, _REPO_ROOT),
                "max_iter": args.max_iter, "eval_period": args.eval_period, "opts": opts, "seeds": list(args.seeds)}
    if args.baseline_max_iter != args.max_iter:  # (absent otherwise, so that earlier studies' study.json still match)
        settings["baseline_max_iter"] = args.baseline_max_iter
    iters = arm_iterations(settings)
    runs = []
    for seed in args.seeds:  # interleaved, so that with --jobs 2 both arms of a seed train side by side
        for arm, config in (("ks", ks_config), ("baseline", base_config)):
            runs.append(Run(arm, seed, config, os.path.join(output_dir, "runs", arm, f"seed{seed}"), iters[arm]))

    errors = []
    if not args.report_only:
        _validate_config(ks_config, opts, "ks")
        _validate_config(base_config, opts, "baseline")
        _check_settings(output_dir, settings)
        start = time.time()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            errors = [e for e in pool.map(lambda r: execute_run(r, args, opts), runs) if e]
        print(f"[ks_study] {len(runs)} runs handled in {time.time() - start:.0f} s", flush=True)
    report = write_report(collect(runs), settings, names, os.path.abspath(args.report_dir or output_dir))
    print(f"[ks_study] report: {report}", flush=True)
    for e in errors:
        print(f"ks_study.py: error: {e}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "teachers":
            return teachers_main(argv[1:])
        return study_main(argv)
    except StudyError as e:
        print(f"ks_study.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
