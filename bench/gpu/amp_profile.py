"""Why bfloat16 autocast is (or is not) faster than float32 in one training step on a GPU: per setting, the wall time,
the host time spent issuing work, the GPU kernel time, kernel launches, cast kernels, and the operators with the
most host time.

    python bench/gpu/amp_profile.py --model DAB-DETR --size 800x1333 [--compile]

Settings: float32; bfloat16 autocast as plain autocast (every weight cast in every step); bfloat16 with the weight
copies of ``train.amp.weight_copies`` (detrex/engine/amp.py). The step is `bench/train_step.py`'s (the project's
Trainer: fused AdamW, batched criterion, losses read every 20 steps).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402
import train_step as T  # noqa: E402


def measure(step, iters: int):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernel_us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    launches = sum(1 for e in prof.events() if e.name in C._LAUNCH_EVENTS)
    averages = prof.key_averages()
    casts = sum(a.count for a in averages if a.key in ("aten::_to_copy",))
    top = sorted((a for a in averages if a.key.startswith("aten::")), key=lambda a: -a.self_cpu_time_total)[:8]
    return wall, kernel_us / 1e3, launches, casts, top


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="DAB-DETR")
    parser.add_argument("--size", default="800x1333")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device("cuda")
    images = C.random_images(2, h, w, device)
    boxes = [C.random_boxes(T.NUM_BOXES, h, w, seed=i) for i in range(2)]
    g = torch.Generator().manual_seed(0)
    classes = [torch.randint(0, 80, (T.NUM_BOXES,), generator=g) for _ in range(2)]
    rows, tops = [], []
    for label, amp, copies in (("float32", "none", False), ("bf16 autocast", "bf16", False),
                               ("bf16 + weight copies", "bf16", True)):
        torch.manual_seed(0)
        model = C.build_ours(args.model).to(device).train()
        step = T.make_ours_step(model, images, boxes, classes, amp, args.compile, weight_copies=copies)
        wall, kernel_ms, launches, casts, top = measure(step, args.iters)
        rows.append([label, C.fmt(wall * 1e3), C.fmt(kernel_ms), f"{100 * kernel_ms / 1e3 / wall:.0f} %", launches,
                     casts])
        tops.append((label, top))
        del model, step
        torch.cuda.empty_cache()
    print(f"# {args.model}, batch 2 at {h}x{w}{', compiled' if args.compile else ''}; {C.machine_info(device)}")
    print(C.format_table(["setting", "wall ms/iter", "kernel ms/iter", "GPU busy", "launches/iter",
                          "aten::_to_copy/iter"], rows))
    for label, top in tops:
        print(f"\n{label}: operators with the most host (self CPU) time in one step")
        for a in top:
            print(f"  {a.key:<40} calls {a.count:5d}  self CPU {a.self_cpu_time_total / 1e3:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
