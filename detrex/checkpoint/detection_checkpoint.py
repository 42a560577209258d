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

``.pth`` files are read with ``torch.load(weights_only=True)`` with numpy arrays/scalars
allow-listed (torch >= 2.6 default is weights-only); files needing other classes fall back to a
full unpickle with a warning naming them. Saved checkpoints contain only tensors and plain Python
values (never OmegaConf objects).
"""
import logging
import os
import pickle
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer

from detrex.utils import comm
from detrex.utils.file_io import PathManager

from .c2_model_loading import (
    align_and_update_state_dicts,
    convert_torchvision_resnet_names,
    is_torchvision_resnet_state_dict,
)

__all__ = ["DetectionCheckpointer", "load_torch_file", "numpy_safe_globals"]

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
                 **checkpointables):
        is_main_process = comm.is_main_process()
        super().__init__(
            model,
            save_dir,
            save_to_disk=is_main_process if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.path_manager = PathManager
        self._parsed_url_during_load = None

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

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """Load ``path`` (see the module doc for formats); ``""`` means train from scratch.

        Every rank reads the file itself (the model is unwrapped from DDP by fvcore), so the
        path must be readable on every machine.
        """
        if not path:
            return super().load(path, *args, **kwargs)
        path, queries = _strip_query(path)
        self._parsed_url_during_load = queries
        local = self.resolve_path(path)
        try:
            return super().load(local, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
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
        if self._parsed_url_during_load and "matching_heuristics" in self._parsed_url_during_load:
            value = self._parsed_url_during_load["matching_heuristics"][0]
            loaded["matching_heuristics"] = value.lower() in ("true", "1", "yes")
        return loaded

    def _model_uses_torchvision_names(self) -> bool:
        keys = self.model.state_dict().keys()
        return any(k == "layer1.0.conv1.weight" or k.endswith(".layer1.0.conv1.weight")
                   for k in keys)

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
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
        return incompatible

    def _convert_ndarray_to_tensor(self, state_dict: Dict[str, Any]) -> None:
        for k in list(state_dict.keys()):
            v = state_dict[k]
            if isinstance(v, np.ndarray):
                state_dict[k] = torch.from_numpy(np.ascontiguousarray(v))
            elif not isinstance(v, torch.Tensor):
                raise ValueError(f"Unsupported type found in checkpoint! {k}: {type(v)}")
