"""The optional CUDA multi-scale deformable attention op (``detrex/layers/csrc``, ``detrex.layers.msda_op``).

Three tiers:

- CPU, always: a vectorised PyTorch mirror of the kernels' arithmetic (corner validity, bilinear weights, the
  dot-product form of the backward with its ``W`` / ``H`` scaling) is checked against the pure-PyTorch op and its
  autograd; importing ``detrex.layers.msda_op`` never loads or needs the extension.
- CPU, ``slow``, needs ``nvcc``: the extension compiles (one architecture, in ``tmp_path``, time-boxed) and, in a
  fresh process, its schemas plus the Python registration (fake kernels, autograd) pass ``torch.library.opcheck``,
  ``gradcheck`` and a ``torch.compile(fullgraph=True)`` trace, with the kernel mirror standing in as CPU kernels.
- GPU (``gpu`` marker; skipped without CUDA or without the built extension): the CUDA kernels against the
  pure-PyTorch op in float64/float32, gradcheck, float16/bfloat16 within the tolerances documented at
  ``HALF_TOLERANCES``, odd level sizes, padding masks, batch sizes that do not divide ``im2col_step``,
  ``torch.compile``, autocast, input errors.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from detrex.layers import msda_op
from detrex.layers.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "detrex" / "layers" / "csrc"
#: wall-clock budget of the compile-only check (one architecture, -O2); CI must stay under 25 minutes overall
COMPILE_BUDGET_S = 420


# --------------------------------------------------------------------------------------------------------------------
# a vectorised mirror of the kernels' arithmetic (also the CPU stand-in kernels of the registration check)
# --------------------------------------------------------------------------------------------------------------------
def _corners(loc_l, h, w):
    """Per-corner (token index, weight incl. validity) for one level; loc_l (B, Q, M, P, 2) -> lists of 4."""
    x, y = loc_l[..., 0], loc_l[..., 1]
    h_im, w_im = y * h - 0.5, x * w - 0.5
    inside = (h_im > -1) & (w_im > -1) & (h_im < h) & (w_im < w)
    h0, w0 = h_im.floor(), w_im.floor()
    lh, lw = h_im - h0, w_im - w0
    hh, hw = 1 - lh, 1 - lw
    h0, w0 = h0.long(), w0.long()
    spec = ((h0, w0, hh * hw), (h0, w0 + 1, hh * lw), (h0 + 1, w0, lh * hw), (h0 + 1, w0 + 1, lh * lw))
    idx, cw, valid = [], [], []
    for hc, wc, weight in spec:
        ok = inside & (hc >= 0) & (hc < h) & (wc >= 0) & (wc < w)
        idx.append((hc.clamp(0, h - 1) * w + wc.clamp(0, w - 1)))
        cw.append(weight * ok)
        valid.append(ok)
    return idx, cw, valid, (inside, lh, lw, hh, hw)


def _gather(value_l, idx):
    """value_l (B, HW, M, D), idx (B, Q, M, P) -> (B, Q, M, P, D)."""
    b, q, m, p = idx.shape
    d = value_l.shape[-1]
    src = value_l.permute(0, 2, 1, 3)  # (B, M, HW, D)
    index = idx.permute(0, 2, 1, 3).reshape(b, m, q * p, 1).expand(b, m, q * p, d)
    return src.gather(2, index).view(b, m, q, p, d).permute(0, 2, 1, 3, 4)


def _levels(spatial_shapes):
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    return shapes, starts


def mirror_forward(value, spatial_shapes, sampling_locations, attention_weights):
    """The forward kernel's arithmetic: (B, Q, M * D), accumulated in value's opmath dtype."""
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    v = value.to(acc)
    loc, aw = sampling_locations.to(acc), attention_weights.to(acc)
    b, q, m, _, _, _ = loc.shape
    out = v.new_zeros(b, q, m, v.shape[-1])
    for lvl, ((h, w), st) in enumerate(zip(*_levels(spatial_shapes))):
        idx, cw, _, _ = _corners(loc[:, :, :, lvl], h, w)
        value_l = v[:, st:st + h * w]
        for i, c in zip(idx, cw):
            out += ((aw[:, :, :, lvl] * c)[..., None] * _gather(value_l, i)).sum(3)
    return out.flatten(2).to(value.dtype)


def mirror_backward(grad_output, value, spatial_shapes, sampling_locations, attention_weights):
    """The backward kernel's arithmetic: per-corner dot products of grad_output and value give all three grads."""
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    v = value.to(acc)
    loc, aw = sampling_locations.to(acc), attention_weights.to(acc)
    b, q, m, _, _, _ = loc.shape
    d = v.shape[-1]
    go = grad_output.to(acc).view(b, q, m, 1, d)
    grad_value = torch.zeros_like(v)
    grad_loc = torch.zeros_like(loc)
    grad_w = torch.zeros_like(aw)
    for lvl, ((h, w), st) in enumerate(zip(*_levels(spatial_shapes))):
        idx, cw, valid, (inside, lh, lw, hh, hw) = _corners(loc[:, :, :, lvl], h, w)
        value_l = v[:, st:st + h * w]
        a = aw[:, :, :, lvl]
        # dot[c] = <grad_output, value at corner c>; a corner outside the map reads zero
        dots = [(go * _gather(value_l, i)).sum(-1) * ok for i, ok in zip(idx, valid)]
        grad_w[:, :, :, lvl] = sum(c * dt for c, dt in zip(cw, dots))
        grad_loc[:, :, :, lvl, :, 0] = inside * a * w * (hh * (dots[1] - dots[0]) + lh * (dots[3] - dots[2]))
        grad_loc[:, :, :, lvl, :, 1] = inside * a * h * (hw * (dots[2] - dots[0]) + lw * (dots[3] - dots[1]))
        gv_l = grad_value[:, st:st + h * w].permute(0, 2, 1, 3)  # (B, M, HW, D) view
        for i, c in zip(idx, cw):
            contrib = ((a * c)[..., None] * go).permute(0, 2, 1, 3, 4).reshape(b, m, -1, d)  # (B, M, Q*P, D)
            index = i.permute(0, 2, 1, 3).reshape(b, m, -1, 1).expand(-1, -1, -1, d)
            gv_l.scatter_add_(2, index, contrib)
    return (grad_value.to(value.dtype), grad_loc.to(sampling_locations.dtype),
            grad_w.to(attention_weights.dtype))


