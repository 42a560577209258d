"""One training iteration: our detectors (KS and baseline) vs the Hugging Face transformers peers.

What is timed, per iteration (batch 2 at 512x512 by default, 7 random ground-truth boxes per image):

* **ours**: one ``Trainer.run_step()`` as ``tools/train_net.py`` runs it: ``model(batched_inputs)`` in train mode
  (normalization, padding, targets, forward, the batched Hungarian matching and weighted losses of every
  prediction set; for KS models the GT mask, sMLP, the triple-attention layer and the one decoder pass over the
  stacked memories), backward of the `LossDict` total, gradient clipping at L2 norm 0.1 (foreach), the AdamW of
  ``configs/common/optim.py`` (lr 1e-4, weight decay 1e-4, fused), losses read every 20th iteration.
  ``--amp bf16`` autocasts the forward as ``train.amp`` (with its bfloat16 weight copies unless
  ``--no-weight-copies``); ``--compile`` compiles ``forward_raw`` as ``train.compile``.
* **transformers**: the same normalization of the uint8 batch to ``pixel_values``, ``model(pixel_values,
  pixel_mask, labels=...)`` with auxiliary losses on, ``outputs.loss.backward()``, the same clipping,
  ``AdamW.step()`` and ``zero_grad``.

``--activation-checkpoint`` adds, for each of our models, a row ``<model> +ckpt`` with every encoder and
decoder layer checkpointed (``detrex.layers.set_activation_checkpoint``, as ``train.activation_checkpoint=True``)
and a second table: peak memory without / with checkpointing, the reduction and the time ratio.

On CUDA four more columns, from ``torch.profiler`` over 2 iterations after the timed ones: kernel time per
iteration (sum of the GPU-side kernel durations), GPU busy (that over the median wall time), kernel launches per
iteration (``cudaLaunchKernel*``/``cuLaunchKernel*`` calls) and host syncs per iteration
(``torch.cuda.set_sync_debug_mode`` warnings over 2 more iterations, which include one log iteration in 20).

Models of one architecture are timed in alternating rounds; rows report the median iteration time and the
peak tensor memory of one extra iteration after the timed ones (activations, gradients and temporaries; the
weights and AdamW's state already exist and are not counted). ``images/s`` is what the data pipeline has to
sustain for this model (compare with ``bench/data.py``).
"""

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

NUM_BOXES = 7  # COCO train2017 averages 7.3 annotated objects per image


def make_ours_step(model, images, boxes, classes, amp="none", compile_model=False, weight_copies=True):
    """One iteration of the project's `Trainer` (the path train_net takes): forward with the weighted losses (a
    `LossDict`), backward, clipping at 0.1, the AdamW of configs/common/optim.py (fused where supported), losses
    kept on the device and read every 20th iteration (train.log_period)."""
    from detrex.config import get_config, instantiate
    from detrex.engine import Trainer
    from detrex.engine import compile_model as compile_detector
    from detrex.solver import resolve_optimizer_impl
    from detrex.structures import Boxes, Instances
    from detrex.utils.events import EventStorage

    device = next(model.parameters()).device
    inputs = []
    for img, bx, cl in zip(images, boxes, classes):
        inst = Instances(tuple(img.shape[1:]), gt_boxes=Boxes(bx.to(img.device)), gt_classes=cl.to(img.device))
        inputs.append({"image": img, "height": img.shape[1], "width": img.shape[2], "instances": inst})
    optim_cfg = get_config("common/optim.py").AdamW
    optim_cfg.params.model = model
    optim_cfg.lr, optim_cfg.weight_decay = 1e-4, 1e-4
    resolve_optimizer_impl(optim_cfg, device)
    if compile_model:
        compile_detector(model)

    def loader():
        while True:
            yield inputs

    trainer = Trainer(model, loader(), instantiate(optim_cfg), amp=amp != "none", amp_dtype="bfloat16",
                      amp_weight_copies=weight_copies,
                      clip_grad_params={"max_norm": 0.1, "norm_type": 2}, device=device, gather_metric_period=20)
    storage = EventStorage(0)

    def step():
        with storage:
            storage.iter = trainer.iter
            trainer.run_step()
            trainer.iter += 1

    return step


