"""Operators and host syncs per training iteration, for every detector pair (a CPU proxy for GPU launches).

On a GPU these models are launch-bound: the step time follows the number of operators dispatched and the host
syncs, not the arithmetic. Both are properties of the code and are counted here on the CPU with
`detrex.utils.op_count.OpCounter` (a ``TorchDispatchMode``; see its docstring for what counts as a sync).

What runs: the R-50 model config of each detector (random weights), the project's `Trainer` (the path
``tools/train_net.py`` takes: forward, losses, backward, gradient clipping at 0.1, the AdamW of
``configs/common/optim.py``), batch 2 at 256x256 with 7 random ground-truth boxes per image. Two warm-up
iterations (the optimizer state is created in the first), then one counted iteration that is not a log
iteration and one that is (``train.log_period`` = 4 here).

Columns: ``ops/iter`` = aten operators of forward + losses + backward, views included (``non-view``: without
them; a view launches no kernel on a GPU but still costs host time); ``forward`` = the model's forward without
the criterion; ``criterion`` = the criterion's forward (matching and losses); ``optimizer+trainer`` = clipping,
the AdamW step and the trainer's own operators (non-view; not in ops/iter); ``syncs`` = host syncs in a normal iteration / in a log iteration;
``KS/base`` = ops/iter of the KS model over its baseline's.

    python bench/op_count.py                    # all pairs
    python bench/op_count.py --models DAB-DETR,KS-DAB-DETR --top 20   # + the most frequent operators
    python bench/op_count.py --sync-sites       # where each sync comes from
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

from detrex.utils.op_count import OpCounter  # noqa: E402

# name -> (baseline name or None, model config relative to the repo root)
MODELS = {
    "DAB-DETR": (None, "projects/dab_detr/configs/models/dab_detr_r50.py"),
    "KS-DAB-DETR": ("DAB-DETR", "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py"),
    "Conditional-DETR": (None, "projects/conditional_detr/configs/models/conditional_detr_r50.py"),
    "KS-Conditional-DETR": (
        "Conditional-DETR",
        "projects/ks_detr/configs/ks_conditional_detr/models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py",
    ),
    "DN-DETR": (None, "projects/dn_detr/configs/models/dn_detr_r50.py"),
    "KS-DN-DETR": ("DN-DETR", "projects/ks_detr/configs/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py"),
    "Deformable-DETR": (None, "projects/deformable_detr/configs/models/deformable_detr_r50.py"),
    "KS-Deformable-DETR": (
        "Deformable-DETR",
        "projects/ks_detr/configs/ks_deformable_detr/models/ks_deformable_detr_r50_smlp_qkv_triple_attn.py",
    ),
    "DN-Deformable-DETR": (None, "projects/dn_deformable_detr/configs/models/dn_deformable_detr_r50.py"),
    "KS-DN-Deformable-DETR": (
        "DN-Deformable-DETR",
        "projects/ks_detr/configs/ks_dn_deformable_detr/models/ks_dn_deformable_detr_r50_smlp_qkv_triple_attn.py",
    ),
}
LOG_PERIOD = 4  # the 3rd iteration is a normal one, the 4th a log iteration
COUNTED = ("forward", "criterion", "backward")


def build_model(name: str) -> torch.nn.Module:
    from detrex.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(C.REPO_ROOT, MODELS[name][1]))
    torch.manual_seed(0)
    return instantiate(cfg.model).train()


def make_batch(batch: int, h: int, w: int, num_boxes: int, num_classes: int = 80):
    from detrex.structures import Boxes, Instances

    images = C.random_images(batch, h, w, "cpu")
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i, img in enumerate(images):
        inst = Instances((h, w), gt_boxes=Boxes(C.random_boxes(num_boxes, h, w, seed=i)),
                         gt_classes=torch.randint(0, num_classes, (num_boxes,), generator=g))
        inputs.append({"image": img, "height": h, "width": w, "image_id": i, "instances": inst})
    return inputs


def make_trainer(model, batch, amp: bool = False, weight_copies: bool = True):
    """The project's Trainer with the common AdamW recipe and clipping, on an endless repeat of ``batch``."""
    from detrex.config import get_config, instantiate
    from detrex.engine import Trainer
    from detrex.solver import resolve_optimizer_impl

    optim_cfg = get_config("common/optim.py").AdamW
    optim_cfg.params.model = model
    resolve_optimizer_impl(optim_cfg, "cpu")
    optimizer = instantiate(optim_cfg)

    def loader():
        while True:
            yield batch

    return Trainer(model, loader(), optimizer, clip_grad_params={"max_norm": 0.1, "norm_type": 2}, device="cpu",
                   gather_metric_period=LOG_PERIOD,  # as train_net: losses read once per log period
                   amp=amp, amp_dtype="bfloat16", amp_weight_copies=weight_copies)


