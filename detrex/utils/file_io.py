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

__all__ = ["PathManager", "Detectron2Handler", "get_weights_dir", "WEIGHTS_ENV_VAR", "atomic_write",
           "is_local_path"]

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


def _fsync_dir(dirname: str) -> None:
    """Persist a rename in ``dirname`` (best effort; not supported on every OS/filesystem)."""
    try:
        fd = os.open(dirname or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn, binary: bool = True) -> None:
    """Write ``path`` so that readers (and a crash at any moment) see the old or the new file,
    never a partial one.

    ``write_fn(f)`` writes into a temporary file ``.<name>.tmp.<pid>`` in the same directory,
    which is flushed, fsync'ed and then renamed over ``path`` with ``os.replace`` (atomic on
    POSIX and Windows); the directory is fsync'ed so the rename survives a power loss.
    Only for local paths.
    """
    dirname, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(dirname, f".{base}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)


def is_local_path(path: str) -> bool:
    """True for plain filesystem paths (not ``scheme://`` URLs)."""
    return "://" not in str(path)