def make_hf_step(model, images, boxes, classes):
    from detrex.layers.box_ops import box_xyxy_to_cxcywh

    labels = []
    for img, bx, cl in zip(images, boxes, classes):
        h, w = img.shape[1:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        labels.append({"class_labels": cl.to(img.device), "boxes": box_xyxy_to_cxcywh(bx / scale).to(img.device)})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def step():
        pixel_values, pixel_mask = C.hf_normalize(images)
        out = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step


CKPT = " +ckpt"


def checkpoint_table(results, size, batch):
    """Peak memory and time of each model without and with activation checkpointing (``--activation-checkpoint``)."""
    rows = []
    for (arch, label), (sec, mem) in results.items():
        if (arch, label + CKPT) not in results:
            continue
        sec_c, mem_c = results[(arch, label + CKPT)]
        saved = None if mem is None or mem_c is None or mem == 0 else f"{100 * (1 - mem_c / mem):.1f} %"
        rows.append([label, size, batch, C.fmt(None if mem is None else mem / 2**20, 0),
                     C.fmt(None if mem_c is None else mem_c / 2**20, 0), saved or "-", f"{sec_c / sec:.2f}"])
    return C.format_table(["model", "input", "batch", "peak MiB", "peak MiB, act. ckpt", "memory saved",
                           "time ckpt/plain"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser, iters=3, warmup=1)
    parser.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(C.OUR_MODELS))
    parser.add_argument("--size", default="512x512", help="input size HxW (default 512x512)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per iteration (default 2)")
    parser.add_argument("--no-peers", action="store_true", help="skip the transformers models")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype (GPU)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of each model")
    parser.add_argument("--compile", action="store_true", help="train.compile=True for our models (forward_raw)")
    parser.add_argument("--no-weight-copies", action="store_true",
                        help="--amp bf16 as plain autocast (train.amp.weight_copies=False)")
    parser.add_argument("--activation-checkpoint", action="store_true",
                        help="also run our models with every encoder/decoder layer checkpointed (rows '+ckpt')")
    args = parser.parse_args(argv)
    C.resolve_common_args(args, iters=3, warmup=1)
    if args.smoke:
        args.size = "64x96"
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size: {args.size!r} is not HxW (e.g. 512x512)")
    if args.amp == "fp16":
        raise SystemExit("--amp fp16 needs a GradScaler; use --amp bf16")
    b = args.batch_size
    names, peers, notes = C.select_models(args)
    device = torch.device(args.device)

    print(f"# bench/train_step.py on {C.machine_info(device)}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# batch {b} at {h}x{w}, {NUM_BOXES} GT boxes/image; median of {args.iters} after {args.warmup} "
          f"warm-up iteration(s); amp={args.amp}")
    images = C.random_images(b, h, w, device)
    boxes = [C.random_boxes(NUM_BOXES, h, w, seed=i) for i in range(b)]
    g = torch.Generator().manual_seed(0)
    classes = [torch.randint(0, 80, (NUM_BOXES,), generator=g) for _ in range(b)]

    results = {}
    gpu = {}
    profiles = []
    for arch in C.ARCHS:
        ours = [n for n in names if C.OUR_MODELS[n][0] == arch]
        if not ours:
            continue
        steps = {}
        for n in ours:
            torch.manual_seed(0)
            steps[n] = make_ours_step(C.build_ours(n).to(device).train(), images, boxes, classes, args.amp,
                                      args.compile, not args.no_weight_copies)
            if args.activation_checkpoint:
                from detrex.layers import set_activation_checkpoint

                torch.manual_seed(0)
                model = C.build_ours(n).to(device).train()
                set_activation_checkpoint(model)
                steps[n + CKPT] = make_ours_step(model, images, boxes, classes, args.amp, args.compile,
                                                 not args.no_weight_copies)
        if peers:
            torch.manual_seed(0)
            hf_step = make_hf_step(C.build_hf(arch).to(device).train(), images, boxes, classes)

            def hf_autocast_step(fn=hf_step):
                with C.autocast(device, args.amp):  # ours autocast their forward inside the Trainer
                    return fn()

            steps["transformers"] = hf_autocast_step
        times = {k: [] for k in steps}
        peaks = {k: None for k in steps}
        for label, step in steps.items():
            for _ in range(args.warmup):
                step()
        for _ in range(max(args.iters, 1)):
            for label, step in steps.items():
                C.sync(device)
                t0 = time.perf_counter()
                step()
                C.sync(device)
                times[label].append(time.perf_counter() - t0)
        if not args.no_memory:  # after the timed steps: AdamW's state exists and is not counted
            for label, step in steps.items():
                peaks[label] = C.measure_peak_memory(step, device)
        if device.type == "cuda":
            for label, step in steps.items():
                gpu[(arch, label)] = C.gpu_activity(step, statistics.median(times[label]))
        if args.profile:
            for label, step in steps.items():
                profiles.append((f"{label} ({arch})", C.profile_top_ops(step, device)))
        for label in steps:
            results[(arch, label)] = (statistics.median(times[label]), peaks[label])
            print(f"  {arch:<11} {label:<20} {results[(arch, label)][0] * 1e3:9.1f} ms", flush=True)
        del steps
        gc.collect()

    rows = []
    for (arch, label), (sec, mem) in results.items():
        base = next((n for n in names if C.OUR_MODELS[n][0] == arch and not C.OUR_MODELS[n][1]), None)
        ks_ratio = hf_ratio = "-"
        if label in C.OUR_MODELS and C.OUR_MODELS[label][1] and (arch, base) in results:
            ks_ratio = f"{sec / results[(arch, base)][0]:.2f}"
        if label in C.OUR_MODELS and (arch, "transformers") in results:
            hf_ratio = f"{sec / results[(arch, 'transformers')][0]:.2f}"
        row = [C.ARCH_TITLES[arch], label, f"{h}x{w}", b, C.fmt(sec * 1e3), C.fmt(b / sec, 2),
               C.fmt(None if mem is None else mem / 2**20, 0), ks_ratio, hf_ratio]
        if gpu:
            act = gpu[(arch, label)]
            row += [C.fmt(act["kernel_ms"]), f"{100 * act['busy']:.0f} %", f"{act['launches']:.0f}",
                    f"{act['syncs']:.0f}"]
        rows.append(row)
    print()
    headers = ["architecture", "model", "input", "batch", "ms/iter", "images/s", "peak MiB", "KS/baseline",
               "ours/transformers"]
    if gpu:
        headers += ["kernel ms/iter", "GPU busy", "launches/iter", "syncs/iter"]
    print(C.format_table(headers, rows))
    if args.activation_checkpoint:
        print("\n" + checkpoint_table(results, f"{h}x{w}", b))
    for note in notes:
        print(f"note: {note}")
    for title, table in profiles:
        print(f"\n## torch.profiler top ops (one iteration): {title}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