def make_inputs(b, q, m, d, shapes, p, dtype=torch.float64, device="cpu", seed=0, loc_dtype=None,
                padding=0.15):
    """value ~ N(0, 1), locations uniform in [-padding, 1 + padding] (some points partly or fully outside),
    softmax-normalized weights."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    num_levels = len(shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, m, num_levels, p, 2, generator=g, dtype=torch.float64) * (1 + 2 * padding) - padding
    weights = torch.randn(b, q, m, num_levels * p, generator=g, dtype=torch.float64).softmax(-1)
    weights = weights.view(b, q, m, num_levels, p)
    loc_dtype = dtype if loc_dtype is None else loc_dtype
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    return (value.to(device, dtype), spatial_shapes, level_start_index, loc.to(device, loc_dtype),
            weights.to(device, loc_dtype))


ODD_SHAPES = [(7, 9), (4, 5), (2, 3), (1, 1)]


# --------------------------------------------------------------------------------------------------------------------
# CPU: the kernels' arithmetic and the import path
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 8])
def test_mirror_forward_matches_pytorch_op(d):
    value, shapes, _, loc, weights = make_inputs(2, 5, 3, d, ODD_SHAPES, 3, seed=d, padding=0.3)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(mirror_forward(value, shapes, loc, weights), ref, rtol=1e-10, atol=1e-10)


def test_mirror_backward_matches_autograd_of_pytorch_op():
    value, shapes, _, loc, weights = make_inputs(2, 5, 3, 4, ODD_SHAPES, 3, seed=11, padding=0.3)
    value, loc, weights = (t.requires_grad_() for t in (value, loc, weights))
    out = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(12))
    ref = torch.autograd.grad(out, (value, loc, weights), grad_out)
    got = mirror_backward(grad_out, value.detach(), shapes, loc.detach(), weights.detach())
    for name, a, r in zip(("value", "sampling_locations", "attention_weights"), got, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_import_never_loads_the_extension():
    code = ("import sys, detrex, detrex.layers, detrex.layers.msda_op, detrex.layers.multi_scale_deform_attn\n"
            "assert 'detrex._C' not in sys.modules, 'importing detrex loaded the compiled extension'\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_missing_extension_returns_none_with_reason(monkeypatch):
    previous = msda_op._reset_for_tests()
    try:
        monkeypatch.setattr(msda_op, "EXTENSION_MODULE", "detrex._C_absent_for_this_test")
        assert msda_op.load_extension() is None
        assert "not built" in msda_op.extension_error()
        assert msda_op.is_available() is False
        value, shapes, _, loc, weights = make_inputs(1, 2, 1, 2, [(2, 2)], 1)
        with pytest.raises(RuntimeError, match="compiled op is not available"):
            msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights)
    finally:
        msda_op._op, msda_op._error = previous


# --------------------------------------------------------------------------------------------------------------------
# CPU, slow: the extension compiles with nvcc, and its registration works (CPU stand-in kernels)
# --------------------------------------------------------------------------------------------------------------------
_REGISTRATION_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch.utils import cpp_extension
    sys.path.insert(0, {tests_dir!r})
    import test_msda_cuda as t

    start = time.time()
    cpp_extension.load(
        name="detrex_msda_ci", sources=[{cpp!r}, {cu!r}], build_directory={build!r},
        extra_cflags=["-O2"], extra_cuda_cflags=["-O2"], verbose=False)
    print(f"BUILD_SECONDS {{time.time() - start:.1f}}", flush=True)

    # loading the module registered the schemas (C++) and, via its init, the fake kernels and autograd (Python)
    from detrex.layers import msda_op
    assert msda_op._python_side_registered
    op = torch.ops.detrex.ms_deform_attn

    # CPU stand-ins with the kernels' arithmetic, so the registration can be exercised without a GPU
    lib = torch.library.Library("detrex", "IMPL")
    # (the dispatcher drops arguments equal to their schema default, hence step=64)
    lib.impl("ms_deform_attn", lambda v, ss, lsi, loc, w, step=64: t.mirror_forward(v, ss, loc, w), "CPU")
    lib.impl("ms_deform_attn_backward",
             lambda go, v, ss, lsi, loc, w, step=64: t.mirror_backward(go, v, ss, loc, w), "CPU")

    value, ss, lsi, loc, w = t.make_inputs(2, 3, 2, 4, [(3, 5), (2, 2)], 2, seed=3)
    value, loc, w = (x.requires_grad_() for x in (value, loc, w))
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, ss, lsi, b, c, 64), (value, loc, w))

    torch.library.opcheck(op.default, (value, ss, lsi, loc, w, 64))

    meta = op(value.to("meta"), ss, lsi, loc.to("meta"), w.to("meta"), 64)
    assert meta.shape == (2, 3, 8) and meta.device.type == "meta"

    def f(a, b, c):
        return (op(a, ss, lsi, b, c, 64) ** 2).sum()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(value, loc, w), (value, loc, w))
    ref = torch.autograd.grad(f(value, loc, w), (value, loc, w))
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r)
    print("REGISTRATION_OK", flush=True)
""")


