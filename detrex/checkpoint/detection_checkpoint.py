"""``DetectionCheckpointer``: fvcore's ``Checkpointer`` plus the pre-trained formats detectors use.

Formats accepted by :meth:`DetectionCheckpointer.load`:

* our own ``.pth`` (``{"model": state_dict, "trainer": ..., "iteration": ..., ...}``);
* a bare state dict ``.pth``; a raw torchvision ResNet state dict (``conv1.weight``,
  ``layer1.0.conv1.weight``, ...) is renamed to detectron2 ResNet names (``stem.conv1.weight``,
  ``res2.0.conv1.weight``, ...) unless the model itself uses torchvision names, then matched by
  suffix (fills ``backbone.res2...`` or ``backbone.body.layer1...``);
* detectron2 model-zoo ``.pkl`` (``{"model": ..., "__author__": ...}``, e.g. the
  torchvision-converted ``R-50.pkl`` with numpy arrays and ``matching_heuristics``);
* Caffe2/Detectron1/MSRA ``.pkl`` (``{"blobs": ...}`` or a flat blob dict): ``*_momentum`` dropped,
  names converted (``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``) and suffix-matched;
* ``detectron2://...`` names, served from the local weights directory (``$DETREX_WEIGHTS``, see
  :mod:`detrex.utils.file_io`); ``https://`` URLs downloaded by iopath.

Crash safety (see :meth:`DetectionCheckpointer.save`): checkpoint files and ``last_checkpoint``
are written to a temporary file, fsync'ed and renamed into place, ``last_checkpoint`` only after
the checkpoint is complete. ``resume_or_load(..., resume=True)`` uses the newest checkpoint that
loads: if ``last_checkpoint`` names a missing or unreadable file it falls back (with a warning) to
the newest loadable ``model_*.pth``.

Loading pre-trained weights (``train.init_checkpoint``) checks how well they fit the model
(``match``): ``"auto"`` (default) fails when nothing fits or when more than half of the
checkpoint's keys are unexpected or have another shape (a checkpoint of another architecture),
and only warns about a few leftovers (e.g. ``stem.fc.*`` of an ImageNet ResNet) and about model
keys the checkpoint lacks (a detector's heads when loading a backbone); ``"exact"`` fails on any
unexpected, mismatched or missing key; ``"partial"`` never fails (detectron2's behaviour).
An unreadable (truncated, not-a-checkpoint) file raises :class:`CheckpointError` naming it.

``.pth`` files are read with ``torch.load(weights_only=True)`` with numpy arrays/scalars
allow-listed (torch >= 2.6 default is weights-only); files needing other classes fall back to a
full unpickle with a warning naming them. Saved checkpoints contain only tensors and plain Python
values (never OmegaConf objects).
"""
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer

from detrex.utils import comm
from detrex.utils.file_io import PathManager, atomic_write, is_local_path

from .c2_model_loading import (
    align_and_update_state_dicts,
    convert_torchvision_resnet_names,
    is_torchvision_resnet_state_dict,
)
from .swin_conversion import convert_swin_imagenet_state_dict, is_swin_imagenet_state_dict

__all__ = [
    "DetectionCheckpointer",
    "CheckpointError",
    "CheckpointMismatchError",
    "load_torch_file",
    "numpy_safe_globals",
]

