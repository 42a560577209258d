"""Optimizer parameter groups (detectron2's ``get_default_optimizer_params`` semantics).

Used by ``configs/common/optim.py``::

    params = L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0,
                                             lr_factor_func=backbone_lr_factor)

``params.model`` is set by ``tools/train_net.py`` at run time.
"""
import copy
import itertools
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Set

import torch

__all__ = [
    "get_default_optimizer_params",
    "reduce_param_groups",
    "backbone_lr_factor",
    "LRFactorByKeyword",
    "NORM_MODULE_TYPES",
    "resolve_optimizer_impl",
]

NORM_MODULE_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def _is_norm(module: torch.nn.Module) -> bool:
    if isinstance(module, NORM_MODULE_TYPES):
        return True
    # FrozenBatchNorm2d and other custom norms (no import of detrex.layers needed)
    return type(module).__name__ in ("FrozenBatchNorm2d", "NaiveSyncBatchNorm", "LayerNorm2d")


def backbone_lr_factor(module_param_name: str) -> float:
    """0.1 for parameters whose name contains ``"backbone"``, else 1.0 (detrex DETR recipe).

    A named function (not a lambda) so a saved ``config.yaml`` loads back.
    """
    return 0.1 if "backbone" in module_param_name else 1.0


class LRFactorByKeyword:
    """Callable ``lr_factor_func``: ``factor`` when any of ``keywords`` is in the parameter name.

    Example: ``L(LRFactorByKeyword)(keywords=["backbone", "sampling_offsets"], factor=0.1)``.
    """

    def __init__(self, keywords=("backbone",), factor: float = 0.1):
        self.keywords = [str(k) for k in keywords]
        self.factor = float(factor)

    def __call__(self, module_param_name: str) -> float:
        return self.factor if any(k in module_param_name for k in self.keywords) else 1.0

    def __repr__(self):
        return f"LRFactorByKeyword(keywords={self.keywords}, factor={self.factor})"


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: Optional[float] = 1.0,
    weight_decay_bias: Optional[float] = None,
    lr_factor_func: Optional[Callable[[str], float]] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups with per-parameter hyper-parameters.

    Walks ``model.named_modules()`` and each module's direct parameters, skipping frozen and
    duplicate parameters. Norm-layer parameters get ``weight_decay_norm``; biases get
    ``bias_lr_factor`` and ``weight_decay_bias``; ``lr_factor_func("<module>.<param>")``
    multiplies ``base_lr``; ``overrides[param_name]`` sets values for a parameter name (e.g.
    ``{"embedding": {"weight_decay": 0.0}}``). Groups with equal settings are merged.

    Returns:
        a list of dicts with ``params`` and (where set) ``lr``/``weight_decay``, for
        ``torch.optim`` constructors.
    """
    if overrides is None:
        overrides = {}
    defaults = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("bias_lr_factor requires base_lr")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if len(bias_overrides):
        if "bias" in overrides:
            raise ValueError("Conflicting overrides for 'bias'")
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func requires base_lr")

    params: List[Dict[str, Any]] = []
    memo: Set[torch.nn.parameter.Parameter] = set()
    for module_name, module in model.named_modules():
        for module_param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad:
                continue
            if value in memo:  # shared parameter
                continue
            memo.add(value)
            hyperparams = copy.copy(defaults)
            if _is_norm(module) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full = f"{module_name}.{module_param_name}" if module_name else module_param_name
                hyperparams["lr"] *= lr_factor_func(full)
            hyperparams.update(overrides.get(module_param_name, {}))
            params.append({"params": [value], **hyperparams})
    return reduce_param_groups(params)


def _expand_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    # one group per parameter; later groups override earlier settings of the same parameter
    ret = defaultdict(dict)
    for item in params:
        assert "params" in item
        cur_params = {x: y for x, y in item.items() if x != "params" and x != "param_names"}
        if "param_names" in item:
            for param_name, param in zip(item["param_names"], item["params"]):
                ret[param].update({"param_names": [param_name], "params": [param], **cur_params})
        else:
            for param in item["params"]:
                ret[param].update({"params": [param], **cur_params})
    return list(ret.values())


def reduce_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge parameter groups that share all hyper-parameters (fewer groups, faster optimizers)."""
    params = _expand_param_groups(params)
    groups = defaultdict(list)
    for item in params:
        cur_params = tuple((x, y) for x, y in item.items() if x != "params" and x != "param_names")
        groups[cur_params].append({"params": item["params"]})
        if "param_names" in item:
            groups[cur_params][-1]["param_names"] = item["param_names"]
    ret = []
    for param_keys, param_values in groups.items():
        cur = {kv[0]: kv[1] for kv in param_keys}
        cur["params"] = list(itertools.chain.from_iterable(p["params"] for p in param_values))
        if len(param_values) > 0 and "param_names" in param_values[0]:
            cur["param_names"] = list(
                itertools.chain.from_iterable(p["param_names"] for p in param_values)
            )
        ret.append(cur)
    return ret


def _fused_supported(optimizer_cls, device) -> Optional[str]:
    """None if ``optimizer_cls(fused=True)`` works for parameters on ``device`` with this torch, else why not."""
    try:
        optimizer_cls([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, fused=True)
    except (RuntimeError, TypeError, ValueError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def resolve_optimizer_impl(optimizer_cfg, device) -> Optional[str]:
    """Keep ``fused=True`` of an optimizer config (``configs/common/optim.py``) only where it works.

    The fused Adam/AdamW/SGD kernels update every parameter in one launch and honour ``found_inf`` (the trainer
    skips a non-finite step on the device with it). If the device or the installed torch has no such kernel,
    ``fused`` becomes False and ``foreach`` True (the multi-tensor kernels). Edits ``optimizer_cfg`` in place;
    returns the warning to log, or None.
    """
    if not optimizer_cfg.get("fused", False):
        return None
    target = optimizer_cfg.get("_target_")
    if isinstance(target, str):
        from detrex.config.targets import locate

        target = locate(target)
    why = _fused_supported(target, torch.device(device)) if target is not None else "no _target_"
    if why is None:
        return None
    optimizer_cfg.fused = False
    optimizer_cfg.foreach = True
    return (f"optimizer.fused=True is not supported here ({why}); using foreach=True (multi-tensor kernels) instead. "
            "A non-finite loss is then checked on the host every iteration.")
