"""Benchmark multi-scale deformable attention: the CUDA op (``torch.ops.detrex.ms_deform_attn``) vs the pure-PyTorch op
and vs a re-implementation of the original Deformable-DETR op's im2col design (``--impls original``).

Settings (Deformable-DETR, Zhu et al. 2021, at 800x1333 with strides 8/16/32/64):

- ``encoder``: batch 2, levels 100x167, 50x84, 25x42, 13x21 (22,223 tokens per image), 8 heads, 4 points,
  256 channels (D = 32 per head), one query per token (Q = 22,223 per image);
- ``decoder``: the same value tensor, Q = 300 queries.

``--small`` shrinks the maps (20x34, 10x17, 5x9, 3x5) and the batch to 1 for CPU runs. For each setting, dtype and
implementation the script prints forward, backward and forward+backward time (median over ``--iters`` after
``--warmup``; CUDA events on GPU, ``perf_counter`` on CPU), the peak memory allocated by forward+backward beyond the
inputs (CUDA only), speedups over the PyTorch op and the original-design op, and the achieved bandwidth of forward and
backward against two floors (see ``bench/README.md``):

- HBM floor: every input read once and every output written once;
- L2 gather bytes: every bilinear corner is one D-channel line of the value tensor (64 KiB per encoder query in
  float32); the backward also scatters one line per corner into the grad_value accumulation buffer.

``--variants all`` (or a comma list of ``detrex.layers.msda_op.BACKWARD_VARIANTS``) adds one CUDA row per backward
kernel variant; variants marked ``*`` leave a stage out (timing only, wrong gradients by design). ``grad err`` is the
largest difference of a row's gradients from the default kernel's, relative to the largest default gradient.

float16 / bfloat16 rows use a value tensor in that dtype with float32 locations and weights, which is what autocast
produces in the attention layer.

Run: ``python bench/msda.py`` (GPU, all settings and dtypes), ``python bench/msda.py --variants all``,
``python bench/msda.py --small --device cpu``; ``--dry-run`` prints the table's byte columns without timing anything.
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


def _size(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def floor_bytes(value, loc, weights, out_elems: int, out_dtype: torch.dtype) -> int:
    """HBM floor of the forward: every input read once, the output written once."""
    return _size(value) + _size(loc) + _size(weights) + out_elems * torch.empty((), dtype=out_dtype).element_size()


def backward_floor_bytes(value, loc, weights) -> int:
    """HBM floor of the backward: grad_output, value, locations and weights read once; grad_value, grad_locations and
    grad_weights written once (grad_output has the output's size: B * Q * M * D in value's dtype)."""
    b, q = loc.shape[:2]
    grad_out = b * q * value.shape[2] * value.shape[3] * value.element_size()
    return grad_out + 2 * (_size(value) + _size(loc) + _size(weights))


def gather_bytes(value, loc, scatter_elem_bytes: int = 0) -> int:
    """Corner lines through L2: 4 corners per (batch, query, head, level, point), each D channels of value (the
    forward's gathers); ``scatter_elem_bytes`` > 0 adds the backward's scatter of one line per corner into the
    grad_value buffer (4 bytes for the float32 buffer; value's element size for the "native" variants)."""
    corners = 4 * loc[..., 0].numel()
    d = value.shape[3]
    return corners * d * (value.element_size() + scatter_elem_bytes)


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


class Result:
    """Times (ms), peak memory and gradients of one implementation (or backward variant) on one setting."""

    def __init__(self, fwd: float, bwd: float, fwd_bwd: float, peak: Optional[float], grads=None):
        self.fwd, self.bwd, self.fwd_bwd, self.peak, self.grads = fwd, bwd, fwd_bwd, peak, grads


def bench_one(impl: Callable, inputs, device: str, warmup: int, iters: int, variant: Optional[str] = None,
              keep_grads: bool = False) -> Result:
    """Forward (no_grad), backward alone (autograd.grad on a retained graph) and forward+backward of ``impl``;
    ``variant`` selects the CUDA op's backward kernel (detrex.layers.msda_op.backward_variant)."""
    import contextlib

    value, ss, lsi, loc, w = inputs
    selected = contextlib.nullcontext
    if variant is not None:
        from detrex.layers import msda_op

        selected = lambda: msda_op.backward_variant(variant)  # noqa: E731

    def fwd():
        with torch.no_grad():
            impl(value, ss, lsi, loc, w)

    leaves = [t.detach().requires_grad_() for t in (value, loc, w)]
    with torch.no_grad():
        grad = torch.randn_like(impl(value, ss, lsi, loc, w))

    def fwd_bwd():
        out = impl(leaves[0], ss, lsi, leaves[1], leaves[2])
        with selected():
            torch.autograd.grad(out, leaves, grad)

    graph_out = impl(leaves[0], ss, lsi, leaves[1], leaves[2])

    def bwd():
        with selected():
            torch.autograd.grad(graph_out, leaves, grad, retain_graph=True)

    t_fwd = measure(fwd, device, warmup, iters)
    t_bwd = measure(bwd, device, warmup, iters)
    t_fb = measure(fwd_bwd, device, warmup, iters)
    grads = None
    if keep_grads:
        with selected():
            grads = torch.autograd.grad(graph_out, leaves, grad, retain_graph=True)
    return Result(t_fwd, t_bwd, t_fb, peak_extra_mb(fwd_bwd, device), grads)


def grad_error(grads, ref) -> Optional[float]:
    """Largest |grad - ref| over the three gradients, relative to the largest |ref| of the same gradient."""
    if grads is None or ref is None:
        return None
    errs = []
    for g, r in zip(grads, ref):
        scale = r.detach().abs().max().float().clamp_min(1e-12)
        errs.append(((g.detach().float() - r.detach().float()).abs().max() / scale).item())
    return max(errs)


def variant_names(spec: Optional[str]) -> List[str]:
    from detrex.layers import msda_op

    if not spec:
        return []
    names = list(msda_op.BACKWARD_VARIANTS) if spec == "all" else spec.split(",")
    unknown = [n for n in names if n not in msda_op.BACKWARD_VARIANTS]
    if unknown:
        raise SystemExit(f"bench/msda.py: unknown backward variant(s) {unknown}; choose from "
                         f"{list(msda_op.BACKWARD_VARIANTS)} or 'all'")
    return names


def scatter_elem_bytes(variant: Optional[str], value_dtype: torch.dtype) -> int:
    """Bytes per channel the backward scatters into its grad_value buffer (see csrc/msda_kernels.cu)."""
    if value_dtype == torch.float64:
        return 8
    if variant in ("native", "native_vec4") and value_dtype in (torch.float16, torch.bfloat16):
        return 2
    return 4


HEADER = ("setting", "dtype", "impl", "fwd ms", "bwd ms", "fwd+bwd ms", "peak MB", "fwd+bwd x", "fwd+bwd x orig",
          "bwd x default", "grad err", "fwd GB/s", "bwd GB/s", "fwd L2 GB/s", "bwd L2 GB/s", "HBM MB fwd/bwd",
          "L2 MB fwd/bwd")


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_rows(setting: str, dname: str, inputs, results: Dict[str, Tuple[Optional[str], Optional[Result]]]):
    """Rows of one (setting, dtype): ``results`` maps a row label to (backward variant or None, Result or None)."""
    from detrex.layers import msda_op

    value, _, _, loc, w = inputs
    b, q = loc.shape[:2]
    fwd_floor = floor_bytes(value, loc, w, b * q * CHANNELS, value.dtype)
    bwd_floor = backward_floor_bytes(value, loc, w)
    base = results.get("pytorch", (None, None))[1]
    orig = results.get("original", (None, None))[1]
    default = results.get("cuda", (None, None))[1]
    rows = []
    for label, (variant, r) in results.items():
        fwd_l2 = gather_bytes(value, loc)
        if label == "pytorch":
            bwd_l2 = None  # grid_sample's backward: not this design
        else:
            bwd_l2 = gather_bytes(value, loc, scatter_elem_bytes(variant if label.startswith("cuda") else None,
                                                                  value.dtype))
        shown = label + ("*" if variant in msda_op.PROFILING_VARIANTS else "")
        hbm = f"{fwd_floor / 1e6:.1f}/{bwd_floor / 1e6:.1f}"
        l2 = f"{fwd_l2 / 1e6:.0f}/{'-' if bwd_l2 is None else f'{bwd_l2 / 1e6:.0f}'}"
        if r is None:  # dry run: byte columns only
            rows.append((setting, dname, shown) + ("-",) * 12 + (hbm, l2))
            continue
        err = grad_error(r.grads, default.grads if default is not None else None) if label != "cuda" else None
        rows.append((
            setting, dname, shown, f"{r.fwd:.3f}", f"{r.bwd:.3f}", f"{r.fwd_bwd:.3f}", _fmt(r.peak, ".0f"),
            _fmt(base.fwd_bwd / r.fwd_bwd if base else None, ".2f"),
            _fmt(orig.fwd_bwd / r.fwd_bwd if orig else None, ".2f"),
            _fmt(default.bwd / r.bwd if default and label.startswith("cuda") else None, ".2f"),
            _fmt(err, ".1e"),
            f"{fwd_floor / r.fwd / 1e6:.0f}", f"{bwd_floor / r.bwd / 1e6:.0f}",
            f"{fwd_l2 / r.fwd / 1e6:.0f}", _fmt(None if bwd_l2 is None else bwd_l2 / r.bwd / 1e6, ".0f"),
            hbm, l2,
        ))
    return rows


def print_table(rows: List[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(str(c).rjust(wd) for c, wd in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")


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
    parser.add_argument("--variants", default=None,
                        help="'all' or a comma list of backward kernel variants of the CUDA op "
                             "(detrex.layers.msda_op.BACKWARD_VARIANTS): one extra row each")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="build the inputs and print the rows with their byte floors, timing nothing (any device)")
    args = parser.parse_args(argv)

    on_cuda = args.device.startswith("cuda")
    dtypes = args.dtypes or ("float32,float16,bfloat16" if on_cuda else "float32")
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    iters = args.iters if args.iters is not None else (50 if on_cuda else 3)
    if not on_cuda:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    variants = variant_names(args.variants)
    impl_names = args.impls.split(",")
    if args.dry_run:
        impls = {name: None for name in impl_names}
    else:
        impls = implementations(args.device, impl_names)
        if not impls:
            raise SystemExit("bench/msda.py: no implementation to run")
    if variants and "cuda" not in impls:
        print("note: --variants needs the CUDA op (impl 'cuda'); no variant rows", file=sys.stderr)
        variants = []

    device_name = torch.cuda.get_device_name(args.device) if on_cuda else "CPU"
    print(f"# multi-scale deformable attention, device: {device_name}, torch {torch.__version__}, "
          f"{'small maps' if args.small else '800x1333'}; median of {iters} after {warmup} warm-up"
          f"{'; DRY RUN (nothing timed)' if args.dry_run else ''}")
    rows = [HEADER]
    for setting in args.settings.split(","):
        for dname in dtypes.split(","):
            dtype = DTYPES[dname]
            inputs = make_setting(setting, args.small, dtype, args.device)
            results: Dict[str, Tuple[Optional[str], Optional[Result]]] = {}
            for name, fn in impls.items():
                keep = name == "cuda" and bool(variants)
                results[name] = ("default" if name == "cuda" else None,
                                 None if fn is None else bench_one(fn, inputs, args.device, warmup, iters,
                                                                   keep_grads=keep))
                if name == "cuda":
                    for variant in variants:
                        if variant == "default":
                            continue
                        results[f"cuda:{variant}"] = (variant, None if fn is None else bench_one(
                            fn, inputs, args.device, warmup, iters, variant=variant, keep_grads=True))
            rows += table_rows(setting, dname, inputs, results)
            del inputs, results
            if on_cuda:
                torch.cuda.empty_cache()
    print_table(rows)
    print("x = fwd+bwd speedup over the pytorch op; x orig = over the original-design op (the issue's target: >= 1.5 "
          "at float32); bwd x default = backward speedup over the default CUDA kernel; grad err = max |grad - "
          "default's| / max |default's|; GB/s = floor bytes / time (HBM floor: inputs read once, outputs written "
          "once; L2: corner lines gathered, plus the backward's scatter into the grad_value buffer); * = a stage left "
          "out (timing only, wrong gradients by design).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
