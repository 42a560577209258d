"""The training loop: ``TrainerBase`` (hooks + iteration loop), ``SimpleTrainer`` and ``Trainer``.

Same structure and names as detectron2's ``engine/train_loop.py`` and detrex's ``Trainer``
("SimpleTrainer + AMP"), but device-agnostic: nothing here requires CUDA. ``Trainer`` adds
automatic mixed precision (float16 or bfloat16, CPU or CUDA) and gradient-norm clipping.
"""
import contextlib
import logging
import time
import weakref
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

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
                self.flush_metrics()  # values still on the device since the last log iteration
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

    def flush_metrics(self) -> None:
        """Read the metrics still held on the device (a trainer that defers them overrides this)."""

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


class _Pending(NamedTuple):
    """One iteration's metrics, still on the device until the next log iteration."""

    iteration: int
    keys: Tuple[str, ...]  # in the order of ``values``
    values: torch.Tensor  # (len(keys),) detached
    data_time: float
    bad_loss: Optional[torch.Tensor]  # 0-d float, 1 = non-finite total loss (device-guarded steps only)
    bad_grad: Optional[torch.Tensor]  # 0-d float, 1 = non-finite gradient norm
    ids: List[Any]
    log_order: Tuple[str, ...]  # the loss dict's key order (the order the losses are logged in)


