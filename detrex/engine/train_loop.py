"""The training loop: ``TrainerBase`` (hooks + iteration loop), ``SimpleTrainer`` and ``Trainer``.

Same structure and names as detectron2's ``engine/train_loop.py`` and detrex's ``Trainer``
("SimpleTrainer + AMP"), but device-agnostic: nothing here requires CUDA. ``Trainer`` adds
automatic mixed precision (float16 or bfloat16, CPU or CUDA) and gradient-norm clipping.
"""
import logging
import time
import weakref
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detrex.utils import comm
from detrex.utils.env import get_rng_state, set_rng_state
from detrex.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "Trainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """Callbacks run by :class:`TrainerBase` around training and each iteration.

    Hooks can read the trainer via ``self.trainer`` (a weak proxy set by ``register_hooks``).
    ``before_step``/``after_step`` see ``self.trainer.iter`` = the current iteration.
    """

    trainer: "TrainerBase" = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_backward(self):
        pass

    def after_step(self):
        pass

    def state_dict(self):
        """State to checkpoint (empty by default: the hook is then not saved)."""
        return {}

    def load_state_dict(self, state_dict):
        pass


class TrainerBase:
    """Runs ``run_step`` for iterations ``[start_iter, max_iter)`` with hooks around it.

    ``iter`` is the current iteration; after a full run it equals ``max_iter`` (so hooks can tell
    a finished run from an interrupted one). An :class:`EventStorage` is open while training.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int
        self.storage: EventStorage

    def register_hooks(self, hooks: List[Optional[HookBase]]) -> None:
        """Register hooks in order (``None`` entries are ignored); execution follows this order."""
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            assert isinstance(h, HookBase), f"{h!r} is not a HookBase"
            # weak proxy avoids a reference cycle trainer <-> hook
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int):
        logger.info("Starting training from iteration {}".format(start_iter))
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            if getattr(self, "_pending_storage_state", None):
                # histories restored on resume: windowed medians continue as if uninterrupted
                self.storage.load_state_dict(self._pending_storage_state)
                self._pending_storage_state = None
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # self.iter == max_iter tells after_train that training finished (also when
                # resumed from the final checkpoint, where the loop is empty)
                self.iter = max(max_iter, start_iter)
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self):
        for h in self._hooks:
            h.before_train()

    def after_train(self):
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self):
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self):
        for h in self._hooks:
            h.after_backward()

    def after_step(self):
        for h in self._hooks:
            h.after_step()

    def run_step(self):
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        ret = {"iteration": self.iter}
        storage = getattr(self, "storage", None)
        if storage is not None and comm.is_main_process():
            ret["storage"] = storage.state_dict()
        hooks_state = {}
        for h in self._hooks:
            sd = h.state_dict()
            if sd:
                name = type(h).__qualname__
                if name in hooks_state:
                    continue  # two hooks of one type: cannot be told apart; keep the first
                hooks_state[name] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.iter = state_dict["iteration"]
        self._pending_storage_state = state_dict.get("storage")
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                try:
                    name = type(h).__qualname__
                except AttributeError:
                    continue
                if name == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


