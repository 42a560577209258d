"""The optional CUDA multi-scale deformable attention op (``detrex/layers/csrc``, ``detrex.layers.msda_op``).

Three tiers:

- CPU, always: a vectorised PyTorch mirror of the kernels' arithmetic (corner validity, bilinear weights, the
  dot-product form of the backward with its ``W`` / ``H`` scaling) is checked against the pure-PyTorch op and its
  autograd; importing ``detrex.layers.msda_op`` never loads or needs the extension; every bad input in
  ``BAD_INPUTS`` is rejected by the Python checks (``msda_op.check_inputs``) with its message, before any op runs.
- CPU, ``slow``, needs ``nvcc``: the extension compiles once per session (one architecture, time-boxed); in fresh
  processes, its schemas plus the Python registration (fake kernels, autograd, backward variant selection) pass
  ``torch.library.opcheck``, ``gradcheck`` and a ``torch.compile(fullgraph=True)`` trace with the kernel mirror
  standing in as CPU kernels, and its C++ CPU kernels reject every bad input with the same message as Python (one
  process per input, so a crash fails that test instead of killing pytest).
- GPU (``gpu`` marker; skipped without CUDA or without the built extension): the CUDA kernels against the
  pure-PyTorch op in float64/float32, gradcheck, float16/bfloat16 within the tolerances documented at
  ``HALF_TOLERANCES``, odd level sizes, padding masks, batch sizes that do not divide ``im2col_step``,
  ``torch.compile``, autocast, input errors (one process per input); every correct backward variant
  (``msda_op.BACKWARD_VARIANTS``) passes the same checks as the default kernel.
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
# bad inputs: the Python checks (always) and the C++ checks (compiled extension, CPU kernels; GPU)
# --------------------------------------------------------------------------------------------------------------------
def _strided(t, a, b):
    """``t`` with its values unchanged but dims ``a`` and ``b`` stored swapped (same shape, not contiguous)."""
    return t.transpose(a, b).contiguous().transpose(a, b)


#: case -> (op, how to break the call, expected message after "<op>: "). Base call: value (1, 9, 2, 8) float32, one
#: 3x3 level, sampling_locations (1, 4, 2, 1, 2, 2), attention_weights (1, 4, 2, 1, 2), grad_output (1, 4, 16).
#: "{dev}" is the device of the tensors. Messages are written out here, not taken from the code under test.
BAD_INPUTS = {
    "value_rank": ("fwd", "v = v.flatten(2)",
                   "value must be (B, S, M, D) = (batch, tokens, heads, channels per head), got (1, 9, 16)"),
    "value_dtype": ("fwd", "v = v.int()", "value must be float64, float32, float16 or bfloat16, got torch.int32"),
    "value_strided": ("fwd", "v = strided(v, 2, 3)",
                      "value must be contiguous (call .contiguous()), got shape (1, 9, 2, 8) with strides "
                      "(144, 16, 1, 2)"),
    "locations_shape": ("fwd", "loc = loc[:, :, :1].contiguous()",
                        "sampling_locations must be (B, Q, M, L, P, 2) with B=1, M=2 (value (1, 9, 2, 8)), got "
                        "(1, 4, 1, 1, 2, 2)"),
    "locations_dtype": ("fwd", "loc = loc.long()",
                        "sampling_locations must be a floating-point tensor, got torch.int64"),
    "locations_strided": ("fwd", "loc = strided(loc, 1, 2)",
                          "sampling_locations must be contiguous (call .contiguous()), got strides "
                          "(32, 4, 16, 4, 2, 1)"),
    "weights_shape": ("fwd", "w = w[..., :1].contiguous()",
                      "attention_weights must be (B, Q, M, L, P) = (1, 4, 2, 1, 2) to match sampling_locations, got "
                      "(1, 4, 2, 1, 1)"),
    "weights_dtype": ("fwd", "w = w.int()", "attention_weights must be a floating-point tensor, got torch.int32"),
    "weights_strided": ("fwd", "w = strided(w, 1, 2)",
                        "attention_weights must be contiguous (call .contiguous()), got strides (16, 2, 8, 2, 1)"),
    "shapes_1d": ("fwd", "ss = ss.view(-1)", "spatial_shapes must be (L, 2) = (1, 2) holding (H_l, W_l), got (2,)"),
    "shapes_dtype": ("fwd", "ss = ss.float()", "spatial_shapes must be an integer tensor, got torch.float32"),
    "starts_shape": ("fwd", "lsi = lsi[:0]", "level_start_index must be (L,) = (1,), got (0,)"),
    "starts_dtype": ("fwd", "lsi = lsi.double()", "level_start_index must be an integer tensor, got torch.float64"),
    "im2col_step": ("fwd", "step = 0", "im2col_step must be positive, got 0"),
    "grad_shape": ("bwd", "go = go[:, :2]", "grad_output must be (B, Q, M * D) = (1, 4, 16), got (1, 2, 16)"),
    "grad_dtype": ("bwd", "go = go.int()", "grad_output must be a floating-point tensor, got torch.int32"),
    "variant": ("bwd", "variant = 7",
                "variant must be 0-5 or 10-14 (detrex.layers.msda_op.BACKWARD_VARIANTS), got 7"),
    # devices: a CPU value is refused by the CPU kernels after every other check; on a GPU, a tensor left on the CPU
    "cpu_value": ("fwd", "pass",
                  "value must be a CUDA tensor, got device cpu (the pure-PyTorch op serves other devices)"),
    "cpu_value_bwd": ("bwd", "pass",
                      "value must be a CUDA tensor, got device cpu (the pure-PyTorch op serves other devices)"),
    "locations_on_cpu": ("fwd", "loc = loc.cpu()", "sampling_locations must be on value's device {dev}, got cpu"),
    "weights_on_cpu": ("fwd", "w = w.cpu()", "attention_weights must be on value's device {dev}, got cpu"),
    "grad_on_cpu": ("bwd", "go = go.cpu()", "grad_output must be on value's device {dev}, got cpu"),
}
CPU_ONLY_CASES = ("cpu_value", "cpu_value_bwd")
GPU_ONLY_CASES = ("locations_on_cpu", "weights_on_cpu", "grad_on_cpu")

#: Builds the bad call of a case (``CASE``, ``DEVICE`` and, for the compiled op, ``torch.ops.detrex`` in scope);
#: shared by the in-process Python checks and the one-process-per-case C++ checks.
_BAD_CALL = """
def strided(t, a, b):
    return t.transpose(a, b).contiguous().transpose(a, b)
