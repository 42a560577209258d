"""A tiny model, in-memory datasets and an evaluator for fast CPU tests of the training engine.

Everything here is deterministic and small enough to train in a second on one CPU core:

* :class:`TinyRegressor` - an MLP (``backbone.*``, ``norm``, ``head``) mapping ``x`` (in_dim) to
  ``y`` (out_dim); returns ``{"loss_mse", "loss_l1"}`` in training and ``[{"pred"}]`` in eval.
* :class:`TinyRegressionDataset` - ``num_samples`` items ``{"x": (in_dim,), "y": (out_dim,)}``
  from a fixed random linear map (seeded).
* :class:`InMemoryTrainLoader` - infinite; the global batch of step ``p`` is drawn from a
  generator seeded by ``(seed, p)``, and rank ``r`` of ``W`` gets the ``r``-th contiguous
  ``total_batch_size / W`` slice. Its position is checkpointable (``state_dict``), so a resumed
  run sees exactly the batches of an uninterrupted one, and ``W`` processes see the same global
  batch as one process.
* :class:`InMemoryTestLoader` - finite batches, each rank taking a contiguous shard.
* :class:`TinyRegressionEvaluator` - mean squared error over the test set (gathered to rank 0).
* :func:`tiny_regression_dicts` + :class:`TinyRegressionMapper` - the same data as detectron2-style
  dataset dicts (``image_id``, ``width``/``height`` of both orientations, optional ``file_name``) and a
  mapper with random "augmentation" (numpy noise), for :func:`detrex.data.build_detection_train_loader`
  (real sampler, aspect-ratio grouping, workers, resumable position).

Fault injection for reliability tests: ``nan_ids`` (NaN targets -> non-finite loss for those
samples) and ``TinyRegressor(exit_at_iter=, exit_rank=)`` (the process vanishes mid-training).
"""
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

import torch
from torch import nn

from . import comm

__all__ = [
    "TinyRegressor",
    "TinyRegressionDataset",
    "InMemoryTrainLoader",
    "InMemoryTestLoader",
    "TinyRegressionEvaluator",
    "tiny_regression_dicts",
    "TinyRegressionMapper",
]


class TinyRegressionDataset:
    """``num_samples`` dicts ``{"x": float32 (in_dim,), "y": float32 (out_dim,)}``; ``y = tanh(x W)``."""

    def __init__(self, num_samples: int = 64, in_dim: int = 4, out_dim: int = 2, seed: int = 0,
                 nan_ids: Sequence[int] = ()):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, in_dim, generator=g)
        w = torch.randn(in_dim, out_dim, generator=g)
        self.y = torch.tanh(self.x @ w)
        for i in nan_ids:
            self.y[int(i)] = float("nan")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "image_id": int(i)}


class InMemoryTrainLoader:
    """Infinite iterator of per-rank batches (``list[dict]``), determined by the step index."""

    def __init__(self, dataset: TinyRegressionDataset, total_batch_size: int = 8, seed: int = 0):
        world = comm.get_world_size()
        if total_batch_size % world != 0:
            raise ValueError(
                f"total_batch_size={total_batch_size} must be divisible by the world size {world}"
            )
        self.dataset = dataset
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // world
        self.seed = seed
        self.position = 0

    def _indices(self, position: int) -> List[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        idx = torch.randint(len(self.dataset), (self.total_batch_size,), generator=g)
        rank = comm.get_rank()
        return idx[rank * self.batch_size:(rank + 1) * self.batch_size].tolist()

    def __iter__(self):
        while True:
            batch = [self.dataset[i] for i in self._indices(self.position)]
            self.position += 1
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.position = int(state["position"])


class InMemoryTestLoader:
    """Finite batches of ``batch_size`` over this rank's contiguous shard of ``dataset``."""

    def __init__(self, dataset: TinyRegressionDataset, batch_size: int = 4):
        self.dataset = dataset
        self.batch_size = batch_size
        n, world, rank = len(dataset), comm.get_world_size(), comm.get_rank()
        shard = (n + world - 1) // world
        self.indices = list(range(rank * shard, min(n, (rank + 1) * shard)))

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for s in range(0, len(self.indices), self.batch_size):
            yield [self.dataset[i] for i in self.indices[s:s + self.batch_size]]


class TinyRegressor(nn.Module):
    """MLP regressor with detector-like I/O.

    ``forward(batched_inputs)``: ``batched_inputs`` is a list of dicts with ``"x"`` (in_dim,) and
    (training) ``"y"`` (out_dim,). Training returns ``{"loss_mse", "loss_l1"}`` and also puts
    the unsmoothed total as ``tiny/objective`` into the event storage; eval returns
    ``[{"pred": (out_dim,)}]``.
    """

    def __init__(self, in_dim: int = 4, hidden_dim: int = 16, out_dim: int = 2,
                 exit_at_iter: int = -1, exit_rank: int = 1, step_sleep: float = 0.0,
                 fault: str = "exit"):
        super().__init__()
        # seconds slept per training forward (lets tests interrupt a run at a chosen moment)
        self.step_sleep = step_sleep
        # fault injection at the start of iteration `exit_at_iter` on process `exit_rank`:
        # fault="exit": os._exit(0) (vanishes, like a lost node); "hang": sleeps for an hour
        if fault not in ("exit", "hang"):
            raise ValueError(f"fault must be 'exit' or 'hang', got {fault!r}")
        self.exit_at_iter = exit_at_iter
        self.exit_rank = exit_rank
        self.fault = fault
        self.backbone = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, out_dim)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, batched_inputs):
        if self.training and self.exit_at_iter >= 0:
            from .events import get_event_storage, has_event_storage

            if (has_event_storage() and get_event_storage().iter == self.exit_at_iter
                    and comm.get_rank() == self.exit_rank):
                if self.fault == "hang":
                    import time

                    time.sleep(3600)
                os._exit(0)  # vanish without an error, like a lost node
        if self.training and self.step_sleep > 0:
            import time

            time.sleep(self.step_sleep)
        x = torch.stack([d["x"] for d in batched_inputs]).to(self.device)
        pred = self.head(self.norm(self.backbone(x)))
        if not self.training:
            return [{"pred": p} for p in pred.float()]
        y = torch.stack([d["y"] for d in batched_inputs]).to(self.device)
        pred = pred.float()
        losses = {
            "loss_mse": ((pred - y) ** 2).mean(),
            "loss_l1": 0.1 * (pred - y).abs().mean(),
        }
        from .events import get_event_storage, has_event_storage

        if has_event_storage():
            total = sum(v.detach() for v in losses.values())
            get_event_storage().put_scalar("tiny/objective", total, smoothing_hint=False)
        return losses