@pytest.mark.slow
def test_extension_compiles_and_registers(tmp_path):
    """Compile-only check of the CUDA sources with the installed nvcc (one architecture, -O2), then the op's
    registration with CPU stand-in kernels. Runs in a fresh process: the op namespace can be registered only once."""
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("nvcc not found: the compile-only check needs a CUDA toolkit")
    script = tmp_path / "check.py"
    script.write_text(_REGISTRATION_SCRIPT.format(
        tests_dir=str(Path(__file__).parent), cpp=str(CSRC / "msda_op.cpp"), cu=str(CSRC / "msda_kernels.cu"),
        build=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "2",
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    if not env.get("CUDA_HOME"):
        nvcc = Path(shutil.which("nvcc")).resolve()
        for home in (nvcc.parent.parent, Path("/usr/local/cuda")):
            if (home / "include" / "cuda_runtime.h").is_file():
                env["CUDA_HOME"] = str(home)
                break
    start = time.time()
    try:
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                             timeout=COMPILE_BUDGET_S, cwd=str(tmp_path))
    except subprocess.TimeoutExpired:
        pytest.fail(f"building the extension took more than {COMPILE_BUDGET_S} s")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "BUILD_SECONDS" in out and "REGISTRATION_OK" in out, out[-4000:]
    print(f"extension build + registration checks: {time.time() - start:.0f} s")


# --------------------------------------------------------------------------------------------------------------------
# GPU: the CUDA kernels
# --------------------------------------------------------------------------------------------------------------------
def _cuda_op():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    op = msda_op.load_extension()
    if op is None:
        pytest.skip(f"CUDA op not built: {msda_op.extension_error()} (FORCE_CUDA=1 pip install -e .)")
    return op


#: Documented float16 / bfloat16 tolerances: max abs error over max |reference| (normalized), against float64 on
#: the same rounded inputs. Outputs round once to the storage dtype (2^-11 / 2^-8 relative); sums are float32.
HALF_TOLERANCES = {
    torch.float16: {"output": 2e-3, "value": 2e-3, "sampling_locations": 1e-2, "attention_weights": 5e-3},
    torch.bfloat16: {"output": 1.6e-2, "value": 1.6e-2, "sampling_locations": 4e-2, "attention_weights": 3e-2},
}
GPU_CASES = [  # (B, Q, M, D, shapes, P)
    (2, 13, 2, 32, ODD_SHAPES, 3),  # vectorised path, G = 8 lanes (float32)
    (3, 9, 3, 30, ODD_SHAPES, 2),  # D not a multiple of the vector width: scalar path
    (1, 7, 2, 71, [(5, 3), (1, 2)], 4),  # D > 32 lanes: several channel chunks per lane
    (2, 5, 1, 256, [(6, 7)], 5),  # D = 256: two vector chunks per lane
    (1, 40, 8, 8, [(13, 21), (7, 11)], 4),  # many groups per block, P * L > G
]


def _ref_and_grads(value, ss, loc, w, grad_out):
    v, l_, a = (x.detach().double().cpu().requires_grad_() for x in (value, loc, w))
    out = multi_scale_deformable_attn_pytorch(v, ss.cpu(), l_, a)
    grads = torch.autograd.grad(out, (v, l_, a), grad_out.detach().double().cpu())
    return out, grads


def _op_and_grads(op, value, ss, lsi, loc, w, grad_out, step=64):
    v, l_, a = (x.detach().requires_grad_() for x in (value, loc, w))
    out = op(v, ss, lsi, l_, a, step)
    grads = torch.autograd.grad(out, (v, l_, a), grad_out)
    return out, grads


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_cuda_matches_pytorch_op(dtype, case):
    op = _cuda_op()
    b, q, m, d, shapes, p = GPU_CASES[case]
    value, ss, lsi, loc, w = make_inputs(b, q, m, d, shapes, p, dtype=dtype, device="cuda", seed=case)
    grad_out = torch.randn(b, q, m * d, device="cuda", dtype=dtype, generator=None)
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert out.dtype == dtype and out.shape == (b, q, m * d)
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        assert g.dtype == dtype
        torch.testing.assert_close(g.cpu().double(), r, **tol, msg=f"grad of {name}")


@pytest.mark.gpu
def test_cuda_gradcheck_float64():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 3, 2, 4, [(3, 5), (2, 2)], 2, device="cuda", seed=5)
    inputs = tuple(x.requires_grad_() for x in (value, loc, w))
    assert torch.autograd.gradcheck(lambda a, b_, c: op(a, ss, lsi, b_, c, 64), inputs, nondet_tol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loc_dtype", ["same", "float32"])
def test_cuda_half_precision_within_documented_tolerance(dtype, loc_dtype):
    op = _cuda_op()
    ldt = dtype if loc_dtype == "same" else torch.float32
    value, ss, lsi, loc, w = make_inputs(2, 17, 4, 32, ODD_SHAPES, 4, dtype=dtype, device="cuda", seed=7,
                                         loc_dtype=ldt)
    grad_out = torch.randn(2, 17, 4 * 32, device="cuda").to(dtype)
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    assert out.dtype == dtype
    tol = HALF_TOLERANCES[dtype]

    def check(name, got, want):
        err = (got.detach().cpu().double() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= tol[name], f"{dtype} (locations {ldt}) {name}: normalized max error {err:.2e} > {tol[name]}"

    check("output", out, ref)
    assert grads[0].dtype == dtype and grads[1].dtype == ldt and grads[2].dtype == ldt
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        check(name, g, r)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,step", [(5, 2), (3, 64), (1, 1)])
def test_cuda_any_batch_and_im2col_step(batch, step):
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(batch, 6, 2, 16, ODD_SHAPES, 2, dtype=torch.float32, device="cuda", seed=9)
    grad_out = torch.randn(batch, 6, 32, device="cuda")
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out, step=step)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu().double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_layer_with_padding_mask_matches_pytorch_path(monkeypatch):
    _cuda_op()
    from detrex.layers import msda_dispatch
    from detrex.layers.multi_scale_deform_attn import MultiScaleDeformableAttention

    torch.manual_seed(0)
    layer = MultiScaleDeformableAttention(embed_dim=64, num_heads=4, num_levels=2, num_points=3, dropout=0.0,
                                          batch_first=True).cuda()
    shapes = torch.tensor([[9, 11], [5, 6]], device="cuda")
    s = int(shapes.prod(1).sum())
    mask = torch.zeros(2, s, dtype=torch.bool, device="cuda")
    mask[1, 70:99] = True  # padded tokens of the second image, level 0 right part
    mask[1, 99 + 20:] = True
    query = torch.randn(2, s, 64, device="cuda", requires_grad=True)
    ref_pts = torch.rand(2, s, 2, 2, device="cuda")

    def run():
        layer.zero_grad()
        query.grad = None
        out = layer(query, value=query, key_padding_mask=mask, reference_points=ref_pts, spatial_shapes=shapes)
        out.square().sum().backward()
        return out.detach(), query.grad.detach(), layer.sampling_offsets.weight.grad.detach()

    msda_dispatch.reset_compiled_op_cache()
    assert msda_dispatch.compiled_op_for(query) is not None
    got = run()
    monkeypatch.setenv("DETREX_MSDA_IMPL", "pytorch")
    ref = run()
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_torch_compile_fullgraph():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 8, 2, 32, ODD_SHAPES, 2, dtype=torch.float32, device="cuda", seed=13)

    def f(v, l_, a):
        return (op(v * 2, ss, lsi, l_, a, 64).relu() ** 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    inputs = [x.detach().requires_grad_() for x in (value, loc, w)]
    got_loss = compiled(*inputs)
    got = torch.autograd.grad(got_loss, inputs)
    ref_loss = f(*inputs)
    ref = torch.autograd.grad(ref_loss, inputs)
    torch.testing.assert_close(got_loss, ref_loss)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_autocast_reads_inputs_in_their_dtypes():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 10, 2, 32, ODD_SHAPES, 2, dtype=torch.float32, device="cuda", seed=17)
    proj = torch.nn.Linear(32, 32).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = proj(value)  # bfloat16 under autocast
        out = op(v, ss, lsi, loc, w.softmax(-1), 64)  # float32 locations and weights
    assert v.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    ref = multi_scale_deformable_attn_pytorch(v.detach().double(), ss, loc.double(), w.softmax(-1).double())
    err = (out.detach().double() - ref).abs().max() / ref.abs().max()
    assert err <= HALF_TOLERANCES[torch.bfloat16]["output"]


@pytest.mark.gpu
def test_cuda_input_errors_name_the_argument():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(1, 4, 2, 8, [(3, 3)], 2, dtype=torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="value must be contiguous"):
        op(value.transpose(2, 3).contiguous().transpose(2, 3), ss, lsi, loc, w, 64)
    with pytest.raises(RuntimeError, match="sampling_locations must be on value's device"):
        op(value, ss, lsi, loc.cpu(), w, 64)
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        op(value, ss, lsi, loc, w[..., :1], 64)
    with pytest.raises(RuntimeError, match="spatial_shapes must be"):
        op(value, ss.view(-1), lsi, loc, w, 64)
    with pytest.raises(RuntimeError, match="value must be float64, float32, float16 or bfloat16"):
        op(value.to(torch.float8_e4m3fn) if hasattr(torch, "float8_e4m3fn") else value.int(), ss, lsi, loc, w, 64)


@pytest.mark.gpu
def test_cuda_empty_queries():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 0, 2, 8, [(3, 3)], 2, dtype=torch.float32, device="cuda")
    out = op(value, ss, lsi, loc, w, 64)
    assert out.shape == (2, 0, 16)