MATCH_POLICIES = ("auto", "exact", "partial")
_CKPT_NAME = re.compile(r"^model_(\d+|final)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (truncated, corrupt or not a checkpoint)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """Pre-trained weights do not fit the model (see ``match`` in the module doc)."""


def _short_list(keys, n: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")

logger = logging.getLogger(__name__)


def numpy_safe_globals() -> List[Any]:
    """numpy classes/functions needed to unpickle arrays and scalars (allow-list for torch.load)."""
    out = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    out += [_reconstruct, scalar]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                out.append(obj)
    return out


def load_torch_file(path: str, map_location="cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and numpy allow-listed.

    If the file needs other globals, it is re-read with ``weights_only=False`` after a warning
    naming them (only load files you trust).
    """
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        logger.warning(
            f"{path} cannot be loaded with torch.load(weights_only=True) because it contains "
            f"non-tensor objects {unsafe or ''} ({str(e).splitlines()[0]}). Falling back to "
            "weights_only=False: only do this for files you trust. Re-save the file with plain "
            "tensors/dicts to avoid this."
        )
        return torch.load(path, map_location=map_location, weights_only=False)


def _strip_query(path: str):
    parsed = urlparse(path)
    if parsed.query:
        queries = parse_qs(parsed.query)
        return parsed._replace(query="").geturl(), queries
    return path, {}


class DetectionCheckpointer(Checkpointer):
    """Checkpointer for detectors: save/resume plus pre-trained weight formats (module doc).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: where ``save()`` writes and ``last_checkpoint`` lives.
        save_to_disk: default: only the main process writes.
        checkpointables: extra objects with ``state_dict``/``load_state_dict`` (``trainer``,
            ``ema_state``), saved under their names and loaded only when resuming.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 match: str = "auto", **checkpointables):
        is_main_process = comm.is_main_process()
        super().__init__(
            model,
            save_dir,
            save_to_disk=is_main_process if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.path_manager = PathManager
        self._parsed_url_during_load = None
        if match not in MATCH_POLICIES:
            raise ValueError(
                f"DetectionCheckpointer(match={match!r}): use one of {', '.join(MATCH_POLICIES)} "
                "(train.init_checkpoint_match)."
            )
        self.match = match
        self._check_match = False  # only while loading pre-trained weights (not resuming)
        self._loading_path = ""
        self._preloaded: Optional[Tuple[str, Dict[str, Any]]] = None
        #: the checkpoint file the last ``resume_or_load(resume=True)`` resumed from, or None
        self.resumed_from: Optional[str] = None

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{"model", <checkpointables>..., **kwargs}`` to ``save_dir/name.pth`` atomically,
        then point ``last_checkpoint`` at it (also atomically).

        Every process that calls ``save`` computes the state dicts (so checkpointables may use
        collectives, e.g. the trainer gathering per-rank RNG states); only ``save_to_disk``
        processes write.
        """
        if not self.save_dir:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if not self.save_to_disk:
            return
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info("Saving checkpoint to {}".format(save_file))
        if is_local_path(save_file):
            atomic_write(save_file, lambda f: torch.save(data, f))
        else:  # remote storage: no rename available, write in place
            with self.path_manager.open(save_file, "wb") as f:
                torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write the basename of the newest complete checkpoint to ``last_checkpoint``."""
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        if is_local_path(save_file):
            atomic_write(save_file, lambda f: f.write(last_filename_basename), binary=False)
        else:
            with self.path_manager.open(save_file, "w") as f:
                f.write(last_filename_basename)

    # ------------------------------------------------------------------ resuming
    def has_checkpoint(self) -> bool:
        """``last_checkpoint`` or any ``model_*.pth`` exists in ``save_dir``."""
        if not self.save_dir:
            return False
        return super().has_checkpoint() or bool(self._checkpoint_candidates(include_tagged=False))

    def _checkpoint_candidates(self, include_tagged: bool = True) -> List[str]:
        """Checkpoint files to try when resuming: the one ``last_checkpoint`` names first, then
        ``model_*.pth`` newest first (by modification time, then iteration in the name)."""
        out = []
        if include_tagged and super().has_checkpoint():
            tagged = super().get_checkpoint_file()
            if tagged and not tagged.endswith(os.sep):
                out.append(tagged)
        if not is_local_path(self.save_dir) or not os.path.isdir(self.save_dir):
            return out

        def key(name):
            num = _CKPT_NAME.match(name).group(1)
            path = os.path.join(self.save_dir, name)
            return (os.path.getmtime(path), float("inf") if num == "final" else int(num))

        try:
            names = [n for n in os.listdir(self.save_dir) if _CKPT_NAME.match(n)
                     and os.path.isfile(os.path.join(self.save_dir, n))]
            names.sort(key=key, reverse=True)
        except OSError:
            names = []
        for n in names:
            p = os.path.join(self.save_dir, n)
            if p not in out:
                out.append(p)
        return out

    def _remove_stale_temp_files(self) -> None:
        if not (self.save_to_disk and is_local_path(self.save_dir) and os.path.isdir(self.save_dir)):
            return
        for n in os.listdir(self.save_dir):
            if n.startswith(".") and ".tmp." in n and (
                n.startswith(".model_") or n.startswith(".last_checkpoint")
            ):
                try:
                    os.remove(os.path.join(self.save_dir, n))
                    self.logger.info(f"Removed {n}, left over from an interrupted checkpoint write.")
                except OSError:
                    pass

    def find_resumable_checkpoint(self) -> Tuple[str, Optional[Dict[str, Any]]]:
        """``(path, loaded data)`` of the newest checkpoint in ``save_dir`` that loads, or
        ``("", None)`` when there is none. Unreadable files are skipped with a warning; if files
        exist but none loads, :class:`CheckpointError` lists them."""
        candidates = self._checkpoint_candidates()
        tried = []
        for i, path in enumerate(candidates):
            if not os.path.isfile(path) and "://" not in path:
                self.logger.warning(
                    f"last_checkpoint names {path}, which does not exist; looking for the newest "
                    "complete checkpoint instead."
                )
                tried.append(f"{path} (missing)")
                continue
            try:
                data = self._load_file(path)
            except Exception as e:
                self.logger.warning(
                    f"Cannot resume from {path}: {str(e).splitlines()[0] if str(e) else e!r}; "
                    "trying an older checkpoint."
                )
                tried.append(f"{path} ({type(e).__name__})")
                continue
            if i > 0 or tried:
                self.logger.warning(f"Resuming from {path} instead (the newest loadable checkpoint).")
            return path, data
        if tried and any("(missing)" not in t for t in tried):
            raise CheckpointError(
                f"--resume: no loadable checkpoint in {self.save_dir}; tried {'; '.join(tried)}. "
                "Remove the broken files or start without --resume."
            )
        return "", None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume``: load the newest complete checkpoint of ``save_dir`` with every
        checkpointable (``self.resumed_from`` is set to it). Otherwise, or when there is none:
        load only the model weights from ``path`` (pre-trained weights; checked per ``match``)."""
        self.resumed_from = None
        if resume and self.save_dir:
            self._remove_stale_temp_files()
            found, data = self.find_resumable_checkpoint()
            if found:
                self._preloaded = (found, data)
                try:
                    ret = self.load(found)
                finally:
                    self._preloaded = None
                self.resumed_from = found
                return ret
        return self.load(path, checkpointables=[], check_match=True)

    def resolve_path(self, path: str) -> str:
        """A local file for ``path`` (local path, ``detectron2://`` name or URL); clear errors."""
        if os.path.isfile(path):
            return path
        if "://" in path:
            # detectron2:// raises FileNotFoundError listing the paths tried
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise FileNotFoundError(f"Checkpoint {path} resolved to {local}, which is not a file.")
            return local
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"Checkpoint path {path!r} is a directory; pass a file such as "
                f"{os.path.join(path, 'model_final.pth')}."
            )
        raise FileNotFoundError(
            f"Checkpoint file not found: {path!r} (absolute: {os.path.abspath(path)}). Check "
            "train.init_checkpoint."
        )

    def load(self, path: str, *args, check_match: bool = False, **kwargs) -> Dict[str, Any]:
        """Load ``path`` (see the module doc for formats); ``""`` means train from scratch.

        ``check_match``: verify the weights fit the model per ``self.match`` (as for
        pre-trained weights in ``resume_or_load``). Every rank reads the file itself (the model
        is unwrapped from DDP by fvcore), so the path must be readable on every machine.
        """
        if check_match:
            self._check_match = True
            try:
                return self.load(path, *args, **kwargs)
            finally:
                self._check_match = False
        if not path:
            return super().load(path, *args, **kwargs)
        path, queries = _strip_query(path)
        self._parsed_url_during_load = queries
        local = self.resolve_path(path)
        self._loading_path = path
        try:
            return super().load(local, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None
            self._loading_path = ""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == filename:
            return self._preloaded[1]
        try:
            return self._read_file(filename)
        except (FileNotFoundError, IsADirectoryError, PermissionError, CheckpointError):
            raise
        except Exception as e:
            size = os.path.getsize(filename) if os.path.isfile(filename) else None
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"Cannot read checkpoint {filename} ({size} bytes): {type(e).__name__}: {first}. "
                "The file is truncated, corrupt or not a checkpoint; re-download or re-save it."
            ) from e

    def _read_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            with PathManager.open(filename, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: expected a dict in the .pkl file, got {type(data)}")
            if "model" in data and "__author__" in data:
                # detectron2 model zoo format
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            # Caffe2/Detectron1/MSRA format
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            with PathManager.open(filename, "rb") as f:
                data = load_torch_file(f)
            assert "model_state" in data, (
                f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'."
            )
            model_state = {k: v for k, v in data["model_state"].items()
                           if not k.endswith("num_batches_tracked")}
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}

        loaded = load_torch_file(filename)
        if not isinstance(loaded, dict):
            raise ValueError(f"{filename}: expected a dict, got {type(loaded).__name__}")
        if "model" not in loaded:
            loaded = {"model": loaded}
        state = loaded["model"]
        if isinstance(state, dict) and is_torchvision_resnet_state_dict(state):
            if not self._model_uses_torchvision_names():
                self.logger.info(
                    f"{filename} is a torchvision ResNet state dict: renaming to detectron2 "
                    "ResNet names (stem.*, res2..res5.*) and matching by suffix."
                )
                loaded["model"] = convert_torchvision_resnet_names(state)
            else:
                loaded["model"] = {k: v for k, v in state.items()
                                   if not k.endswith("num_batches_tracked")}
            loaded["__author__"] = "torchvision"
            loaded["matching_heuristics"] = True
        elif isinstance(state, dict) and is_swin_imagenet_state_dict(state):
            self.logger.info(
                f"{filename} is an official Swin ImageNet checkpoint: renaming (norm -> norm3; head.*, "
                "attn_mask dropped) and matching by suffix."
            )
            loaded["model"] = convert_swin_imagenet_state_dict(state)
            loaded["__author__"] = "swin"
            loaded["matching_heuristics"] = True
        if self._parsed_url_during_load and "matching_heuristics" in self._parsed_url_during_load:
            value = self._parsed_url_during_load["matching_heuristics"][0]
            loaded["matching_heuristics"] = value.lower() in ("true", "1", "yes")
        return loaded

    def _model_uses_torchvision_names(self) -> bool:
        keys = self.model.state_dict().keys()
        return any(k == "layer1.0.conv1.weight" or k.endswith(".layer1.0.conv1.weight")
                   for k in keys)

    def _load_model(self, checkpoint):
        if not isinstance(checkpoint.get("model"), dict):
            raise CheckpointError(
                f"{self._loading_path}: the 'model' entry is a {type(checkpoint.get('model')).__name__}, "
                "not a state dict; this is not a model checkpoint."
            )
        if checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
        num_ckpt_keys = len(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        model_buffers = dict(self.model.named_buffers(recurse=False))
        for k in ["pixel_mean", "pixel_std"]:
            # old checkpoints may lack these buffers; the model's defaults are fine
            if k in model_buffers:
                try:
                    incompatible.missing_keys.remove(k)
                except ValueError:
                    pass
        for k in list(incompatible.unexpected_keys):
            # old anchor-generator keys
            if "anchor_generator.cell_anchors" in k:
                incompatible.unexpected_keys.remove(k)
        if self._check_match:
            self._verify_match(incompatible, num_ckpt_keys)
        return incompatible

    def _verify_match(self, incompatible, num_ckpt_keys: int) -> None:
        """Raise :class:`CheckpointMismatchError` if the weights do not fit per ``self.match``."""
        if self.match == "partial":
            return
        unexpected = list(incompatible.unexpected_keys)
        shapes = list(incompatible.incorrect_shapes)
        missing = list(incompatible.missing_keys)
        bad = len(unexpected) + len(shapes)
        loaded = num_ckpt_keys - bad
        if self.match == "exact":
            failed = bool(bad or missing)
        else:  # auto
            failed = num_ckpt_keys > 0 and (loaded <= 0 or bad > 0.5 * num_ckpt_keys)
        if not failed:
            return
        parts = [f"{loaded} of {num_ckpt_keys} checkpoint keys fit the model"]
        if shapes:
            parts.append("shape mismatch: " + _short_list(
                f"{k} {tuple(a)} in checkpoint vs {tuple(b)} in model" for k, a, b in shapes))
        if unexpected:
            parts.append("not in the model: " + _short_list(unexpected))
        if missing:
            parts.append(f"model keys not in the checkpoint ({len(missing)}): " + _short_list(missing))
        hint = ("it looks like a checkpoint of another architecture" if self.match == "auto"
                else "train.init_checkpoint_match='exact' requires every key to fit")
        raise CheckpointMismatchError(
            f"Checkpoint {self._loading_path} does not fit the model ({hint}): "
            + "; ".join(parts)
            + ". Check train.init_checkpoint, or set train.init_checkpoint_match=partial to load "
            "the keys that fit anyway."
        )

    def _convert_ndarray_to_tensor(self, state_dict: Dict[str, Any]) -> None:
        for k in list(state_dict.keys()):
            v = state_dict[k]
            if isinstance(v, np.ndarray):
                state_dict[k] = torch.from_numpy(np.ascontiguousarray(v))
            elif not isinstance(v, torch.Tensor):
                raise ValueError(f"Unsupported type found in checkpoint! {k}: {type(v)}")
