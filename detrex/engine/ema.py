"""Exponential moving average (EMA) of model weights.

Follows detrex's ``modeling/ema.py`` (itself from d2go): the EMA state is a name -> tensor dict
over all parameters **and buffers**, stored as the plain attribute ``model.ema_state`` (not a
submodule, so not in ``model.state_dict()``) and checkpointed under the key ``"ema_state"``.
Config keys (``train.model_ema``): ``enabled``, ``decay`` (fixed, no warm-up), ``device`` (``""``
= same device as the model), ``use_ema_weights_for_eval_only``.
"""
import copy
import logging
from contextlib import contextmanager
from typing import Dict

import torch

__all__ = [
    "EMAState",
    "EMAUpdater",
    "may_build_model_ema",
    "may_get_ema_checkpointer",
    "get_model_ema_state",
    "apply_model_ema",
    "apply_model_ema_and_restore",
]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    ) else model


class EMAState:
    """A name -> tensor copy of a model's parameters and buffers."""

    def __init__(self):
        self.state: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str = "") -> "EMAState":
        ret = cls()
        ret.save_from(model, device)
        return ret

    def save_from(self, model: torch.nn.Module, device: str = "") -> None:
        for name, val in self._get_model_state_iterator(model):
            val = val.detach().clone()
            self.state[name] = val.to(device) if device else val

    def apply_to(self, model: torch.nn.Module) -> None:
        """Copy the EMA values into ``model`` in place."""
        with torch.no_grad():
            for name, val in self._get_model_state_iterator(model):
                if name not in self.state:
                    raise KeyError(f"EMA state has no entry {name!r}; was it built for this model?")
                val.copy_(self.state[name])

    @contextmanager
    def apply_and_restore(self, model: torch.nn.Module):
        """Swap EMA weights into ``model`` for the duration of the block, then restore."""
        old_state = EMAState.from_model(model, self.device)
        self.apply_to(model)
        try:
            yield old_state
        finally:
            old_state.apply_to(model)

    def get_ema_model(self, model: torch.nn.Module) -> torch.nn.Module:
        ret = copy.deepcopy(model)
        self.apply_to(ret)
        return ret

    @property
    def device(self):
        if not self.has_inited():
            return None
        return next(iter(self.state.values())).device

    def to(self, device):
        for name in self.state:
            self.state[name] = self.state[name].to(device)
        return self

    def has_inited(self) -> bool:
        return len(self.state) > 0

    def clear(self):
        self.state.clear()
        return self

    def _get_model_state_iterator(self, model: torch.nn.Module):
        model = _unwrap(model)
        yield from model.named_parameters()
        yield from model.named_buffers()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True):
        self.clear()
        for k, v in state_dict.items():
            self.state[k] = v
        return torch.nn.modules.module._IncompatibleKeys(missing_keys=[], unexpected_keys=[])

    def __repr__(self):
        return f"EMAState(state=[{','.join(self.state.keys())}])"


class EMAUpdater:
    """``ema = decay * ema + (1 - decay) * value`` for float tensors; other tensors are copied."""

    def __init__(self, state: EMAState, decay: float = 0.999, device: str = ""):
        self.decay = decay
        self.device = device
        self.state = state

    def init_state(self, model: torch.nn.Module) -> None:
        self.state.clear()
        self.state.save_from(model, self.device)

    def update(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            ema_floats, model_floats = [], []
            for name, val in self.state._get_model_state_iterator(model):
                ema_val = self.state.state[name]
                if self.device:
                    val = val.to(self.device)
                if ema_val.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                    ema_floats.append(ema_val)
                    model_floats.append(val.to(ema_val.dtype))
                else:
                    ema_val.copy_(val)
            if ema_floats:
                torch._foreach_mul_(ema_floats, self.decay)
                torch._foreach_add_(ema_floats, model_floats, alpha=1.0 - self.decay)


def _cfg_get(cfg, key, default=None):
    node = cfg
    for part in key.split("."):
        try:
            node = node[part] if part in node else None
        except TypeError:
            node = None
        if node is None:
            return default
    return node


def may_build_model_ema(cfg, model: torch.nn.Module) -> None:
    """If ``train.model_ema.enabled``, attach an :class:`EMAState` as ``model.ema_state``."""
    if not _cfg_get(cfg, "train.model_ema.enabled", False):
        return
    model = _unwrap(model)
    if hasattr(model, "ema_state"):
        raise RuntimeError("model.ema_state already exists; EMA was built twice.")
    model.ema_state = EMAState.from_model(model, _cfg_get(cfg, "train.model_ema.device", "") or "")
    logger.info("Using Model EMA.")


def may_get_ema_checkpointer(cfg, model: torch.nn.Module) -> dict:
    """``{"ema_state": model.ema_state}`` when EMA is enabled, else ``{}`` (checkpointables)."""
    if not _cfg_get(cfg, "train.model_ema.enabled", False):
        return {}
    return {"ema_state": get_model_ema_state(model)}


def get_model_ema_state(model: torch.nn.Module) -> EMAState:
    return _unwrap(model).ema_state


def apply_model_ema(model: torch.nn.Module, state: EMAState = None, save_current: bool = False):
    """Copy EMA weights into ``model`` (optionally keeping the current ones as ``model.ema_state_old``)."""
    model = _unwrap(model)
    if state is None:
        state = get_model_ema_state(model)
    if save_current:
        model.ema_state_old = EMAState.from_model(model, state.device)
    state.apply_to(model)


@contextmanager
def apply_model_ema_and_restore(model: torch.nn.Module, state: EMAState = None):
    """Evaluate with EMA weights inside the block; the raw weights come back afterwards."""
    model = _unwrap(model)
    if state is None:
        state = get_model_ema_state(model)
    with state.apply_and_restore(model) as old:
        yield old