g = torch.Generator().manual_seed(0)
v = torch.randn(1, 9, 2, 8, generator=g).to(DEVICE)
loc = torch.rand(1, 4, 2, 1, 2, 2, generator=g).to(DEVICE)
w = torch.rand(1, 4, 2, 1, 2, generator=g).to(DEVICE)
ss = torch.tensor([[3, 3]], device=DEVICE)
lsi = torch.tensor([0], device=DEVICE)
go = torch.randn(1, 4, 16, generator=g).to(DEVICE)
step, variant = 64, 0
KIND, BREAK = CASES[CASE][:2]
exec(BREAK)
OP = "ms_deform_attn" if KIND == "fwd" else "ms_deform_attn_backward"
ARGS = (v, ss, lsi, loc, w, step) if KIND == "fwd" else (go, v, ss, lsi, loc, w, step, variant)
"""


def _bad_call(case, device):
    scope = {"torch": torch, "CASES": BAD_INPUTS, "CASE": case, "DEVICE": device}
    exec(_BAD_CALL, scope)
    return scope["OP"], scope["ARGS"]


def _expected_message(case, device):
    kind, _, message = BAD_INPUTS[case]
    op = "ms_deform_attn" if kind == "fwd" else "ms_deform_attn_backward"
    return f"{op}: " + message.format(dev=device)


def _python_check(op, args):
    if op == "ms_deform_attn":
        msda_op.check_inputs(op, *args)
    else:
        go, *rest = args
        msda_op.check_inputs(op, *rest[:-1], grad_output=go, variant=rest[-1])


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if c not in GPU_ONLY_CASES])
def test_python_checks_name_the_argument(case):
    op, args = _bad_call(case, "cpu")
    with pytest.raises(msda_op.MSDAInputError) as info:
        _python_check(op, args)
    assert str(info.value) == _expected_message(case, "cpu")
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def test_python_layer_rejects_before_the_op_runs(monkeypatch):
    """The dispatch point and ms_deform_attn_cuda check in Python: a bad input never reaches the compiled op."""
    from detrex.layers import msda_dispatch
    from detrex.layers.multi_scale_deform_attn import ms_deform_attn

    calls = []
    monkeypatch.setattr(msda_dispatch, "COMPILED_OP_DEVICE_TYPES", ("cpu",))  # the stand-in serves CPU tensors
    msda_dispatch.register_compiled_op(lambda *a: calls.append(a))
    try:
        value, ss, lsi, loc, w = make_inputs(1, 4, 2, 8, [(3, 3)], 2, dtype=torch.float32)
        with pytest.raises(msda_op.MSDAInputError, match=r"attention_weights must be \(B, Q, M, L, P\) = "
                                                         r"\(1, 4, 2, 1, 2\) to match sampling_locations, got "
                                                         r"\(1, 4, 2, 1, 1\)"):
            ms_deform_attn(value, ss, lsi, loc, w[..., :1], 64)
        with pytest.raises(msda_op.MSDAInputError, match=r"spatial_shapes must be \(L, 2\) = \(1, 2\)"):
            ms_deform_attn(value, ss.view(-1), None, loc, w, 64)
        with pytest.raises(msda_op.MSDAInputError, match="sampling_locations must be a floating-point tensor"):
            ms_deform_attn(value, [(3, 3)], None, loc.long(), w, 64)
        assert calls == []
        ms_deform_attn(value.transpose(2, 3).contiguous().transpose(2, 3), ss, None, loc, w, 64)  # made contiguous
        assert len(calls) == 1 and calls[0][0].is_contiguous() and torch.equal(calls[0][2], torch.tensor([0]))
    finally:
        msda_dispatch.register_compiled_op(None)

    # the CUDA entry point of msda_op checks before it calls the (here: stand-in) op
    previous = msda_op._reset_for_tests()
    try:
        msda_op._op = lambda *a: calls.append(a)
        with pytest.raises(msda_op.MSDAInputError, match="value must be a CUDA tensor, got device cpu"):
            msda_op.ms_deform_attn_cuda(value, ss, None, loc, w)
        with pytest.raises(msda_op.MSDAInputError, match="value must be float64, float32, float16 or bfloat16"):
            msda_op.ms_deform_attn_cuda(value.int(), ss, None, loc, w)
        assert len(calls) == 1
    finally:
        msda_op._op, msda_op._error = previous


def test_backward_variant_names():
    assert msda_op.BACKWARD_VARIANTS["default"] == 0
    assert msda_op.PROFILING_VARIANTS < set(msda_op.BACKWARD_VARIANTS)
    with pytest.raises(ValueError, match="unknown variant 'fastest'"):
        with msda_op.backward_variant("fastest"):
            pass
    with msda_op.backward_variant("vec4"):
        assert msda_op._backward_variant == 10
    assert msda_op._backward_variant == 0


# --------------------------------------------------------------------------------------------------------------------
# CPU, slow: the extension compiles with nvcc (once per session); registration and C++ checks in fresh processes
# --------------------------------------------------------------------------------------------------------------------
_BUILD_SCRIPT = textwrap.dedent("""
    import time
    from torch.utils import cpp_extension
    start = time.time()
    path = cpp_extension.load(
        name="detrex_msda_ci", sources=[{cpp!r}, {cu!r}], build_directory={build!r},
        extra_cflags=["-O2"], extra_cuda_cflags=["-O2"], is_python_module=False, verbose=False)
    print(f"BUILD_SECONDS {{time.time() - start:.1f}}", flush=True)
    print(f"LIBRARY {{path}}", flush=True)
