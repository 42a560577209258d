"""``PathManager`` (iopath) with a ``detectron2://`` handler that reads a local weights directory.

detectron2 resolves ``detectron2://ImageNetPretrained/torchvision/R-50.pkl`` by downloading from
its public bucket. Here the prefix maps to a local directory so runs work offline:

* ``$DETREX_WEIGHTS`` (default ``~/.cache/detrex/weights``) is the weights directory;
* ``detectron2://<rel/path>`` is looked up as ``<weights dir>/<rel/path>``, then as
  ``<weights dir>/<basename>``;
* if neither exists, ``FileNotFoundError`` lists every path tried and how to obtain the file.

Other URLs (``https://...``) go through iopath's HTTP handler (download + cache).
"""
import os
from typing import List

from iopath.common.file_io import HTTPURLHandler, PathHandler, PathManager as _PathManagerBase

__all__ = ["PathManager", "Detectron2Handler", "get_weights_dir", "WEIGHTS_ENV_VAR"]

WEIGHTS_ENV_VAR = "DETREX_WEIGHTS"
_DEFAULT_WEIGHTS_DIR = os.path.join("~", ".cache", "detrex", "weights")


def get_weights_dir() -> str:
    """The local weights directory: ``$DETREX_WEIGHTS`` or ``~/.cache/detrex/weights``."""
    return os.path.expanduser(os.environ.get(WEIGHTS_ENV_VAR) or _DEFAULT_WEIGHTS_DIR)


class Detectron2Handler(PathHandler):
    """Resolve ``detectron2://<name>`` to a file in the local weights directory."""

    PREFIX = "detectron2://"

    def _get_supported_prefixes(self) -> List[str]:
        return [self.PREFIX]

    def candidates(self, path: str) -> List[str]:
        name = path[len(self.PREFIX):].lstrip("/")
        root = get_weights_dir()
        out = [os.path.join(root, name)]
        base = os.path.join(root, os.path.basename(name))
        if base not in out:
            out.append(base)
        return out

    def _get_local_path(self, path: str, **kwargs) -> str:
        tried = self.candidates(path)
        for c in tried:
            if os.path.isfile(c):
                return c
        name = path[len(self.PREFIX):]
        hint = ""
        if "torchvision" in name:
            hint = (
                " For torchvision-converted ResNets: download the torchvision ImageNet weights "
                "(e.g. torchvision.models.ResNet50_Weights.IMAGENET1K_V1) and convert them with "
                "`python tools/convert_torchvision_to_d2.py <resnet.pth> <out.pkl>`,"
            )
        raise FileNotFoundError(
            f"Cannot resolve '{path}': no such file in the local weights directory. Tried:\n  "
            + "\n  ".join(tried)
            + f"\nThe weights directory is ${WEIGHTS_ENV_VAR} (currently "
            f"{os.environ.get(WEIGHTS_ENV_VAR)!r}; default {_DEFAULT_WEIGHTS_DIR}).{hint}"
            f" Put the file at {tried[0]} (or anywhere in the weights directory under its "
            "basename), or set train.init_checkpoint to a local path."
        )

    def _open(self, path: str, mode: str = "r", **kwargs):
        return open(self._get_local_path(path), mode)

    def _exists(self, path: str, **kwargs) -> bool:
        return any(os.path.isfile(c) for c in self.candidates(path))

    def _isfile(self, path: str, **kwargs) -> bool:
        return self._exists(path)


PathManager = _PathManagerBase()
PathManager.register_handler(HTTPURLHandler())
PathManager.register_handler(Detectron2Handler())
