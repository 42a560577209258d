"""Shared helpers of the ``bench/`` scripts: timing, peak memory, model building (ours and the Hugging Face
transformers peers), inputs, tables and the machine description.

Conventions used by every script:

* **latency**: median wall time of ``--iters`` calls after ``--warmup`` untimed calls (CUDA is synchronized
  before reading the clock). Medians resist the drift of a shared machine; compare ratios measured in one run.
* **peak memory**: the most memory held by tensors *allocated during one call* (activations, workspaces,
  gradients), above what was live before it (weights, inputs). CUDA: ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``. CPU: the running total of torch's CPU allocator as recorded by
  ``torch.profiler`` with ``profile_memory=True`` (one extra, untimed call); RSS is not used because the C
  allocator keeps freed pages. Both count torch tensors only.
"""

import argparse
import contextlib
import glob
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python bench/x.py` from a clone without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

# --------------------------------------------------------------------------------------------- models
# name -> (architecture, KS?, candidate config files relative to the repo root; the first that exists wins)
OUR_MODELS: Dict[str, Tuple[str, bool, Tuple[str, ...]]] = {
    "DAB-DETR": ("dab", False, ("projects/dab_detr/configs/models/dab_detr_r50.py",)),
    "KS-DAB-DETR": (
        "dab",
        True,
        ("projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py",),
    ),
    "Conditional-DETR": ("conditional", False, ("projects/conditional_detr/configs/models/conditional_detr_r50.py",)),
    "KS-Conditional-DETR": (
        "conditional",
        True,
        ("projects/ks_detr/configs/ks_conditional_detr/models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py",),
    ),
    "Deformable-DETR": ("deformable", False, ("projects/deformable_detr/configs/models/deformable_detr_r50.py",)),
    "KS-Deformable-DETR": (
        "deformable",
        True,
        ("projects/ks_detr/configs/ks_deformable_detr/models/ks_deformable_detr_r50_smlp_qkv_triple_attn.py",),
    ),
}
ARCHS = ("dab", "conditional", "deformable")
ARCH_TITLES = {"dab": "DAB-DETR", "conditional": "Conditional-DETR", "deformable": "Deformable-DETR"}


def find_config(name: str) -> Optional[str]:
    """The config file of one of `OUR_MODELS` (absolute path), or None when that project is not in the tree."""
    for pattern in OUR_MODELS[name][2]:
        hits = sorted(glob.glob(os.path.join(REPO_ROOT, pattern)))
        if hits:
            return hits[0]
    return None


def build_ours(name: str) -> torch.nn.Module:
    """Instantiate one of `OUR_MODELS` from its R-50 model config with random weights (nothing downloaded)."""
    from detrex.config import LazyConfig, instantiate

    path = find_config(name)
    if path is None:
        raise FileNotFoundError(f"no config for {name}: looked for {OUR_MODELS[name][2]} under {REPO_ROOT}")
    cfg = LazyConfig.load(path)
    return instantiate(cfg.model)


def transformers_version() -> Optional[str]:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def build_hf(arch: str) -> torch.nn.Module:
    """The transformers peer of ``arch`` with random weights and a ResNet-50 (transformers' own ResNet, stride in
    the 3x3 conv as ours, frozen BN), set up like our R-50 configs: 300 queries, 80 classes, d=256, 8 heads,
    6+6 layers, FFN 2048 (DAB, Conditional) or 1024 (Deformable, 4 levels x 4 points, one stage, no box
    refinement), auxiliary losses on. Nothing is downloaded. As ours (``freeze_at=1``), the stem is frozen
    and the four ResNet stages train."""
    import transformers as tf

    def resnet50(stages):
        return tf.ResNetConfig(
            depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck", out_features=stages
        )

    common = dict(num_queries=300, num_labels=80, auxiliary_loss=True)
    common.update(encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8)
    if arch == "dab":
        cfg = tf.DabDetrConfig(
            backbone_config=resnet50(["stage4"]),
            hidden_size=256,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            activation_function="prelu",
            dropout=0.0,  # ours: attn/ffn dropout 0 for DAB-DETR
            temperature_height=20,
            temperature_width=20,
            **common,
        )
        model = tf.DabDetrForObjectDetection(cfg)
    elif arch == "conditional":
        cfg = tf.ConditionalDetrConfig(
            backbone_config=resnet50(["stage4"]),
            d_model=256,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            activation_function="relu",
            dropout=0.1,
            **common,
        )
        model = tf.ConditionalDetrForObjectDetection(cfg)
    elif arch == "deformable":
        cfg = tf.DeformableDetrConfig(
            backbone_config=resnet50(["stage2", "stage3", "stage4"]),
            d_model=256,
            encoder_ffn_dim=1024,
            decoder_ffn_dim=1024,
            dropout=0.1,
            num_feature_levels=4,
            encoder_n_points=4,
            decoder_n_points=4,
            two_stage=False,
            with_box_refine=False,
            disable_custom_kernels=True,  # no kernel download/compile; pure PyTorch path as ours on CPU
            **common,
        )
        model = tf.DeformableDetrForObjectDetection(cfg)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    # Train what ours trains (freeze_at=1): the ResNet stages, not the stem. transformers 5.x freezes its whole
    # ResNet in Conditional/Deformable-DETR (its name filter looks for "stage.1" but the parameters are named
    # "stages.1"), which would skip the backbone's backward pass on its side only.
    for n, p in model.named_parameters():
        if "backbone" in n:
            p.requires_grad_(".embedder." not in n)
    return model


def hf_processor(arch: str):
    """transformers' image processor of ``arch`` (used for its ``post_process_object_detection`` only)."""
    import transformers as tf

    if arch == "deformable":
        return tf.DeformableDetrImageProcessor()
    return tf.ConditionalDetrImageProcessor()  # DAB-DETR uses the Conditional-DETR processor


def num_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# --------------------------------------------------------------------------------------------- inputs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_images(batch: int, h: int, w: int, device, seed: int = 0) -> List[torch.Tensor]:
    """``batch`` uint8 (3, h, w) RGB images on ``device``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device) for _ in range(batch)]


def random_boxes(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, 4) absolute XYXY boxes inside an (h, w) image, each at least 8 px wide and high."""
    g = torch.Generator().manual_seed(seed)
    cx = torch.rand(n, generator=g) * 0.6 + 0.2
    cy = torch.rand(n, generator=g) * 0.6 + 0.2
    bw = torch.rand(n, generator=g) * 0.3 + 0.05
    bh = torch.rand(n, generator=g) * 0.3 + 0.05
    x0, x1 = ((cx - bw / 2) * w).clamp(min=0), ((cx + bw / 2) * w).clamp(max=w)
    y0, y1 = ((cy - bh / 2) * h).clamp(min=0), ((cy + bh / 2) * h).clamp(max=h)
    return torch.stack([x0, y0, torch.maximum(x1, x0 + 8), torch.maximum(y1, y0 + 8)], dim=1)


def hf_normalize(images: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images of one size -> transformers inputs: ``pixel_values`` (B, 3, H, W) float, rescaled by 1/255 and
    normalized with the ImageNet mean/std (what its image processor does), and ``pixel_mask`` (B, H, W) int64
    ones (no padding)."""
    x = torch.stack(images).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    mask = torch.ones((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.int64, device=x.device)
    return x, mask


# --------------------------------------------------------------------------------------------- measuring
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_latency(fn: Callable[[], object], device, warmup: int, iters: int) -> Tuple[float, List[float]]:
    """Median seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed calls, and all the timings."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(iters, 1)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C-level stderr (kineto prints a GPU-count error on CPU-only machines)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


def _cpu_peak_from_profiler(prof) -> int:
    """Max over the profiled region of the CPU allocator's running total (bytes), above its value at the start.

    The profiler's running total is process-wide and keeps counting tensors allocated in earlier profiled
    regions that are still alive, so the level before the first allocation of this region is subtracted."""
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            events.append((node.start_time_ns, int(fields.alloc_size), int(fields.total_allocated)))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort()
    start_level = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - start_level


def measure_peak_memory(fn: Callable[[], object], device) -> int:
    """Peak bytes of tensor memory allocated during one call of ``fn`` above what was live before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return _cpu_peak_from_profiler(prof)


def profile_top_ops(fn: Callable[[], object], device, row_limit: int = 15) -> str:
    """torch.profiler table of the ops with the most self time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with _quiet_stderr():
        with profile(activities=acts) as prof:
            fn()
    key = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)


_LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                  "cudaLaunchCooperativeKernel")


def gpu_activity(fn: Callable[[], object], wall_s: float, iters: int = 2) -> dict:
    """GPU-side view of ``fn`` (one training iteration) on CUDA: ``kernel_ms`` per iteration (sum of the kernels'
    device durations, torch.profiler), ``busy`` = kernel time / ``wall_s`` (the measured wall time per
    iteration), ``launches`` per iteration (kernel-launch API calls) and ``syncs`` per iteration (warnings of
    ``torch.cuda.set_sync_debug_mode("warn")``: every host wait on the device)."""
    import warnings

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernel_us, launches = 0.0, 0
    for evt in prof.events():
        if evt.device_type == DeviceType.CUDA:
            kernel_us += evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
        elif evt.name in _LAUNCH_EVENTS:
            launches += 1
    syncs = 0
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(iters):
                fn()
        syncs = sum(1 for w in caught if "synchroniz" in str(w.message))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    kernel_ms = kernel_us / 1e3 / iters
    return {"kernel_ms": kernel_ms, "busy": min(1.0, kernel_ms / 1e3 / wall_s) if wall_s else 0.0,
            "launches": launches / iters, "syncs": syncs / iters}


def autocast(device, amp: str):
    """``torch.autocast`` for ``--amp bf16|fp16``; a no-op context for ``--amp none``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------------------------- output
def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-markdown table (pastes into bench/README.md as it is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device) -> str:
    """One line naming the hardware and software the numbers were measured with."""
    parts = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
    tv = transformers_version()
    parts.append(f"transformers {tv}" if tv else "transformers not installed")
    if torch.device(device).type == "cuda":
        parts.insert(0, f"GPU {torch.cuda.get_device_name()}")
    parts.insert(0, f"CPU {cpu_model_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})")
    try:
        parts.append(f"load avg {os.getloadavg()[0]:.2f}")
    except OSError:
        pass
    parts.append(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return "; ".join(parts)


def add_common_args(parser: argparse.ArgumentParser, iters: int, warmup: int) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--iters", type=int, default=None, help=f"timed calls per row (CPU default {iters})")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed calls before timing (CPU default {warmup})")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 iteration: checks that the script runs")


def resolve_common_args(args, iters: int, warmup: int, gpu_iters: int = 20, gpu_warmup: int = 5) -> None:
    """Fill ``--iters/--warmup`` defaults (CPU vs GPU), apply ``--threads`` and check CUDA exists."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine (use --device cpu)")
    gpu = args.device == "cuda"
    if args.iters is None:
        args.iters = 1 if args.smoke else (gpu_iters if gpu else iters)
    if args.warmup is None:
        args.warmup = 0 if args.smoke else (gpu_warmup if gpu else warmup)
    if args.threads is None and args.smoke:
        args.threads = 1  # smoke runs share CI machines: OpenMP threads spin badly under contention
    if args.threads:
        torch.set_num_threads(args.threads)


def parse_names(value: Optional[str], known: Sequence[str], what: str) -> List[str]:
    """Comma-separated names (case-insensitive) -> the canonical names, in the order of ``known``."""
    if not value:
        return list(known)
    lower = {k.lower(): k for k in known}
    wanted = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in wanted if v not in lower]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {', '.join(known)}")
    return [k for k in known if k.lower() in wanted]


def select_models(args) -> Tuple[List[str], bool, List[str]]:
    """``--models`` / ``--no-peers`` -> (our model names present in this tree, whether to run the transformers
    peers, notes for the table footer about what was skipped and why)."""
    names = parse_names(args.models, list(OUR_MODELS), "model")
    peers = not args.no_peers and transformers_version() is not None
    notes = []
    if not args.no_peers and not peers:
        notes.append("transformers is not installed: peer rows skipped (pip install transformers)")
    missing = [n for n in names if find_config(n) is None]
    if missing:
        notes.append("not in this tree (skipped): " + ", ".join(missing))
    return [n for n in names if n not in missing], peers, notes
