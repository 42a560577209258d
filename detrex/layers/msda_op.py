"""The optional compiled CUDA op for multi-scale deformable attention: loading and ``torch.library`` registration.

The extension ``detrex._C`` (sources in ``detrex/layers/csrc/``, built by ``setup.py`` only when a CUDA toolkit is
present or ``FORCE_CUDA=1``) defines, in C++ with ``TORCH_LIBRARY``::

    torch.ops.detrex.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step=64) -> output (B, Q, M * D)
    torch.ops.detrex.ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, im2col_step=64)
        -> (grad_value, grad_sampling_locations, grad_attention_weights)

with CUDA kernels only. This module adds the Python side: fake (meta) kernels for both ops, so ``torch.compile``
traces through them without a graph break, and the autograd formula of the forward op (its backward calls the
backward op; double backward is not supported). Importing ``detrex._C`` runs :func:`_register_python_side`, so the
op is complete whichever of the two modules is imported first; :mod:`detrex.layers.msda_dispatch` imports
``detrex._C`` lazily, the first time a CUDA tensor reaches
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
  buffer and rounded once, so float16/bfloat16 training does not lose small gradient contributions.
- The op registers no autocast kernel: autocast falls through to it and it reads every input in the dtype it comes
  in (no upcast of the value tensor, unlike detrex's op, which ran float16 in float32). The output is value's
  dtype, where the pure-PyTorch op returns the promoted dtype (float32 for a bfloat16 value with float32
  locations); :meth:`MultiScaleDeformableAttention.attend` casts to value's dtype either way.
- ``im2col_step`` is accepted for compatibility with the original op and ignored: the whole batch is one launch,
  any batch size works.

Gradients of ``grad_value`` use float atomics, so backward results are not bitwise deterministic (as the original op).
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "EXTENSION_MODULE",
    "OP_QUALNAME",
    "BACKWARD_QUALNAME",
    "load_extension",
    "extension_error",
    "is_available",
    "ms_deform_attn_cuda",
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
                   im2col_step=64):
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
        ctx.im2col_step,
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

    Raises ``RuntimeError`` naming the reason when the extension is not available.
    """
    op = load_extension()
    if op is None:
        raise RuntimeError(f"ms_deform_attn_cuda: the compiled op is not available: {_error}; use "
                           "detrex.layers.multi_scale_deform_attn.ms_deform_attn, which falls back to PyTorch")
    if not isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=value.device)
    if level_start_index is None:
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros((1,)), sizes.cumsum(0)[:-1]))
    return op(value.contiguous(), spatial_shapes, level_start_index, sampling_locations.contiguous(),
              attention_weights.contiguous(), im2col_step)


def _reset_for_tests() -> Tuple[object, Optional[str]]:
    """Forget the cached load result (tests only); returns the previous state."""
    global _op, _error
    previous = (_op, _error)
    _op, _error = _UNSET, None
    return previous
