"""The total loss of each of the first iterations of a training run, saved or compared with a saved trace.

A change that must not alter the numbers (batched criterion, one decoder pass for the KS teachers, a
different optimizer implementation) is checked by tracing the main job before the change and comparing after:

    python bench/loss_trace.py --save bench/reference/main_job_loss_trace.json          # before
    python bench/loss_trace.py --compare bench/reference/main_job_loss_trace.json       # after: max rel. diff

It runs ``tools/train_net.py``'s own training path (same config loading, seeding, model, optimizer, data loader,
trainer and hooks) for ``--iters`` iterations in a temporary output directory, without evaluation, and reads the
per-iteration ``total_loss`` history from the trainer's event storage (the raw value of every iteration, not the
windowed median the log prints). Extra ``key=value`` arguments are config overrides, as for ``train_net.py``.
"""

import argparse
import json
import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

MAIN_JOB = "projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py"


def trace(config_file: str, iters: int, opts) -> list:
    import train_net  # tools/train_net.py

    recorded = {}

    class RecordingTrainer(train_net.Trainer):
        def after_train(self):
            super().after_train()
            recorded["losses"] = [(int(it), float(v)) for v, it in self.storage.history("total_loss").values()]

    train_net.Trainer = RecordingTrainer
    with tempfile.TemporaryDirectory() as out:
        args = train_net.default_argument_parser().parse_args(
            ["--config-file", config_file, f"train.max_iter={iters}", f"train.output_dir={out}",
             "train.eval_period=1000000", "train.checkpointer.period=1000000", *opts]
        )
        train_net.main(args)
    return [v for _, v in sorted(recorded["losses"])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=MAIN_JOB)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--save", help="write the trace to this JSON file")
    parser.add_argument("--compare", help="compare with the trace in this JSON file")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative difference for --compare")
    parser.add_argument("opts", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    losses = trace(args.config_file, args.iters, args.opts)
    print("iteration  total_loss")
    for i, v in enumerate(losses):
        print(f"{i:9d}  {v:.8f}")
    if args.save:
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        with open(args.save, "w") as f:
            json.dump({"config_file": args.config_file, "opts": args.opts, "total_loss": losses}, f, indent=1)
        print(f"saved {len(losses)} values to {args.save}")
    if args.compare:
        with open(args.compare) as f:
            ref = json.load(f)["total_loss"]
        n = min(len(ref), len(losses))
        rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[:n], ref[:n])]
        print("iteration  reference  now  rel. diff")
        for i in range(n):
            print(f"{i:9d}  {ref[i]:.8f}  {losses[i]:.8f}  {rel[i]:.2e}")
        worst = max(rel) if rel else 0.0
        ok = worst <= args.tolerance and len(losses) >= len(ref)
        print(f"max relative difference {worst:.3e} over {n} iterations (tolerance {args.tolerance:g}): "
              f"{'OK' if ok else 'DIFFERENT'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
