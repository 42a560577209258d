"""The optional compiled CUDA op for multi-scale deformable attention: loading and ``torch.library`` registration.

The extension ``detrex._C`` (sources in ``detrex/layers/csrc/``, built by ``setup.py`` only when a CUDA toolkit is
present or ``FORCE_CUDA=1``) defines, in C++ with ``TORCH_LIBRARY``::

    torch.ops.detrex.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step=64) -> output (B, Q, M * D)
    torch.ops.detrex.ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, im2col_step=64, variant=0)
        -> (grad_value, grad_sampling_locations, grad_attention_weights)

with CUDA kernels, and CPU kernels that only check the inputs and then refuse the device (so CPU-only CI reaches the
C++ checks). This module adds the Python side: fake (meta) kernels for both ops, so ``torch.compile`` traces through
them without a graph break, the autograd formula of the forward op (its backward calls the backward op; double
backward is not supported), and :func:`check_inputs`, the input checks of the C++ op in Python.

Input checks: :func:`ms_deform_attn_cuda` and :func:`detrex.layers.multi_scale_deform_attn.ms_deform_attn` run
:func:`check_inputs` before the op, so a bad input is rejected in Python, naming the argument, the expected and the
actual shape / dtype / device / strides, with :class:`MSDAInputError` (a ``ValueError`` and a ``RuntimeError``). The
C++ op runs the same checks with the same messages (second line, for direct ``torch.ops`` calls); its messages are
built from plain strings and integers, see ``csrc/msda_op.cpp`` for why (a segfault on one GPU build).

Backward variants (issue 16, profiling): :data:`BACKWARD_VARIANTS` names the backward kernel variants of the C++ op;
:func:`backward_variant` selects one for the autograd backward of the calls inside its ``with`` block (eager mode;
``torch.compile`` bakes in the variant current at tracing). The default, ``"default"``, is what every caller gets.

Importing ``detrex._C`` runs :func:`_register_python_side`, so the op is complete whichever of the two modules is
imported first; :mod:`detrex.layers.msda_dispatch` imports ``detrex._C`` lazily, the first time a CUDA tensor reaches
:func:`detrex.layers.multi_scale_deform_attn.ms_deform_attn`.

Importing this module never loads the extension and never fails because it is missing: :func:`load_extension`
tries once and returns ``None`` (with the reason in :func:`extension_error`) when it is not built or does not load.

Tensors and conventions (as the pure-PyTorch op, :func:`~detrex.layers.multi_scale_deform_attn.
multi_scale_deformable_attn_pytorch`): ``value`` ``(B, S, M, D)`` contiguous, levels concatenated level-major and
row-major; ``spatial_shapes`` ``(L, 2)`` int64 ``(H_l, W_l)`` and ``level_start_index`` ``(L,)`` int64, on the
value's device or the CPU; ``sampling_locations`` ``(B, Q, M, L, P, 2)`` normalized ``(x, y)``, ``align_corners=
False`` (pixel ``(i, j)`` is centred at ``((j + 0.5) / W, (i + 0.5) / H)``), points outside read zeros;
``attention_weights`` ``(B, Q, M, L, P)``. All three tensors must be contiguous (clear error otherwise;
:func:`ms_deform_attn_cuda` makes them so).

dtype and autocast policy:

- ``value`` may be float64, float32, float16 or bfloat16; the output and ``grad_value`` have value's dtype.
- For float16/bfloat16 values, locations and weights are read as float32 when either of them is float32 (what
  autocast produces: value from a Linear is low precision, locations ``ref + offset / size`` and softmaxed weights
  are float32) and in value's dtype when both have it; for float32/float64 values they are cast to value's dtype.
  Their gradients come back in their own dtypes.
- Sums are accumulated in float32 (float64 for float64); ``grad_value`` is accumulated with atomics in a float32
  buffer and rounded once, so float16/bfloat16 training does not lose small gradient contributions (the "native"
  backward variants, for profiling, accumulate in value's dtype instead).
- The op registers no autocast kernel: autocast falls through to it and it reads every input in the dtype it comes
  in (no upcast of the value tensor, unlike detrex's op, which ran float16 in float32). The output is value's
  dtype, where the pure-PyTorch op returns the promoted dtype (float32 for a bfloat16 value with float32
  locations); :meth:`MultiScaleDeformableAttention.attend` casts to value's dtype either way.
- ``im2col_step`` is accepted for compatibility with the original op and ignored: the whole batch is one launch,
  any batch size works.

Gradients of ``grad_value`` use float atomics, so backward results are not bitwise deterministic (as the original op).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "EXTENSION_MODULE",
    "OP_QUALNAME",
    "BACKWARD_QUALNAME",
    "load_extension",
    "extension_error",
    "is_available",
    "ms_deform_attn_cuda",
    "MSDAInputError",
    "check_inputs",
    "prepare_inputs",
    "BACKWARD_VARIANTS",
    "PROFILING_VARIANTS",
    "backward_variant",
]

logger = logging.getLogger(__name__)

#: The compiled extension (``setup.py`` builds it as ``detrex._C``).
EXTENSION_MODULE = "detrex._C"
OP_QUALNAME = "detrex::ms_deform_attn"
BACKWARD_QUALNAME = "detrex::ms_deform_attn_backward"

_UNSET = object()
_op = _UNSET  # cached result of load_extension()
_error: Optional[str] = None
_python_side_registered = False


#: Backward kernel variants of the C++ op (``csrc/msda.h``). "default" is the kernel every caller gets.
BACKWARD_VARIANTS = {
    "default": 0,
    # profiling only: one stage left out, results wrong by design (bench/msda.py --variants)
    "no_scatter": 1,  # grad_value not scattered (stays zero)
    "no_point_grads": 2,  # no value gathers / dot products: location and weight grads are zero
    "skeleton": 3,  # both: point loads, corner math and the writes only
    "no_zero_fill": 4,  # accumulation buffer not zero-filled (grad_value garbage)
    "no_convert": 5,  # float32 buffer not converted to value's dtype (grad_value uninitialised)
    # candidates: correct results (tests/layers/test_msda_cuda.py)
    "vec4": 10,  # float16/bfloat16: 4 channels per lane instead of 8 (twice the lanes, fewer registers)
    "native": 11,  # float16/bfloat16: grad_value accumulated in value's dtype (half2 atomics), no float32 buffer
    "native_vec4": 12,  # both
    "point_parallel": 13,  # one warp per (batch, query, head): several sampling points at once (few queries)
    "auto": 14,  # vec4 for half types, point_parallel when the default grid would not fill the GPU
}
#: Variants whose results are wrong by design (timing only).
PROFILING_VARIANTS = frozenset({"no_scatter", "no_point_grads", "skeleton", "no_zero_fill", "no_convert"})
_backward_variant = 0


@contextlib.contextmanager
def backward_variant(name: str) -> Iterator[None]:
    """Run the autograd backward of the compiled op with the backward kernel variant ``name`` inside the block."""
    global _backward_variant
    if name not in BACKWARD_VARIANTS:
        raise ValueError(f"backward_variant: unknown variant {name!r}; choose one of {sorted(BACKWARD_VARIANTS)}")
    previous, _backward_variant = _backward_variant, BACKWARD_VARIANTS[name]
    try:
        yield
    finally:
        _backward_variant = previous


# --------------------------------------------------------------------------------------------------------------------
# input checks: the C++ op's, in Python (same order, same messages; csrc/msda_op.cpp)
# --------------------------------------------------------------------------------------------------------------------
class MSDAInputError(ValueError, RuntimeError):
    """A bad input to the compiled op. Both a ``ValueError`` and a ``RuntimeError`` (what the C++ op raises)."""


_VALUE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_inputs(
    op: str,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    grad_output: Optional[torch.Tensor] = None,
    variant: Optional[int] = None,
    device_type: str = "cuda",
) -> None:
    """Raise :class:`MSDAInputError` naming the first argument the C++ op ``op`` would reject, and why.

    The checks and messages of ``csrc/msda_op.cpp`` (shapes, dtypes and contiguity; sizes; ``grad_output`` and
    ``variant`` for the backward; devices last). No host sync: the values of ``spatial_shapes`` /
    ``level_start_index`` are not read (the kernels treat a level that does not fit in ``value`` as empty).
    ``device_type`` is the device the op serves (a registered stand-in op may serve another device than CUDA).
    """

    def fail(msg: str) -> None:
        raise MSDAInputError(f"{op}: {msg}")

    tensors = (("value", value), ("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index),
               ("sampling_locations", sampling_locations), ("attention_weights", attention_weights))
    if grad_output is not None:
        tensors += (("grad_output", grad_output),)
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    loc, attw = sampling_locations, attention_weights

    if value.dim() != 4:
        fail(f"value must be (B, S, M, D) = (batch, tokens, heads, channels per head), got {tuple(value.shape)}")
    if value.dtype not in _VALUE_DTYPES:
        fail(f"value must be float64, float32, float16 or bfloat16, got {value.dtype}")
    if not value.is_contiguous():
        fail(f"value must be contiguous (call .contiguous()), got shape {tuple(value.shape)} with strides "
             f"{tuple(value.stride())}")
    b, _, m, _ = value.shape
    if loc.dim() != 6 or loc.shape[0] != b or loc.shape[2] != m or loc.shape[5] != 2:
        fail(f"sampling_locations must be (B, Q, M, L, P, 2) with B={b}, M={m} (value {tuple(value.shape)}), "
             f"got {tuple(loc.shape)}")
    if not loc.is_floating_point():
        fail(f"sampling_locations must be a floating-point tensor, got {loc.dtype}")
    if not loc.is_contiguous():
        fail(f"sampling_locations must be contiguous (call .contiguous()), got strides {tuple(loc.stride())}")
    if attw.shape != loc.shape[:5]:
        fail(f"attention_weights must be (B, Q, M, L, P) = {tuple(loc.shape[:5])} to match sampling_locations, "
             f"got {tuple(attw.shape)}")
    if not attw.is_floating_point():
        fail(f"attention_weights must be a floating-point tensor, got {attw.dtype}")
    if not attw.is_contiguous():
        fail(f"attention_weights must be contiguous (call .contiguous()), got strides {tuple(attw.stride())}")
    num_levels = loc.shape[3]
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[0] != num_levels or spatial_shapes.shape[1] != 2:
        fail(f"spatial_shapes must be (L, 2) = ({num_levels}, 2) holding (H_l, W_l), got {tuple(spatial_shapes.shape)}")
    if not _is_integer(spatial_shapes):
        fail(f"spatial_shapes must be an integer tensor, got {spatial_shapes.dtype}")
    if level_start_index.dim() != 1 or level_start_index.shape[0] != num_levels:
        fail(f"level_start_index must be (L,) = ({num_levels},), got {tuple(level_start_index.shape)}")
    if not _is_integer(level_start_index):
        fail(f"level_start_index must be an integer tensor, got {level_start_index.dtype}")
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step <= 0:
        fail(f"im2col_step must be positive, got {im2col_step}")
    if max(value.shape[1], value.shape[3], loc.shape[1], num_levels * loc.shape[4]) > _INT32_MAX:
        fail(f"sizes beyond 2^31 are not supported, got value {tuple(value.shape)} and sampling_locations "
             f"{tuple(loc.shape)}")
    if grad_output is not None:
        expected = (b, loc.shape[1], m * value.shape[3])
        if tuple(grad_output.shape) != expected:
            fail(f"grad_output must be (B, Q, M * D) = {expected}, got {tuple(grad_output.shape)}")
        if not grad_output.is_floating_point():
            fail(f"grad_output must be a floating-point tensor, got {grad_output.dtype}")
    if variant is not None and variant not in BACKWARD_VARIANTS.values():
        fail(f"variant must be 0-5 or 10-14 (detrex.layers.msda_op.BACKWARD_VARIANTS), got {variant}")

    if value.device.type != device_type:
        kind = "CUDA" if device_type == "cuda" else device_type
        fail(f"value must be a {kind} tensor, got device {value.device} (the pure-PyTorch op serves other devices)")
    for name, t in (("sampling_locations", loc), ("attention_weights", attw)):
        if t.device != value.device:
            fail(f"{name} must be on value's device {value.device}, got {t.device}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.device.type != "cpu" and t.device != value.device:
            fail(f"{name} must be on value's device {value.device} or on the CPU, got {t.device}")
    if grad_output is not None and grad_output.device != value.device:
        fail(f"grad_output must be on value's device {value.device}, got {grad_output.device}")


# --------------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (registered once the C++ schemas exist)
# --------------------------------------------------------------------------------------------------------------------
def _fake_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step=64):
    """Shape/dtype propagation for tracing: ``(B, Q, M * D)`` in value's dtype (as the CUDA kernel)."""
    torch._check(value.dim() == 4, lambda: f"ms_deform_attn: value must be (B, S, M, D), got {tuple(value.shape)}")
    torch._check(
        sampling_locations.dim() == 6 and sampling_locations.shape[-1] == 2,
        lambda: f"ms_deform_attn: sampling_locations must be (B, Q, M, L, P, 2), got {tuple(sampling_locations.shape)}",
    )
    torch._check(
        attention_weights.shape == sampling_locations.shape[:-1],
        lambda: (f"ms_deform_attn: attention_weights must be (B, Q, M, L, P) = {tuple(sampling_locations.shape[:-1])}"
                 f", got {tuple(attention_weights.shape)}"),
    )
    b, _, m, d = value.shape
    return value.new_empty((b, sampling_locations.shape[1], m * d))