def _loss_total(loss_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: a `LossDict`'s precomputed ``total`` (one operator), else the sum of the values."""
    total = getattr(loss_dict, "total", None)
    return total if total is not None else sum(loss_dict.values())


def _loss_values(loss_dict: Mapping[str, torch.Tensor]) -> Tuple[Tuple[str, ...], torch.Tensor]:
    """The losses as (keys, one detached vector) (a `LossDict` already holds the vector, with its own key order)."""
    vector = getattr(loss_dict, "vector", None)
    if vector is not None:
        return tuple(loss_dict.vector_keys), vector.detach()
    return tuple(loss_dict.keys()), torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on a model that returns a dict of losses.

    ``model(data)`` in train mode must return a scalar tensor or a dict of scalar tensors (summed
    into the total loss; a dict with a ``total`` attribute, such as the DETR criteria's `LossDict`,
    gives its sum that way). ``data_loader`` is any iterable (typically infinite). If it has
    ``state_dict``/``load_state_dict`` (e.g. the in-memory loader in ``detrex.utils.testing``),
    its position is checkpointed too, so a resumed run sees the same batches as an
    uninterrupted one.

    **No host sync per iteration.** The losses of every iteration stay on the device and are read
    in one transfer every ``gather_metric_period`` iterations (``train.log_period`` in train_net),
    then recorded in the event storage under their own iteration (the logs and ``metrics.json``
    are what a per-iteration read would give). The non-finite check stays on the device too when
    the optimizer can skip a step by itself (fused Adam/AdamW/SGD: ``found_inf``): a step whose
    loss (or, with clipping, gradient norm) is not finite is then skipped by the optimizer kernel,
    all ranks alike, and reported at the next read. Other optimizers fall back to a host check
    before the backward pass.

    Non-finite losses never reach the weights: no optimizer step is taken for that iteration and
    no checkpoint is written after it (the checkpoint hook reads pending metrics first). By
    default :class:`FloatingPointError` names the loss keys, the iteration and the batch's
    ``image_id``/``file_name``. With ``skip_nonfinite_loss=True`` the batch is skipped instead
    and counted: ``num_nonfinite_skipped`` (checkpointed) and the ``nonfinite_skipped`` scalar in
    the event storage / ``metrics.json``.
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
        self.gather_metric_period = max(1, int(gather_metric_period))
        self.zero_grad_before_forward = zero_grad_before_forward
        self._pending: List[_Pending] = []

    @property
    def _data_loader_iter(self):
        # created lazily, so a data-loader state restored on resume applies
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _next_batch(self):
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, time.perf_counter() - start

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

    # ------------------------------------------------------------------ non-finite losses
    def _device_guarded(self) -> bool:
        """True when the optimizer skips a step on the device given ``found_inf`` (fused optimizers)."""
        return bool(getattr(self.optimizer, "_step_supports_amp_scaling", False)) and (
            getattr(self, "grad_scaler", None) is None)

    @staticmethod
    def _nonfinite(t: torch.Tensor) -> torch.Tensor:
        """0-d float: 1 where ``t`` is not finite, on every rank if any rank's is not (no host read)."""
        bad = torch.isfinite(t.detach()).logical_not().to(torch.float32)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return bad

    @staticmethod
    def _raw_ids(data, limit: int = 16) -> List[Any]:
        """``image_id`` (else ``file_name``) of each dict of a ``list[dict]`` batch, as they are (not read)."""
        ids = []
        if isinstance(data, (list, tuple)):
            for d in data[:limit + 1]:
                if isinstance(d, Mapping):
                    ids.append(d.get("image_id", d.get("file_name")))
        return ids

    @classmethod
    def _batch_ids(cls, data, limit: int = 16) -> List[Any]:
        """``image_id`` (else ``file_name``) of each dict of a ``list[dict]`` batch."""
        n = len(data) if isinstance(data, (list, tuple)) else 0
        return cls._format_ids(cls._raw_ids(data, limit), n, limit)

    @staticmethod
    def _format_ids(raw: List[Any], total: Optional[int] = None, limit: int = 16) -> List[Any]:
        ids = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in raw[:limit]]
        total = len(raw) if total is None else total
        if total > limit:
            ids = ids + [f"... ({total - limit} more)"]
        return ids

    def _nonfinite_message(self, values: Mapping[str, float], ids: List[Any], iteration: int,
                           grad: bool = False) -> str:
        bad = sorted(k for k, v in values.items() if not np.isfinite(v))
        where = f"iteration={iteration} (rank {comm.get_rank()})"
        ids_text = ids if ids else "unknown"
        if bad:
            return f"Non-finite loss {', '.join(bad)} at {where}; batch image ids: {ids_text}; losses: {values}"
        if grad:
            return f"Non-finite gradient norm at {where}; batch image ids: {ids_text}; losses: {values}"
        return f"another rank had a non-finite loss at iteration={iteration}"

    def _check_finite(self, losses: torch.Tensor, loss_dict: Mapping[str, torch.Tensor],
                      data=None) -> bool:
        """Host check before the backward pass (optimizers that cannot skip a step on the device): True if
        the losses are finite (on every rank when skipping). Otherwise raise :class:`FloatingPointError`,
        or, with ``skip_nonfinite_loss``, log, count and return False (the caller then skips the step)."""
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
        values = {k: float(v.detach().float().sum().item()) for k, v in loss_dict.items()}
        self._on_nonfinite(self._nonfinite_message(values, self._batch_ids(data), self.iter), self.iter)
        return False

    def _on_nonfinite(self, msg: str, iteration: int) -> None:
        """Raise, or (``skip_nonfinite_loss``) log, count and record the skipped iteration."""
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
        if comm.is_main_process():
            self.storage.put_scalar("nonfinite_skipped", self.num_nonfinite_skipped,
                                    smoothing_hint=False, cur_iter=iteration)

    # ------------------------------------------------------------------ the step
    def run_step(self):
        assert self.model.training, "[SimpleTrainer] model was changed to eval mode!"
        data, data_time = self._next_batch()
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict = self._forward(data)
        losses = _loss_total(loss_dict)
        guarded = self._device_guarded()
        bad = self._nonfinite(losses) if guarded else None
        if not guarded and not self._check_finite(losses, loss_dict, data):
            self.optimizer.zero_grad()
            return
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._optimizer_step(bad)
        self._record(loss_dict, data_time, data, bad, None)

    def _optimizer_step(self, found_inf: Optional[torch.Tensor]) -> None:
        if found_inf is None:
            self.optimizer.step()
            return
        self.optimizer.found_inf = found_inf  # fused optimizers skip the whole update where it is 1
        try:
            self.optimizer.step()
        finally:
            self.optimizer.found_inf = None

    # ------------------------------------------------------------------ metrics
    def _record(self, loss_dict, data_time: float, data, bad_loss, bad_grad) -> None:
        """Keep this iteration's losses on the device; read them all every ``gather_metric_period``."""
        keys, values = _loss_values(loss_dict)
        self._pending.append(_Pending(self.iter, keys, values, data_time, bad_loss, bad_grad, self._raw_ids(data),
                                      tuple(loss_dict.keys())))
        if (self.iter + 1) % self.gather_metric_period == 0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Copy the pending iterations' losses (and non-finite flags) to the host in ONE transfer, handle
        non-finite iterations (raise, or count the skipped ones) and record the rest in the storage."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        # values of every iteration, then the flags in iteration order
        parts = [p.values.float().reshape(-1) for p in pending]
        parts += [f.reshape(1) for p in pending for f in (p.bad_loss, p.bad_grad) if f is not None]
        host = torch.cat(parts).cpu().tolist()  # the one device-to-host read per log period
        start, at = 0, sum(len(p.keys) for p in pending)  # offsets of the next values and the next flag
        records = []
        for p in pending:
            values = dict(zip(p.keys, host[start:start + len(p.keys)]))
            values = {k: values[k] for k in p.log_order}
            start += len(p.keys)
            bad_loss = bad_grad = False
            if p.bad_loss is not None:
                bad_loss, at = host[at] > 0, at + 1
            if p.bad_grad is not None:
                bad_grad, at = host[at] > 0, at + 1
            if bad_loss or bad_grad:
                self._on_nonfinite(self._nonfinite_message(values, self._format_ids(p.ids), p.iteration, bad_grad),
                                   p.iteration)
                continue
            records.append((p.iteration, values, p.data_time))
        self._write_records(records)

    @staticmethod
    def _write_records(records: List[Tuple[int, Dict[str, float], float]], prefix: str = "") -> None:
        """Average per-iteration losses over ranks (one gather for all of them) and put them and ``data_time``
        into the storage at their iterations."""
        storage = get_event_storage()
        all_records = comm.gather(records)
        if not comm.is_main_process():
            return
        for i, (cur_iter, metrics_dict, data_time) in enumerate(all_records[0]):
            per_rank = [r[i] for r in all_records if i < len(r) and r[i][0] == cur_iter]
            # data_time among workers can have high variance; the max is the bottleneck
            data_time = max(r[2] for r in per_rank)
            storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
            if len(all_records) > 1:
                storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
            metrics_dict = {k: np.mean([r[1][k] for r in per_rank]) for k in metrics_dict}
            total_losses_reduced = sum(metrics_dict.values())
            if not np.isfinite(total_losses_reduced):
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={cur_iter}!\n"
                    f"loss_dict = {metrics_dict}"
                )
            storage.put_scalar("{}total_loss".format(prefix), total_losses_reduced, cur_iter=cur_iter)
            if len(metrics_dict) > 1:
                storage.put_scalars(cur_iter=cur_iter, **metrics_dict)

    @staticmethod
    def write_metrics(loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int,
                      prefix: str = "") -> None:
        """Average the losses over ranks and put them (and ``data_time``) into the storage (detectron2's
        per-iteration API; the trainer itself batches its reads, see `flush_metrics`)."""
        values = {k: v.detach().float().cpu().item() for k, v in loss_dict.items()}
        SimpleTrainer._write_records([(cur_iter, values, data_time)], prefix)

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
                 zero_grad_before_forward: bool = False, skip_nonfinite_loss: bool = False,
                 amp_weight_copies: bool = True):
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
        # bfloat16: the forward runs on bfloat16 copies of the Linear/Conv weights, refreshed by one multi-tensor
        # copy per step, instead of autocast casting each weight (and its gradient) in every iteration
        self.weight_copies = None
        if self.amp and self.amp_dtype == torch.bfloat16 and amp_weight_copies:
            if isinstance(model, (DistributedDataParallel, DataParallel)):
                logger.info("train.amp.weight_copies: not with DistributedDataParallel; plain autocast is used.")
            else:
                from .amp import WeightCopies

                self.weight_copies = WeightCopies(model, torch.bfloat16)

    def run_step(self):
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        data, data_time = self._next_batch()
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        copies = self.weight_copies
        if copies is not None:
            copies.refresh_if_stale()  # first step, checkpoint loads
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp), (
                copies.swapped() if copies is not None else contextlib.nullcontext()):
            loss_dict = self._forward(data)
            losses = _loss_total(loss_dict)
        guarded = self._device_guarded()
        bad_loss = self._nonfinite(losses) if guarded else None
        bad_grad = None
        if not guarded and not self._check_finite(losses, loss_dict, data):
            self.optimizer.zero_grad()
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
            if copies is not None:
                copies.gradients_to_weights()
            self.after_backward()
            found_inf = bad_loss
            if self.clip_grad_params is not None:
                norm = self.clip_grads(self.model.parameters())
                if guarded and norm is not None:
                    bad_grad = self._nonfinite(norm)
                    found_inf = torch.maximum(bad_loss, bad_grad)
            self._optimizer_step(found_inf)
            if copies is not None:
                copies.refresh()
        self._record(loss_dict, data_time, data, bad_loss, bad_grad)

    def clip_grads(self, params):
        """``clip_grad_norm_`` over the parameters with gradients, with the multi-tensor (foreach) kernels;
        returns the total norm (a device tensor: not read here)."""
        params = [p for p in params if p.requires_grad and p.grad is not None]
        if len(params) > 0:
            kwargs = dict(self.clip_grad_params)
            kwargs.setdefault("foreach", True)
            return torch.nn.utils.clip_grad_norm_(parameters=params, **kwargs)

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