class TinyRegressionEvaluator:
    """``DatasetEvaluator``-style: returns ``OrderedDict(regression={"MSE": ..., "num": ...})``."""

    def __init__(self, distributed: bool = True):
        self._distributed = distributed
        self.reset()

    def reset(self):
        self._sq_err = 0.0
        self._count = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            err = (out["pred"].detach().cpu().float() - inp["y"].float()) ** 2
            self._sq_err += float(err.sum())
            self._count += err.numel()

    def evaluate(self):
        parts = [(self._sq_err, self._count)]
        if self._distributed:
            parts = comm.gather(parts[0], dst=0)
            if not comm.is_main_process():
                return {}
        sq, cnt = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return OrderedDict(regression={"MSE": sq / max(cnt, 1), "num": float(cnt)})


def tiny_regression_dicts(num_samples: int = 32, in_dim: int = 4, out_dim: int = 2, seed: int = 0,
                          nan_ids: Sequence[int] = (), image_root: Optional[str] = None) -> List[dict]:
    """:class:`TinyRegressionDataset` as dataset dicts ``{"image_id", "width", "height", "x", "y"}``.

    Every third sample is "portrait" (20x30), the others "landscape" (30x20), so aspect-ratio
    grouping has two buckets. With ``image_root``, ``file_name`` = ``<image_root>/<id>.png``.
    """
    ds = TinyRegressionDataset(num_samples, in_dim, out_dim, seed, nan_ids)
    out = []
    for i in range(num_samples):
        w, h = (20, 30) if i % 3 == 0 else (30, 20)
        d = {"image_id": i, "width": w, "height": h, "x": ds.x[i].tolist(), "y": ds.y[i].tolist()}
        if image_root:
            d["file_name"] = os.path.join(image_root, f"{i}.png")
        out.append(d)
    return out


class TinyRegressionMapper:
    """Dataset dict -> ``{"image_id", "x" (+ numpy noise), "y", "width", "height"}``.

    ``noise`` draws from ``np.random`` like DETR augmentations do. Dicts with ``file_name`` have
    their image decoded (:func:`detrex.data.detection_utils.read_image`); an undecodable image
    raises :class:`~detrex.data.detection_utils.BadImageError` or, with ``on_bad_image="skip"``,
    is counted (``num_skipped``) and None is returned (the loader then draws another sample), as
    :class:`~detrex.data.DetrDatasetMapper` does.
    """

    def __init__(self, noise: float = 0.05, on_bad_image: str = "raise"):
        from detrex.data.bad_images import BadImagePolicy

        self.noise = noise
        self._bad_images = BadImagePolicy(on_bad_image)

    @property
    def on_bad_image(self) -> str:
        return self._bad_images.mode

    @on_bad_image.setter
    def on_bad_image(self, value: str) -> None:
        self._bad_images.mode = value

    @property
    def num_skipped(self) -> int:
        return self._bad_images.num_skipped

    def __call__(self, d: dict) -> Optional[dict]:
        if "file_name" in d:
            from detrex.data.detection_utils import BadImageError, read_image

            try:
                read_image(d["file_name"], format="RGB")
            except BadImageError as e:
                self._bad_images.handle(e, d["file_name"])
                return None
        x = torch.tensor(d["x"], dtype=torch.float32)
        if self.noise:
            x = x + self.noise * torch.from_numpy(np.random.randn(x.numel()).astype(np.float32))
        out = {"image_id": d["image_id"], "x": x, "y": torch.tensor(d["y"], dtype=torch.float32),
               "width": d["width"], "height": d["height"]}
        return self._bad_images.attach(out)