""")

_LOAD_MODULE = """
import importlib.util
spec = importlib.util.spec_from_file_location("detrex_msda_ci", {library!r})
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)  # registers the schemas and kernels (C++), then the fake kernels and autograd (Python)
"""


def _cuda_home_env(env):
    if not env.get("CUDA_HOME"):
        nvcc = Path(shutil.which("nvcc")).resolve()
        for home in (nvcc.parent.parent, Path("/usr/local/cuda")):
            if (home / "include" / "cuda_runtime.h").is_file():
                env["CUDA_HOME"] = str(home)
                break
    return env


@pytest.fixture(scope="session")
def compiled_extension(tmp_path_factory):
    """The extension compiled once per test session with the installed nvcc (one architecture, -O2): the path of
    the shared library. Compile-only: no GPU is needed (its CPU kernels run the input checks)."""
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("nvcc not found: the compile-only check needs a CUDA toolkit")
    build = tmp_path_factory.mktemp("msda_extension")
    script = build / "build.py"
    script.write_text(_BUILD_SCRIPT.format(cpp=str(CSRC / "msda_op.cpp"), cu=str(CSRC / "msda_kernels.cu"),
                                           build=str(build)))
    env = _cuda_home_env({**os.environ, "PYTHONPATH": str(REPO), "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "2",
                          "TORCH_EXTENSIONS_DIR": str(build / "ext")})
    start = time.time()
    try:
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                             timeout=COMPILE_BUDGET_S, cwd=str(build))
    except subprocess.TimeoutExpired:
        pytest.fail(f"building the extension took more than {COMPILE_BUDGET_S} s")
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "LIBRARY " in out, out[-4000:]
    library = out.split("LIBRARY ", 1)[1].splitlines()[0].strip()
    assert Path(library).is_file(), out[-4000:]
    print(f"extension build: {time.time() - start:.0f} s")
    return library


_REGISTRATION_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    sys.path.insert(0, {tests_dir!r})
    import test_msda_cuda as t
""") + _LOAD_MODULE + textwrap.dedent("""
    from detrex.layers import msda_op
    assert msda_op._python_side_registered
    op = torch.ops.detrex.ms_deform_attn

    # CPU stand-ins with the kernels' arithmetic (they replace the C++ CPU kernels, which only check the inputs), so
    # the registration can be exercised without a GPU; the backward records the variant it is asked for
    variants = []
    lib = torch.library.Library("detrex", "IMPL")
    # (the dispatcher drops arguments equal to their schema default, hence step=64, variant=0)
    lib.impl("ms_deform_attn", lambda v, ss, lsi, loc, w, step=64: t.mirror_forward(v, ss, loc, w), "CPU")
    def backward(go, v, ss, lsi, loc, w, step=64, variant=0):
        variants.append(variant)
        return t.mirror_backward(go, v, ss, loc, w)
    lib.impl("ms_deform_attn_backward", backward, "CPU")

    value, ss, lsi, loc, w = t.make_inputs(2, 3, 2, 4, [(3, 5), (2, 2)], 2, seed=3)
    value, loc, w = (x.requires_grad_() for x in (value, loc, w))
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, ss, lsi, b, c, 64), (value, loc, w))

    torch.library.opcheck(op.default, (value, ss, lsi, loc, w, 64))

    meta = op(value.to("meta"), ss, lsi, loc.to("meta"), w.to("meta"), 64)
    assert meta.shape == (2, 3, 8) and meta.device.type == "meta"
    gmeta = torch.ops.detrex.ms_deform_attn_backward(
        meta, value.to("meta"), ss, lsi, loc.to("meta"), w.to("meta"), 64, 10)
    assert [g.shape for g in gmeta] == [value.shape, loc.shape, w.shape]

    def f(a, b, c):
        return (op(a, ss, lsi, b, c, 64) ** 2).sum()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(value, loc, w), (value, loc, w))
    ref = torch.autograd.grad(f(value, loc, w), (value, loc, w))
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r)

    # the autograd backward passes the selected variant to the backward op
    variants.clear()
    with msda_op.backward_variant("point_parallel"):
        torch.autograd.grad(op(value, ss, lsi, loc, w, 64).sum(), (value,))
    torch.autograd.grad(op(value, ss, lsi, loc, w, 64).sum(), (value,))
    assert variants == [13, 0], variants
    print("REGISTRATION_OK", flush=True)
""")