def _plain(obj):
    """Replace OmegaConf containers (e.g. ``betas`` from a config) by plain Python ones.

    Checkpoints must stay loadable with ``torch.load(weights_only=True)``.
    """
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def _unwrap_model(model):
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on a model that returns a dict of losses.

    ``model(data)`` in train mode must return a scalar tensor or a dict of scalar tensors (summed
    into the total loss). ``data_loader`` is any iterable (typically infinite). If it has
    ``state_dict``/``load_state_dict`` (e.g. the in-memory loader in ``detrex.utils.testing``),
    its position is checkpointed too, so a resumed run sees the same batches as an
    uninterrupted one.

    Non-finite losses are detected right after the forward pass, before any backward or
    optimizer step (so no bad weights exist and no checkpoint is written for that iteration):
    by default :class:`FloatingPointError` names the loss keys, the iteration and the batch's
    ``image_id``/``file_name``. With ``skip_nonfinite_loss=True`` the batch is skipped instead
    (no backward, no optimizer step; all ranks agree) and counted: ``num_nonfinite_skipped``
    (checkpointed) and the ``nonfinite_skipped`` scalar in the event storage / ``metrics.json``.
    """

    def __init__(self, model, data_loader, optimizer, gather_metric_period: int = 1,
                 zero_grad_before_forward: bool = False, skip_nonfinite_loss: bool = False):
        super().__init__()
        self.skip_nonfinite_loss = bool(skip_nonfinite_loss)
        self.num_nonfinite_skipped = 0
        # set by hooks.PeriodicCheckpointer(all_ranks=True): state_dict() then runs on every rank
        # at the same iterations and gathers each rank's RNG state
        self.gather_rng_states = False
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.gather_metric_period = gather_metric_period
        self.zero_grad_before_forward = zero_grad_before_forward

    @property
    def _data_loader_iter(self):
        # created lazily, so a data-loader state restored on resume applies
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _forward(self, data) -> Dict[str, torch.Tensor]:
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        if not isinstance(loss_dict, Mapping):
            raise TypeError(
                "In training mode the model must return a loss tensor or a dict of loss tensors, "
                f"got {type(loss_dict).__name__}"
            )
        return loss_dict

    @staticmethod
    def _batch_ids(data, limit: int = 16) -> List[Any]:
        """``image_id`` (else ``file_name``) of each dict of a ``list[dict]`` batch."""
        ids = []
        if isinstance(data, (list, tuple)):
            for d in data:
                if isinstance(d, Mapping):
                    v = d.get("image_id", d.get("file_name"))
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        v = v.item()
                    ids.append(v)
        if len(ids) > limit:
            ids = ids[:limit] + [f"... ({len(ids) - limit} more)"]
        return ids

    def _nonfinite_message(self, loss_dict: Mapping[str, torch.Tensor], data) -> str:
        values = {k: float(v.detach().float().sum().item()) for k, v in loss_dict.items()}
        bad = sorted(k for k, v in loss_dict.items() if not torch.isfinite(v.detach()).all())
        ids = self._batch_ids(data)
        where = f"iteration={self.iter} (rank {comm.get_rank()})"
        if not bad:
            return f"another rank had a non-finite loss at iteration={self.iter}"
        return (f"Non-finite loss {', '.join(bad)} at {where}; batch image ids: "
                f"{ids if ids else 'unknown'}; losses: {values}")

    def _check_finite(self, losses: torch.Tensor, loss_dict: Mapping[str, torch.Tensor],
                      data=None) -> bool:
        """True if the losses are finite (on every rank when skipping). Otherwise raise
        :class:`FloatingPointError`, or, with ``skip_nonfinite_loss``, log, count and return
        False (the caller then skips the step)."""
        finite = bool(torch.isfinite(losses.detach()).all())
        if self.skip_nonfinite_loss and comm.get_world_size() > 1:
            # every rank must skip the same step, or DDP's gradient all-reduce would hang
            flag = torch.tensor([0.0 if finite else 1.0], device=losses.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            any_bad = bool(flag.item() > 0)
        else:
            any_bad = not finite
        if not any_bad:
            return True
        msg = self._nonfinite_message(loss_dict, data)
        if not self.skip_nonfinite_loss:
            raise FloatingPointError(
                msg + ". No optimizer step was taken and no checkpoint was written for this "
                "iteration (the last checkpoint is intact). Set train.skip_nonfinite_loss=True "
                "to skip such batches, or lower the learning rate / enable gradient clipping."
            )
        self.num_nonfinite_skipped += 1
        logger.warning(
            f"{msg}. Skipping this batch (no optimizer step); {self.num_nonfinite_skipped} "
            "batch(es) skipped so far (train.skip_nonfinite_loss=True)."
        )
        return False

    def _record_skip(self) -> None:
        if comm.is_main_process():
            self.storage.put_scalar("nonfinite_skipped", self.num_nonfinite_skipped,
                                    smoothing_hint=False)

    def run_step(self):
        assert self.model.training, "[SimpleTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict = self._forward(data)
        losses = sum(loss_dict.values())
        if not self._check_finite(losses, loss_dict, data):
            self.optimizer.zero_grad()
            self._record_skip()
            return
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float,
                       prefix: str = "") -> None:
        if (self.iter + 1) % self.gather_metric_period == 0:
            SimpleTrainer.write_metrics(loss_dict, data_time, self.iter, prefix)

    @staticmethod
    def write_metrics(loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int,
                      prefix: str = "") -> None:
        """Average the losses over ranks and put them (and ``data_time``) into the storage."""
        metrics_dict = {k: v.detach().float().cpu().item() for k, v in loss_dict.items()}
        metrics_dict["data_time"] = data_time
        storage = get_event_storage()
        all_metrics_dict = comm.gather(metrics_dict)
        if comm.is_main_process():
            # data_time among workers can have high variance; the max is the bottleneck
            data_time = np.max([x.pop("data_time") for x in all_metrics_dict])
            storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
            if len(all_metrics_dict) > 1:
                storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
            metrics_dict = {k: np.mean([x[k] for x in all_metrics_dict])
                            for k in all_metrics_dict[0].keys()}
            total_losses_reduced = sum(metrics_dict.values())
            if not np.isfinite(total_losses_reduced):
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={cur_iter}!\n"
                    f"loss_dict = {metrics_dict}"
                )
            storage.put_scalar("{}total_loss".format(prefix), total_losses_reduced,
                               cur_iter=cur_iter)
            if len(metrics_dict) > 1:
                storage.put_scalars(cur_iter=cur_iter, **metrics_dict)

    def state_dict(self):
        ret = super().state_dict()
        ret["optimizer"] = _plain(self.optimizer.state_dict())
        ret["num_nonfinite_skipped"] = self.num_nonfinite_skipped
        # this process's RNG states (rank 0's when saved by the rank-0 checkpointer)
        ret["rng"] = get_rng_state()
        if self.gather_rng_states and comm.get_world_size() > 1:
            ret["rng_per_rank"] = comm.all_gather(ret["rng"])
        if hasattr(self.data_loader, "state_dict") and callable(self.data_loader.state_dict):
            ret["data_loader"] = self.data_loader.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.num_nonfinite_skipped = int(state_dict.get("num_nonfinite_skipped", 0))
        per_rank = state_dict.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == comm.get_world_size():
            set_rng_state(per_rank[comm.get_rank()])
        elif "rng" in state_dict:
            if comm.get_rank() == 0:
                set_rng_state(state_dict["rng"])
            else:
                # the file holds rank 0's states; give other ranks distinct, reproducible seeds
                seed = (int(state_dict["iteration"]) * 1000003 + comm.get_rank()) % (2**31)
                np.random.seed(seed)
                torch.manual_seed(seed)
                import random

                random.seed(seed)
        if "data_loader" in state_dict:
            if hasattr(self.data_loader, "load_state_dict"):
                self.data_loader.load_state_dict(state_dict["data_loader"])
                self._data_loader_iter_obj = None
            else:
                logger.warning("Checkpoint has a data-loader state but the loader cannot load it.")


_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class Trainer(SimpleTrainer):
    """:class:`SimpleTrainer` with mixed precision and gradient clipping (used by train_net).

    Args:
        model, data_loader, optimizer: as in :class:`SimpleTrainer`.
        amp: run the forward pass under ``torch.autocast``.
        amp_dtype: ``"float16"`` (with a ``torch.amp.GradScaler`` on CUDA) or ``"bfloat16"``
            (no scaler). On CPU, bfloat16 is the supported choice.
        clip_grad_params: kwargs of ``torch.nn.utils.clip_grad_norm_`` (``max_norm``,
            ``norm_type``), or None for no clipping.
        skip_nonfinite_loss: skip (and count) batches whose loss is NaN/inf instead of raising.
        grad_scaler: a custom ``GradScaler`` (fp16 on CUDA only).
        device: ``"cpu"``/``"cuda"``/``torch.device``; default: the device of the model's
            first parameter. Decides the autocast device type.
    """

    def __init__(self, model, data_loader, optimizer, amp: bool = False,
                 amp_dtype: str = "float16", clip_grad_params: Optional[dict] = None,
                 grad_scaler=None, device=None, gather_metric_period: int = 1,
                 zero_grad_before_forward: bool = False, skip_nonfinite_loss: bool = False):
        unsupported = "Trainer does not support single-process multi-device training!"
        if isinstance(model, DistributedDataParallel):
            assert not (model.device_ids and len(model.device_ids) > 1), unsupported
        assert not isinstance(model, DataParallel), unsupported
        super().__init__(model, data_loader, optimizer, gather_metric_period,
                         zero_grad_before_forward, skip_nonfinite_loss)
        if device is None:
            try:
                device = next(_unwrap_model(model).parameters()).device
            except StopIteration:
                device = torch.device("cpu")
        self.device = torch.device(device)
        self.amp = bool(amp)
        key = str(amp_dtype).replace("torch.", "")
        if key not in _AMP_DTYPES:
            raise ValueError(
                f"train.amp.dtype={amp_dtype!r} is not supported; use 'float16' or 'bfloat16'."
            )
        self.amp_dtype = _AMP_DTYPES[key]
        self.grad_scaler = None
        if self.amp and self.amp_dtype == torch.float16:
            if self.device.type == "cuda":
                self.grad_scaler = grad_scaler or torch.amp.GradScaler("cuda")
            else:
                logger.warning(
                    f"AMP float16 on {self.device.type} runs without a GradScaler; prefer "
                    "train.amp.dtype='bfloat16' off CUDA."
                )
        self.clip_grad_params = dict(clip_grad_params) if clip_grad_params else None

    def run_step(self):
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp):
            loss_dict = self._forward(data)
            losses = sum(loss_dict.values())
        if not self._check_finite(losses, loss_dict, data):
            self.optimizer.zero_grad()
            self._record_skip()
            return
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.after_backward()
            if self.clip_grad_params is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.clip_grads(self.model.parameters())
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            self.after_backward()
            if self.clip_grad_params is not None:
                self.clip_grads(self.model.parameters())
            self.optimizer.step()
        self._write_metrics(loss_dict, data_time)

    def clip_grads(self, params):
        params = [p for p in params if p.requires_grad and p.grad is not None]
        if len(params) > 0:
            return torch.nn.utils.clip_grad_norm_(parameters=params, **self.clip_grad_params)

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