def instrument(counter: OpCounter, model, trainer):
    """Route the model forward, the criterion, backward and the optimizer into counter sections."""
    model_forward = model.forward
    model.forward = lambda *a, **k: _in(counter, "forward", model_forward, *a, **k)
    for name in ("forward", "weighted_losses"):  # the batched criteria are called through weighted_losses
        fn = getattr(model.criterion, name, None)
        if fn is not None:
            setattr(model.criterion, name, lambda *a, _fn=fn, **k: _in(counter, "criterion", _fn, *a, **k))
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: _in(counter, "optimizer", step, *a, **k)
    clip = trainer.clip_grads
    trainer.clip_grads = lambda *a, **k: _in(counter, "optimizer", clip, *a, **k)


def _in(counter, section, fn, *args, **kwargs):
    with counter.section(section):
        return fn(*args, **kwargs)


class _BackwardSection:
    """Counts ``Tensor.backward`` (and ``torch.autograd.backward``) under the ``backward`` section."""

    def __init__(self, counter):
        self.counter = counter

    def __enter__(self):
        self.original = torch.Tensor.backward
        counter, original = self.counter, self.original

        def backward(t, *a, **k):
            with counter.section("backward"):
                return original(t, *a, **k)

        torch.Tensor.backward = backward

    def __exit__(self, *exc):
        torch.Tensor.backward = self.original


def count_model(name: str, batch, record_stacks: bool = False, amp: bool = False, weight_copies: bool = True):
    """(counter of a normal iteration, counter of a log iteration) for model ``name``."""
    from detrex.utils.events import EventStorage

    model = build_model(name)
    trainer = make_trainer(model, batch, amp, weight_copies)
    counters = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(LOG_PERIOD):
            trainer.iter = storage.iter = it
            counted = it in (LOG_PERIOD - 2, LOG_PERIOD - 1)  # a normal iteration, then a log iteration
            if not counted:
                trainer.run_step()
                continue
            counter = OpCounter(record_stacks=record_stacks)
            instrument(counter, model, trainer)
            with _BackwardSection(counter), counter, counter.section("trainer"):
                trainer.run_step()
            del model.forward, model.criterion.forward
            model.criterion.__dict__.pop("weighted_losses", None)
            trainer.optimizer.step = type(trainer.optimizer).step.__get__(trainer.optimizer)
            del trainer.clip_grads
            counters.append(counter)
    return counters


def all_ops(counter: OpCounter) -> int:
    """aten operators of forward + losses + backward, views included (the issue's and the README's unit)."""
    return counter.total("ops", COUNTED) + counter.total("views", COUNTED)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--size", default="256x256", help="input size HxW (default 256x256)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-boxes", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent operators per model")
    parser.add_argument("--sync-sites", action="store_true", help="print where each host sync comes from")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast of the forward (train.amp)")
    parser.add_argument("--no-weight-copies", action="store_true",
                        help="with --amp: plain autocast, without train.amp.weight_copies")
    args = parser.parse_args(argv)
    names = list(MODELS) if args.models is None else [n.strip() for n in args.models.split(",")]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    batch = make_batch(args.batch_size, h, w, args.num_boxes)

    print(f"# bench/op_count.py, torch {torch.__version__}; batch {args.batch_size} at {h}x{w}, "
          f"{args.num_boxes} boxes/image; ops/iter = aten operators of forward + losses + backward"
          + ("; bfloat16 autocast" + (" without weight copies" if args.no_weight_copies else "") if args.amp else ""))
    results = {}
    for name in names:
        normal, log_iter = count_model(name, batch, record_stacks=args.sync_sites, amp=args.amp,
                                       weight_copies=not args.no_weight_copies)
        results[name] = (normal, log_iter)
        print(f"  {name:<22} {all_ops(normal):6d} ops", flush=True)
        if args.top:
            print("    most frequent:", ", ".join(f"{k} {v}" for k, v in normal.top_ops(n=args.top)))
        if args.sync_sites:
            from collections import Counter

            for (section, what, stack), n in Counter(normal.sync_sites).items():
                print(f"    {n} x sync [{section}] {what}\n{stack}")

    rows = []
    for name, (normal, log_iter) in results.items():
        base = MODELS[name][0]
        ops = all_ops(normal)
        ratio = "-"
        if base in results:
            ratio = f"{ops / all_ops(results[base][0]):.2f}"
        crit = normal.ops["criterion"] + normal.views["criterion"]
        rows.append([
            name, ops, normal.total("ops", COUNTED), normal.ops["forward"] + normal.views["forward"], crit,
            f"{100 * crit / max(ops, 1):.0f} %", normal.ops["backward"] + normal.views["backward"],
            normal.ops["optimizer"] + normal.ops["trainer"],
            f"{normal.total('syncs')} / {log_iter.total('syncs')}", normal.total("host_tensors"), ratio,
        ])
    print()
    print(C.format_table(["model", "ops/iter", "non-view", "forward", "criterion", "criterion share", "backward",
                          "optimizer+trainer", "syncs (normal / log iter)", "host tensors", "KS/base"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