@pytest.mark.slow
def test_extension_compiles_and_registers(compiled_extension, tmp_path):
    """The compiled schemas plus the Python registration (fake kernels, autograd) with CPU stand-in kernels, in a
    fresh process (the op namespace can be registered only once per process)."""
    script = tmp_path / "check.py"
    script.write_text(_REGISTRATION_SCRIPT.format(tests_dir=str(Path(__file__).parent), library=compiled_extension))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "REGISTRATION_OK" in out, out[-4000:]


_CPP_CHECK_SCRIPT = """
import json, os, signal, sys, torch
torch.ops.load_library({library!r})  # schemas and kernels only; the CPU kernels run the C++ input checks
CASES = {cases!r}
DEVICE = {device!r}


def run_case(case):
    scope = {{"torch": torch, "CASES": CASES, "CASE": case, "DEVICE": DEVICE}}
    exec({bad_call!r}, scope)
    try:
        getattr(torch.ops.detrex, scope["OP"])(*scope["ARGS"])
        return {{"error": None}}
    except Exception as e:
        return {{"error": type(e).__name__, "message": str(e)}}


for case in {run!r}:
    # each case in its own forked process: a crash (or a hang, after 60 s) ends that process only
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        signal.alarm(60)
        result = run_case(case)
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        result = {{"died": -os.WTERMSIG(status)}}
    elif os.WEXITSTATUS(status) != 0 or not data:
        result = {{"died": os.WEXITSTATUS(status)}}
    else:
        result = json.loads(data)
    print("RESULT " + json.dumps({{"case": case, **result}}), flush=True)
"""