def _fake_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   im2col_step=64, variant=0):
    """Gradients are contiguous and have the dtypes of the inputs they belong to."""
    return (value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.im2col_step = im2col_step


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = torch.ops.detrex.ms_deform_attn_backward(
        grad_output.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        ctx.im2col_step, _backward_variant,
    )
    needs = ctx.needs_input_grad
    return (grad_value if needs[0] else None, None, None, grad_locations if needs[3] else None,
            grad_weights if needs[4] else None, None)


def _register_python_side() -> None:
    """Register the fake kernels and the autograd formula; idempotent. Called by the extension when imported."""
    global _python_side_registered
    if _python_side_registered:
        return
    try:
        torch.ops.detrex.ms_deform_attn.default
        torch.ops.detrex.ms_deform_attn_backward.default
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(f"detrex.layers.msda_op: the C++ schemas {OP_QUALNAME} / {BACKWARD_QUALNAME} are not "
                           f"registered; import {EXTENSION_MODULE} (the compiled extension) first") from e
    torch.library.register_fake(OP_QUALNAME)(_fake_forward)
    torch.library.register_fake(BACKWARD_QUALNAME)(_fake_backward)
    torch.library.register_autograd(OP_QUALNAME, _backward, setup_context=_setup_context)
    _python_side_registered = True


# --------------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------------
def load_extension() -> Optional[Callable]:
    """``torch.ops.detrex.ms_deform_attn`` if the compiled extension loads, else ``None``. Tried once, never raises."""
    global _op, _error
    if _op is _UNSET:
        try:
            importlib.import_module(EXTENSION_MODULE)
            _register_python_side()
            _op = torch.ops.detrex.ms_deform_attn
        except ModuleNotFoundError as e:
            _op = None
            if e.name == EXTENSION_MODULE:
                _error = (f"{EXTENSION_MODULE} is not built (install with FORCE_CUDA=1 and a CUDA toolkit to build it)")
            else:
                _error = f"importing {EXTENSION_MODULE} failed: {e}"
        except Exception as e:  # undefined symbols, ABI or CUDA mismatch, registration error, ...
            _op = None
            _error = f"importing {EXTENSION_MODULE} failed: {type(e).__name__}: {e}"
        if _op is None:
            logger.debug("detrex.layers.msda_op: %s", _error)
    return _op


def extension_error() -> Optional[str]:
    """Why :func:`load_extension` returned ``None`` (``None`` if it has not been tried or succeeded)."""
    return _error


def is_available() -> bool:
    """True when the compiled op is loaded and a CUDA device is present to run it."""
    return load_extension() is not None and torch.cuda.is_available()


def ms_deform_attn_cuda(
    value: torch.Tensor,
    spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
    level_start_index: Optional[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Call the compiled op on CUDA tensors, making inputs contiguous and deriving ``level_start_index`` if ``None``.

    Raises ``RuntimeError`` naming the reason when the extension is not available, and :class:`MSDAInputError`
    (from :func:`check_inputs`, before the op runs) for a bad input.
    """
    op = load_extension()
    if op is None:
        raise RuntimeError(f"ms_deform_attn_cuda: the compiled op is not available: {_error}; use "
                           "detrex.layers.multi_scale_deform_attn.ms_deform_attn, which falls back to PyTorch")
    args = prepare_inputs("ms_deform_attn", value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights, im2col_step)
    return op(*args)


def prepare_inputs(
    op: str,
    value: torch.Tensor,
    spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
    level_start_index: Optional[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    device_type: str = "cuda",
) -> tuple:
    """The compiled op's arguments, checked with :func:`check_inputs`: tensors made contiguous, ``spatial_shapes``
    as a tensor, ``level_start_index`` derived from it when ``None``. Raises :class:`MSDAInputError`."""
    if isinstance(value, torch.Tensor) and not isinstance(spatial_shapes, torch.Tensor):
        try:
            spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=value.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise MSDAInputError(f"{op}: spatial_shapes must be an (L, 2) integer tensor or a list of (H_l, W_l) "
                                 f"pairs, got {spatial_shapes!r} ({e})") from None
    if level_start_index is None and isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() == 2 and spatial_shapes.shape[1] == 2:
            sizes = spatial_shapes.prod(1)
            level_start_index = torch.cat((sizes.new_zeros((1,)), sizes.cumsum(0)[:-1]))
        else:  # placeholder: check_inputs rejects spatial_shapes first
            level_start_index = spatial_shapes.new_zeros((0,))
    args = (_contiguous(value), spatial_shapes, level_start_index, _contiguous(sampling_locations),
            _contiguous(attention_weights), im2col_step)
    check_inputs(op, *args, device_type=device_type)
    return args


def _contiguous(t):
    return t.contiguous() if isinstance(t, torch.Tensor) else t


def _reset_for_tests() -> Tuple[object, Optional[str]]:
    """Forget the cached load result (tests only); returns the previous state."""
    global _op, _error
    previous = (_op, _error)
    _op, _error = _UNSET, None
    return previous
