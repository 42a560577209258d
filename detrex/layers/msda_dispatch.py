"""Where a compiled multi-scale deformable attention op plugs in.

The pure-PyTorch implementation (:func:`detrex.layers.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch`)
always works. A compiled kernel is optional: it is looked up lazily, the first time a tensor on a device it serves
reaches :func:`detrex.layers.multi_scale_deform_attn.ms_deform_attn`, and any failure to find or load it falls back to
the pure-PyTorch path. Importing this module never imports or loads an extension.

Contract for a compiled op (what the CUDA extension must provide)::

    op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step) -> output

    value               (B, S, M, D)        S = sum_l H_l * W_l, levels concatenated level-major, each row-major
    spatial_shapes      (L, 2) int64        (H_l, W_l)
    level_start_index   (L,)   int64        offset of each level in S
    sampling_locations  (B, Q, M, L, P, 2)  normalized (x, y) in [0, 1], align_corners=False convention
    attention_weights   (B, Q, M, L, P)
    im2col_step         int                 batch chunk size hint (the op may clamp it to B)
    output              (B, Q, M * D)

The op must carry its own autograd (e.g. ``torch.library.register_autograd``) and its own dtype policy.

How the op is found, in order:

1. an op registered with :func:`register_compiled_op` (Python-level hook, mainly for tests and experiments);
2. otherwise each module in :data:`PROBE_MODULES` is imported (importing an extension registers its
   ``TORCH_LIBRARY`` ops), then ``torch.ops.<OP_NAMESPACE>.<OP_NAME>`` is looked up.

Set the environment variable ``DETREX_MSDA_IMPL=pytorch`` to force the pure-PyTorch path (debugging, benchmarks).
Exactly one INFO log line per chosen path says which implementation runs.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = [
    "OP_NAMESPACE",
    "OP_NAME",
    "PROBE_MODULES",
    "COMPILED_OP_DEVICE_TYPES",
    "compiled_op_for",
    "load_compiled_op",
    "register_compiled_op",
    "reset_compiled_op_cache",
    "msda_backend_info",
]

logger = logging.getLogger(__name__)

#: ``torch.ops`` namespace and name of the compiled op (``torch.ops.detrex.ms_deform_attn``).
OP_NAMESPACE = "detrex"
OP_NAME = "ms_deform_attn"
#: Modules imported (in order, failures tolerated) before looking the op up in ``torch.ops``.
PROBE_MODULES: Tuple[str, ...] = ("detrex._C",)
#: Device types the compiled op serves; tensors elsewhere always take the pure-PyTorch path.
COMPILED_OP_DEVICE_TYPES: Tuple[str, ...] = ("cuda",)
#: Environment variable that forces an implementation: "auto" (default) or "pytorch".
ENV_VAR = "DETREX_MSDA_IMPL"

_UNSET = object()
_registered_op: Optional[Callable] = None
_loaded_op = _UNSET  # cached result of load_compiled_op(): a callable or None
_load_failure: Optional[str] = None  # why no compiled op was found
_logged: Dict[str, bool] = {}


def register_compiled_op(op: Optional[Callable]) -> None:
    """Register ``op`` (see the module contract) as the compiled implementation; ``None`` unregisters it."""
    global _registered_op
    if op is not None and not callable(op):
        raise TypeError(f"register_compiled_op: expected a callable or None, got {type(op).__name__}")
    _registered_op = op
    reset_compiled_op_cache()


def reset_compiled_op_cache() -> None:
    """Forget the cached lookup result and the "already logged" state (tests, or after building the op)."""
    global _loaded_op, _load_failure
    _loaded_op = _UNSET
    _load_failure = None
    _logged.clear()


def _lookup_torch_op() -> Tuple[Optional[Callable], Optional[str]]:
    """Import the probe modules, then look up ``torch.ops.<namespace>.<name>``. Never raises."""
    reasons = []
    for mod in PROBE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the module exists but one of its dependencies is missing
                reasons.append(f"importing {mod} failed: {e}")
        except Exception as e:  # broken build: undefined symbols, ABI mismatch, ...
            reasons.append(f"importing {mod} failed: {type(e).__name__}: {e}")
    try:
        op = getattr(getattr(torch.ops, OP_NAMESPACE), OP_NAME)
    except (AttributeError, RuntimeError):
        reasons.append(f"torch.ops.{OP_NAMESPACE}.{OP_NAME} is not registered (extension not built)")
        return None, "; ".join(reasons)
    return op, None


def load_compiled_op() -> Optional[Callable]:
    """The compiled op, or ``None`` when none is available. The lookup runs once and is cached."""
    global _loaded_op, _load_failure
    if _registered_op is not None:
        return _registered_op
    if _loaded_op is _UNSET:
        _loaded_op, _load_failure = _lookup_torch_op()
    return _loaded_op


def _log_once(key: str, msg: str) -> None:
    if not _logged.get(key):
        _logged[key] = True
        logger.info(msg)


def _forced_pytorch() -> bool:
    impl = os.environ.get(ENV_VAR, "auto").strip().lower()
    if impl in ("", "auto"):
        return False
    if impl == "pytorch":
        return True
    raise ValueError(f"{ENV_VAR}={impl!r} is not understood: use 'auto' (default) or 'pytorch'")


def compiled_op_for(value: torch.Tensor) -> Optional[Callable]:
    """The compiled op to use for ``value``'s device, or ``None`` for the pure-PyTorch path (logged once)."""
    device_type = value.device.type
    if _forced_pytorch():
        _log_once("forced", f"multi-scale deformable attention: pure-PyTorch path ({ENV_VAR}=pytorch)")
        return None
    if device_type in COMPILED_OP_DEVICE_TYPES:
        op = load_compiled_op()
        if op is not None:
            _log_once("compiled", f"multi-scale deformable attention: compiled op {_op_name(op)} on {device_type}")
            return op
        _log_once(
            f"fallback-{device_type}",
            f"multi-scale deformable attention: pure-PyTorch path on {device_type} (no compiled op: {_load_failure})",
        )
        return None
    _log_once(f"pytorch-{device_type}", f"multi-scale deformable attention: pure-PyTorch path on {device_type}")
    return None


def _op_name(op: Callable) -> str:
    names = ("_qualified_op_name", "__qualname__", "__name__")
    return str(next((getattr(op, n) for n in names if getattr(op, n, None)), op))


def msda_backend_info() -> str:
    """One line for environment reports: which implementation CUDA tensors would use, and why."""
    if _forced_pytorch():
        return f"pure PyTorch (forced by {ENV_VAR})"
    op = load_compiled_op()
    if op is not None:
        return f"compiled op {_op_name(op)} for {', '.join(COMPILED_OP_DEVICE_TYPES)} tensors; pure PyTorch elsewhere"
    return f"pure PyTorch (no compiled op: {_load_failure})"