def _run_cpp_checks(library, cases, device, table=BAD_INPUTS):
    """Call the compiled op on the bad input of each case, each in its own process (forked from one helper process
    that has imported torch and loaded the library, so a case costs milliseconds, not a Python start-up): {case:
    exception type and message}, or {"died": exit status} for a case whose process crashed."""
    import json

    script = _CPP_CHECK_SCRIPT.format(library=library, cases=table, run=list(cases), device=device,
                                      bad_call=_BAD_CALL)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    results = {}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            record = json.loads(line[len("RESULT "):])
            results[record.pop("case")] = record
    for case in cases:  # the helper itself died (e.g. loading the library): every case left is a failure
        results.setdefault(case, {"died": res.returncode, "output": (res.stdout + res.stderr)[-3000:]})
    return results


def _assert_cpp_result(result, case, device):
    assert "died" not in result, (f"the process died (exit status {result.get('died')}) on the bad input {case!r}:\n"
                                  f"{result.get('output')}")
    assert result["error"] == "RuntimeError", result
    assert result["message"].splitlines()[0] == _expected_message(case, device), result["message"]


CPU_BAD_INPUTS = [c for c in BAD_INPUTS if c not in GPU_ONLY_CASES]


@pytest.fixture(scope="module")
def cpu_cpp_check_results(compiled_extension):
    return _run_cpp_checks(compiled_extension, CPU_BAD_INPUTS, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("case", CPU_BAD_INPUTS)
def test_cpp_checks_name_the_argument_on_cpu(case, cpu_cpp_check_results):
    """The C++ checks (second line, direct torch.ops calls) run on CPU tensors through the CPU kernels: the same
    message as the Python checks, from a clean RuntimeError; one process per input, so a crash fails only its test."""
    _assert_cpp_result(cpu_cpp_check_results[case], case, "cpu")


@pytest.mark.slow
def test_a_crash_fails_only_its_case(compiled_extension):
    """The harness above: a process that dies (here: SIGSEGV on purpose) is reported for its case, and the cases
    after it still run."""
    table = {"crash": ("fwd", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", ""),
             "value_dtype": BAD_INPUTS["value_dtype"]}
    results = _run_cpp_checks(compiled_extension, ["crash", "value_dtype"], "cpu", table=table)
    assert results["crash"]["died"] == -11
    _assert_cpp_result(results["value_dtype"], "value_dtype", "cpu")


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


#: the backward variants that must give correct results (the others leave a stage out, for profiling only)
CORRECT_VARIANTS = [n for n in msda_op.BACKWARD_VARIANTS if n not in msda_op.PROFILING_VARIANTS]


def _ref_and_grads(value, ss, loc, w, grad_out):
    v, l_, a = (x.detach().double().cpu().requires_grad_() for x in (value, loc, w))
    out = multi_scale_deformable_attn_pytorch(v, ss.cpu(), l_, a)
    grads = torch.autograd.grad(out, (v, l_, a), grad_out.detach().double().cpu())
    return out, grads


def _op_and_grads(op, value, ss, lsi, loc, w, grad_out, step=64, variant="default"):
    v, l_, a = (x.detach().requires_grad_() for x in (value, loc, w))
    out = op(v, ss, lsi, l_, a, step)
    with msda_op.backward_variant(variant):
        grads = torch.autograd.grad(out, (v, l_, a), grad_out)
    return out, grads


@pytest.mark.gpu
@pytest.mark.parametrize("variant", CORRECT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_cuda_matches_pytorch_op(dtype, case, variant):
    op = _cuda_op()
    b, q, m, d, shapes, p = GPU_CASES[case]
    value, ss, lsi, loc, w = make_inputs(b, q, m, d, shapes, p, dtype=dtype, device="cuda", seed=case)
    grad_out = torch.randn(b, q, m * d, device="cuda", dtype=dtype, generator=None)
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out, variant=variant)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert out.dtype == dtype and out.shape == (b, q, m * d)
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        assert g.dtype == dtype
        torch.testing.assert_close(g.cpu().double(), r, **tol, msg=f"grad of {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", CORRECT_VARIANTS)
def test_cuda_gradcheck_float64(variant):
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 3, 2, 4, [(3, 5), (2, 2)], 2, device="cuda", seed=5)
    inputs = tuple(x.requires_grad_() for x in (value, loc, w))
    with msda_op.backward_variant(variant):
        assert torch.autograd.gradcheck(lambda a, b_, c: op(a, ss, lsi, b_, c, 64), inputs, nondet_tol=1e-12)


def _check_half(dtype, ldt, variant, out, ref, grads, ref_grads):
    tol = HALF_TOLERANCES[dtype]

    def check(name, got, want):
        err = (got.detach().cpu().double() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= tol[name], (f"{dtype} (locations {ldt}, backward {variant}) {name}: normalized max error "
                                  f"{err:.2e} > {tol[name]}")

    check("output", out, ref)
    assert grads[0].dtype == dtype and grads[1].dtype == ldt and grads[2].dtype == ldt
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        check(name, g, r)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", CORRECT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loc_dtype", ["same", "float32"])
def test_cuda_half_precision_within_documented_tolerance(dtype, loc_dtype, variant):
    op = _cuda_op()
    ldt = dtype if loc_dtype == "same" else torch.float32
    value, ss, lsi, loc, w = make_inputs(2, 17, 4, 32, ODD_SHAPES, 4, dtype=dtype, device="cuda", seed=7,
                                         loc_dtype=ldt)
    grad_out = torch.randn(2, 17, 4 * 32, device="cuda").to(dtype)
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out, variant=variant)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    assert out.dtype == dtype
    _check_half(dtype, ldt, variant, out, ref, grads, ref_grads)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", CORRECT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_under_contention(dtype, variant, request):
    """Many queries sampling a small level (the encoder's 13x21 level receives ~1,300 contributions per value element):
    grad_value within HALF_TOLERANCES. The "native" variants round at every atomic addition in value's dtype, which
    may not hold here (xfail, not strict: the outcome is the measurement)."""
    if variant.startswith("native"):
        request.applymarker(pytest.mark.xfail(reason="grad_value accumulated in the half dtype", strict=False))
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 600, 2, 32, [(12, 16), (2, 3)], 4, dtype=dtype, device="cuda", seed=19,
                                         loc_dtype=torch.float32)
    grad_out = torch.randn(2, 600, 2 * 32, device="cuda").to(dtype)
    out, grads = _op_and_grads(op, value, ss, lsi, loc, w, grad_out, variant=variant)
    ref, ref_grads = _ref_and_grads(value, ss, loc, w, grad_out)
    _check_half(dtype, torch.float32, variant, out, ref, grads, ref_grads)


