"""Benchmark multi-scale deformable attention: the CUDA op (``torch.ops.detrex.ms_deform_attn``) vs the pure-PyTorch op
and vs a re-implementation of the original Deformable-DETR op's im2col design (``--impls original``).

Settings (Deformable-DETR, Zhu et al. 2021, at 800x1333 with strides 8/16/32/64):

- ``encoder``: batch 2, levels 100x167, 50x84, 25x42, 13x21 (22,223 tokens per image), 8 heads, 4 points,
  256 channels (D = 32 per head), one query per token (Q = 22,223 per image);
- ``decoder``: the same value tensor, Q = 300 queries.

``--small`` shrinks the maps (20x34, 10x17, 5x9, 3x5) and the batch to 1 for CPU runs. For each setting, dtype and
implementation the script prints forward and forward+backward time (median over ``--iters`` after ``--warmup``; CUDA
events on GPU, ``perf_counter`` on CPU), the peak memory allocated by forward+backward beyond the inputs (CUDA only),
the speedup of the CUDA op over the PyTorch op, and the effective bandwidth against the HBM floor: the bytes that
must cross HBM at least once (value, locations, weights, output; see ``bench/README.md``).

float16 / bfloat16 rows use a value tensor in that dtype with float32 locations and weights, which is what autocast
produces in the attention layer.

Run: ``python bench/msda.py`` (GPU, all settings and dtypes), ``python bench/msda.py --small --device cpu``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

ENCODER_SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
SMALL_SHAPES = [(20, 34), (10, 17), (5, 9), (3, 5)]
HEADS, POINTS, CHANNELS = 8, 4, 256
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def make_setting(name: str, small: bool, dtype: torch.dtype, device: str, seed: int = 0):
    """Inputs of one setting: value (B, S, M, D) in ``dtype``; locations/weights float32 for half dtypes."""
    shapes = SMALL_SHAPES if small else ENCODER_SHAPES
    batch = 1 if small else 2
    tokens = sum(h * w for h, w in shapes)
    queries = tokens if name == "encoder" else 300
    m, d, p, num_levels = HEADS, CHANNELS // HEADS, POINTS, len(shapes)
    loc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    value = torch.randn(batch, tokens, m, d, generator=g).to(device, dtype)
    # reference points spread over the image plus small offsets, as in a trained encoder
    ref = torch.rand(batch, queries, 1, 1, 1, 2, generator=g)
    offsets = torch.randn(batch, queries, m, num_levels, p, 2, generator=g) * 0.02
    loc = (ref + offsets).to(device, loc_dtype)
    weights = torch.randn(batch, queries, m, num_levels * p, generator=g).softmax(-1)
    weights = weights.view(batch, queries, m, num_levels, p).to(device, loc_dtype)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    return value, spatial_shapes, level_start, loc, weights


def floor_bytes(value, loc, weights, out_elems: int, out_dtype: torch.dtype) -> int:
    """HBM floor of the forward: every input read once, the output written once."""
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    return size(value) + size(loc) + size(weights) + out_elems * torch.empty((), dtype=out_dtype).element_size()


def _timer(device: str):
    if device.startswith("cuda"):
        def run(fn: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn: Callable[[], None]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def measure(fn: Callable[[], None], device: str, warmup: int, iters: int) -> float:
    timer = _timer(device)
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return statistics.median(timer(fn) for _ in range(iters))


def peak_extra_mb(fn: Callable[[], None], device: str) -> Optional[float]:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def implementations(device: str, names: Sequence[str]) -> Dict[str, Callable]:
    from detrex.layers.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    impls: Dict[str, Callable] = {}
    for name in names:
        if name == "pytorch":
            impls[name] = lambda v, ss, lsi, loc, w: multi_scale_deformable_attn_pytorch(v, ss, loc, w)
        elif name == "cuda":
            if not device.startswith("cuda"):
                print("note: the CUDA op needs --device cuda; skipping it", file=sys.stderr)
                continue
            from detrex.layers import msda_op

            op = msda_op.load_extension()
            if op is None:
                print(f"note: CUDA op unavailable ({msda_op.extension_error()}); skipping it", file=sys.stderr)
                continue
            impls[name] = lambda v, ss, lsi, loc, w, _op=op: _op(v, ss, lsi, loc, w, 64)
        elif name == "original":
            if not device.startswith("cuda"):
                print("note: the original-design op needs --device cuda; skipping it", file=sys.stderr)
                continue
            impls[name] = _original_design_op()
        else:
            raise SystemExit(f"bench/msda.py: unknown implementation {name!r} (use cuda, original, pytorch)")
    return impls


def _original_design_op() -> Callable:
    """The im2col-design baseline (detrex/layers/csrc/baseline), compiled on first use (a minute or two).

    float32/float64 kernels only, like the original op; half-precision inputs are cast to float32 and the output
    cast back, as detrex does for float16 (the casts are part of the timed work)."""
    import os

    from torch.utils import cpp_extension

    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "detrex", "layers", "csrc", "baseline",
                       "msda_im2col_baseline.cu")
    cpp_extension.load(name="detrex_msda_im2col_baseline", sources=[os.path.normpath(src)],
                       extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"], extra_cflags=["-O3"],
                       is_python_module=False, verbose=False)
    ops = torch.ops.detrex_bench

    class Im2col(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, ss, lsi, loc, w):
            ctx.save_for_backward(value, ss, lsi, loc, w)
            return ops.ms_deform_attn_im2col(value, ss, lsi, loc, w, 64)

        @staticmethod
        def backward(ctx, grad):
            value, ss, lsi, loc, w = ctx.saved_tensors
            gv, gl, gw = ops.ms_deform_attn_im2col_backward(grad.contiguous(), value, ss, lsi, loc, w, 64)
            return gv, None, None, gl, gw

    def run(value, ss, lsi, loc, w):
        dtype = value.dtype
        if dtype in (torch.float16, torch.bfloat16):
            value, loc, w = value.float(), loc.float(), w.float()
        return Im2col.apply(value, ss, lsi, loc, w).to(dtype)

    return run


def bench_one(impl: Callable, inputs, device: str, warmup: int, iters: int) -> Tuple[float, float, Optional[float]]:
    value, ss, lsi, loc, w = inputs

    def fwd():
        with torch.no_grad():
            impl(value, ss, lsi, loc, w)

    leaves = [t.detach().requires_grad_() for t in (value, loc, w)]
    with torch.no_grad():
        grad = torch.randn_like(impl(value, ss, lsi, loc, w))

    def fwd_bwd():
        out = impl(leaves[0], ss, lsi, leaves[1], leaves[2])
        torch.autograd.grad(out, leaves, grad)

    t_fwd = measure(fwd, device, warmup, iters)
    t_fb = measure(fwd_bwd, device, warmup, iters)
    return t_fwd, t_fb, peak_extra_mb(fwd_bwd, device)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small maps and batch 1 (CPU)")
    parser.add_argument("--settings", default="encoder,decoder")
    parser.add_argument("--dtypes", default=None, help="comma list; default float32,float16,bfloat16 on CUDA, "
                                                        "float32 on CPU")
    parser.add_argument("--impls", default="cuda,original,pytorch",
                        help="cuda: this package's op; original: the im2col-design baseline (compiled on first use); "
                             "pytorch: the grid_sample op")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args(argv)

    on_cuda = args.device.startswith("cuda")
    dtypes = args.dtypes or ("float32,float16,bfloat16" if on_cuda else "float32")
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    iters = args.iters if args.iters is not None else (50 if on_cuda else 3)
    if not on_cuda:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    impls = implementations(args.device, args.impls.split(","))
    if not impls:
        raise SystemExit("bench/msda.py: no implementation to run")

    device_name = torch.cuda.get_device_name(args.device) if on_cuda else "CPU"
    print(f"# multi-scale deformable attention, device: {device_name}, torch {torch.__version__}, "
          f"{'small maps' if args.small else '800x1333'}; median of {iters} after {warmup} warm-up")
    header = ("setting", "dtype", "impl", "fwd ms", "fwd+bwd ms", "peak MB", "fwd x", "fwd+bwd x", "fwd x orig",
              "fwd+bwd x orig", "fwd GB/s", "floor MB")
    rows = [header]
    for setting in args.settings.split(","):
        for dname in dtypes.split(","):
            dtype = DTYPES[dname]
            inputs = make_setting(setting, args.small, dtype, args.device)
            value, _, _, loc, w = inputs
            b, q = loc.shape[:2]
            floor = floor_bytes(value, loc, w, b * q * CHANNELS, dtype)
            results = {name: bench_one(fn, inputs, args.device, warmup, iters) for name, fn in impls.items()}
            base, orig = results.get("pytorch"), results.get("original")
            for name, (t_fwd, t_fb, peak) in results.items():
                rows.append((
                    setting, dname, name, f"{t_fwd:.3f}", f"{t_fb:.3f}", "-" if peak is None else f"{peak:.0f}",
                    f"{base[0] / t_fwd:.2f}" if base else "-", f"{base[1] / t_fb:.2f}" if base else "-",
                    f"{orig[0] / t_fwd:.2f}" if orig else "-", f"{orig[1] / t_fb:.2f}" if orig else "-",
                    f"{floor / t_fwd / 1e6:.1f}", f"{floor / 1e6:.1f}",
                ))
            del inputs, value, loc, w
            if on_cuda:
                torch.cuda.empty_cache()
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(str(c).rjust(wd) for c, wd in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    print("x = speedup over the pytorch op, x orig = over the original-design op (higher is better; the issue's "
          "target is fwd+bwd x orig >= 1.5 at float32); fwd GB/s = HBM-floor bytes / forward time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
