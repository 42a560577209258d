"""Training metrics: ``EventStorage`` and the writers that flush it.

Same interface as ``detectron2.utils.events``. A trainer opens an :class:`EventStorage` for the
duration of training; code anywhere in the loop (trainer, hooks, models) calls
``get_event_storage().put_scalar(name, value)``; writers (:class:`CommonMetricPrinter`,
:class:`JSONWriter`, :class:`TensorboardXWriter`) read it periodically.
"""
import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Optional

import torch
from fvcore.common.history_buffer import HistoryBuffer

from .file_io import PathManager

__all__ = [
    "get_event_storage",
    "has_event_storage",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "CommonMetricPrinter",
    "TensorboardXWriter",
    "truncate_metrics_json",
]

_CURRENT_STORAGE_STACK = []


def get_event_storage() -> "EventStorage":
    """The innermost open :class:`EventStorage`; raises if none is open."""
    assert len(_CURRENT_STORAGE_STACK), (
        "get_event_storage() has to be called inside a 'with EventStorage(...)' context!"
    )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    return len(_CURRENT_STORAGE_STACK) > 0


class EventStorage:
    """Per-iteration scalars (with history), histograms and images.

    Use as a context manager: ``with EventStorage(start_iter) as storage: ...``.
    """

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, tuple] = {}
        self._iter = start_iter
        self._current_prefix = ""
        self._vis_data = []
        self._histograms = []

    def put_image(self, img_name: str, img_tensor) -> None:
        """Store an image (CHW tensor, values in [0, 1]) for the TensorBoard writer."""
        self._vis_data.append((img_name, img_tensor, self._iter))

    def put_scalar(self, name: str, value, smoothing_hint: bool = True, cur_iter=None) -> None:
        """Record ``value`` (float or 0-d tensor) under ``name`` for iteration ``cur_iter``.

        ``smoothing_hint=True`` asks writers to report a windowed median rather than the latest
        value (losses); ``False`` for values such as ``lr`` and evaluation results.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else cur_iter
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None:
            assert existing_hint == smoothing_hint, (
                f"Scalar {name} was put with a different smoothing_hint!"
            )
        else:
            self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter=None, **kwargs) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        t = hist_tensor.detach().float().cpu()
        hist_counts = torch.histc(t, bins=bins)
        edges = torch.linspace(t.min().item(), t.max().item(), steps=bins + 1)
        self._histograms.append(
            dict(
                tag=hist_name,
                min=t.min().item(),
                max=t.max().item(),
                num=len(t.flatten()),
                sum=t.sum().item(),
                sum_squares=torch.sum(t**2).item(),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=hist_counts.tolist(),
                global_step=self._iter,
            )
        )

    def history(self, name: str) -> HistoryBuffer:
        ret = self._history.get(name, None)
        if ret is None:
            raise KeyError(f"No history metric available for {name}!")
        return ret

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> Dict[str, tuple]:
        """name -> (latest value, iteration it was put at)."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, tuple]:
        """Like :meth:`latest`, but scalars with a smoothing hint are the window median."""
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            result[k] = (
                self._history[k].median(window_size) if self._smoothing_hints[k] else v,
                itr,
            )
        return result

    def smoothing_hints(self) -> Dict[str, bool]:
        return self._smoothing_hints

    def step(self) -> None:
        self._iter += 1

    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:  # backward compatibility
        return self._iter

    def __enter__(self):
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        assert _CURRENT_STORAGE_STACK[-1] == self
        _CURRENT_STORAGE_STACK.pop()

    def state_dict(self, max_entries: int = 100) -> Dict[str, dict]:
        """The last ``max_entries`` values of every scalar history (for exact resume).

        Restoring them makes windowed medians after a resume equal those of an uninterrupted
        run (writers use windows of 20). Only plain floats/ints: ``weights_only``-loadable.
        """
        out = {}
        for name, buf in self._history.items():
            data = buf.values()[-max_entries:]
            out[name] = {
                "values": [float(v) for v, _ in data],
                "iters": [int(i) for _, i in data],
                "count": int(buf._count),
                "global_avg": float(buf._global_avg),
                "smoothing_hint": bool(self._smoothing_hints.get(name, True)),
            }
        return out

    def load_state_dict(self, state: Dict[str, dict]) -> None:
        """Restore histories saved by :meth:`state_dict` (not the "latest" values, so writers
        do not write the restored iterations again)."""
        for name, s in state.items():
            buf = HistoryBuffer()
            buf._data = [(float(v), int(i)) for v, i in zip(s["values"], s["iters"])]
            buf._count = int(s["count"])
            buf._global_avg = float(s["global_avg"])
            self._history[name] = buf
            self._smoothing_hints[name] = bool(s["smoothing_hint"])

    @contextmanager
    def name_scope(self, name: str):
        """Prefix every scalar put inside the block with ``name + "/"``."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        yield
        self._current_prefix = old_prefix

    def clear_images(self) -> None:
        self._vis_data = []

    def clear_histograms(self) -> None:
        self._histograms = []


class EventWriter:
    """Base class: ``write()`` is called periodically, ``close()`` at the end of training."""

    def write(self):
        raise NotImplementedError

    def close(self):
        pass


class JSONWriter(EventWriter):
    """Append one JSON object per written iteration to ``json_file`` (``metrics.json``).

    Each line holds ``iteration`` and every scalar put at that iteration (losses as the median
    over ``window_size`` iterations, other scalars as put). Appends, so a resumed run continues
    the same file.
    """

    def __init__(self, json_file: str, window_size: int = 20):
        self._file_handle = PathManager.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        storage = get_event_storage()
        to_save = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:
                continue
            to_save[itr][k] = v
        if len(to_save):
            all_iters = sorted(to_save.keys())
            self._last_write = max(all_iters)
        for itr, scalars_per_iter in sorted(to_save.items()):
            scalars_per_iter["iteration"] = itr
            self._file_handle.write(json.dumps(scalars_per_iter, sort_keys=True) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError):
            pass

    def close(self):
        self._file_handle.close()


def truncate_metrics_json(json_file: str, last_iter: int) -> int:
    """Drop the lines of ``metrics.json`` whose ``iteration`` is > ``last_iter`` (and any line
    that is not valid JSON, e.g. cut off by a crash), so that a run resumed after ``last_iter``
    continues the file exactly as an uninterrupted run would have written it.

    The file is rewritten atomically. Returns the number of lines dropped (0 if no file).
    """
    from .file_io import atomic_write, is_local_path

    if not is_local_path(json_file) or not os.path.isfile(json_file):
        return 0
    with open(json_file) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            item = json.loads(line)
            it = int(item["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
        if it <= last_iter:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write(json_file, lambda f: f.write("".join(x + "\n" for x in kept)), binary=False)
    return dropped


class TensorboardXWriter(EventWriter):
    """Write scalars (and images/histograms) as TensorBoard event files under ``log_dir``.

    ``torch.utils.tensorboard`` is imported here, lazily. If the ``tensorboard`` package is
    missing, one warning is logged and the writer does nothing.
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        self._window_size = window_size
        self._last_write = -1
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            logging.getLogger(__name__).warning(
                f"TensorBoard event files will not be written: {e}. "
                "Install it with `pip install tensorboard`."
            )
            return
        self._writer = SummaryWriter(log_dir, **kwargs)

    def write(self):
        if self._writer is None:
            return
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write
        if len(storage._vis_data) >= 1:
            for img_name, img, step_num in storage._vis_data:
                self._writer.add_image(img_name, img, step_num)
            storage.clear_images()
        if len(storage._histograms) >= 1:
            for params in storage._histograms:
                self._writer.add_histogram_raw(**params)
            storage.clear_histograms()
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def _max_memory_mb() -> Optional[float]:
    """Peak memory in MiB: CUDA max allocated if CUDA is in use, else the process peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
    try:
        import resource

        # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
    except Exception:  # pragma: no cover - e.g. Windows
        return None


class CommonMetricPrinter(EventWriter):
    """Log one console line per write::

        eta: 0:01:02  iter: 19  total_loss: 1.2  loss_ce: 0.8  time: 0.31  data_time: 0.01  lr: 0.0001  max_mem: 412M

    ``max_mem`` is the CUDA peak allocation when CUDA is in use, else the process peak RSS.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        self.logger = logging.getLogger("detrex.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write = None

    def _get_eta(self, storage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            eta_string = None
            if self._last_write is not None:
                estimate_iter_time = (time.perf_counter() - self._last_write[1]) / (
                    iteration - self._last_write[0]
                )
                eta_seconds = estimate_iter_time * (self._max_iter - iteration - 1)
                eta_string = str(datetime.timedelta(seconds=int(eta_seconds)))
            self._last_write = (iteration, time.perf_counter())
            return eta_string

    def write(self):
        storage = get_event_storage()
        iteration = storage.iter
        if self._max_iter is not None and iteration == self._max_iter:
            # after training finished the storage iter is max_iter; nothing new to print
            return
        try:
            avg_data_time = storage.history("data_time").avg(self._window_size)
            last_data_time = storage.history("data_time").latest()
        except KeyError:
            avg_data_time = last_data_time = None
        try:
            avg_iter_time = storage.history("time").global_avg()
            last_iter_time = storage.history("time").latest()
        except KeyError:
            avg_iter_time = last_iter_time = None
        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"
        eta_string = self._get_eta(storage)
        max_mem_mb = _max_memory_mb()
        losses = "  ".join(
            "{}: {:.4g}".format(k, v.median(self._window_size))
            for k, v in storage.histories().items()
            if "loss" in k
        )
        self.logger.info(
            "{eta}iter: {iter}  {losses}  {time}{data_time}lr: {lr}  {memory}".format(
                eta=f"eta: {eta_string}  " if eta_string else "",
                iter=iteration,
                losses=losses,
                time=(
                    "time: {:.4f} (last: {:.4f})  ".format(avg_iter_time, last_iter_time)
                    if avg_iter_time is not None
                    else ""
                ),
                data_time=(
                    "data_time: {:.4f} (last: {:.4f})  ".format(avg_data_time, last_data_time)
                    if avg_data_time is not None
                    else ""
                ),
                lr=lr,
                memory="max_mem: {:.0f}M".format(max_mem_mb) if max_mem_mb is not None else "",
            )
        )