@pytest.mark.gpu
def test_cuda_profiling_variants_leave_their_stage_out():
    """The timing-only variants drop exactly the stage they name (so bench/msda.py --variants measures that stage)."""
    op = _cuda_op()
    bop = torch.ops.detrex.ms_deform_attn_backward
    value, ss, lsi, loc, w = make_inputs(2, 9, 2, 32, ODD_SHAPES, 2, dtype=torch.float32, device="cuda", seed=23)
    go = torch.randn(2, 9, 64, device="cuda")
    ref = bop(go, value, ss, lsi, loc, w, 64, 0)
    assert all(r.abs().sum() > 0 for r in ref)
    v = msda_op.BACKWARD_VARIANTS
    gv, gl, gw = bop(go, value, ss, lsi, loc, w, 64, v["no_scatter"])
    assert gv.abs().sum() == 0 and torch.allclose(gl, ref[1]) and torch.allclose(gw, ref[2])
    gv, gl, gw = bop(go, value, ss, lsi, loc, w, 64, v["no_point_grads"])
    assert torch.allclose(gv, ref[0], atol=1e-6) and gl.abs().sum() == 0 and gw.abs().sum() == 0
    gv, gl, gw = bop(go, value, ss, lsi, loc, w, 64, v["skeleton"])
    assert gv.abs().sum() == 0 and gl.abs().sum() == 0 and gw.abs().sum() == 0
    for name in ("no_zero_fill", "no_convert"):
        grads = bop(go, value.half(), ss, lsi, loc, w, 64, v[name])
        assert grads[0].shape == value.shape and grads[0].dtype == torch.float16
    assert op is not None


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


CUDA_BAD_INPUTS = [c for c in BAD_INPUTS if c not in CPU_ONLY_CASES]


@pytest.fixture(scope="module")
def cuda_cpp_check_results():
    """The compiled op (its C++ checks, called directly through torch.ops) on every bad CUDA input, one process per
    input (forked before CUDA is initialised; each initialises its own), so that a crash fails only its test."""
    _cuda_op()
    import importlib.util

    return _run_cpp_checks(importlib.util.find_spec(msda_op.EXTENSION_MODULE).origin, CUDA_BAD_INPUTS, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CUDA_BAD_INPUTS)
def test_cuda_input_errors_name_the_argument(case, cuda_cpp_check_results):
    """Each bad CUDA input: rejected by the Python checks, and by the compiled op itself with the same message."""
    dev = str(torch.device("cuda", torch.cuda.current_device()))
    op, args = _bad_call(case, "cuda")
    with pytest.raises(msda_op.MSDAInputError) as info:
        _python_check(op, args)
    assert str(info.value) == _expected_message(case, dev)
    _assert_cpp_result(cuda_cpp_check_results[case], case, dev)


@pytest.mark.gpu
def test_cuda_empty_queries():
    op = _cuda_op()
    value, ss, lsi, loc, w = make_inputs(2, 0, 2, 8, [(3, 3)], 2, dtype=torch.float32, device="cuda")
    out = op(value, ss, lsi, loc, w, 64)
    assert out.shape == (2, 0, 16)
