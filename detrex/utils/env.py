"""Environment helpers: RNG seeding and a printable summary of the software environment."""
import os
import platform
import random
import sys
from datetime import datetime
from typing import Optional

import numpy as np
import torch

__all__ = ["seed_all_rng", "collect_env_info", "get_rng_state", "set_rng_state"]


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python, numpy and torch RNGs. ``None`` draws a random seed (logged). Returns it."""
    if seed is None:
        seed = (
            os.getpid()
            + int(datetime.now().strftime("%S%f"))
            + int.from_bytes(os.urandom(2), "big")
        ) % (2**31)
        import logging

        logging.getLogger(__name__).info(f"Using a generated random seed {seed}")
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def get_rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states in a ``weights_only``-loadable form.

    numpy's state is stored as a tensor plus ints (not an ndarray) so that checkpoints holding it
    load with ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states produced by :func:`get_rng_state`."""
    if "python" in state:
        py = state["python"]
        # lists survive some serializers where tuples do not
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(
            (
                n["algorithm"],
                n["keys"].numpy().astype(np.uint32),
                int(n["pos"]),
                int(n["has_gauss"]),
                float(n["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def collect_env_info() -> str:
    """A table of versions (python, torch, torchvision, CUDA, numpy, ...) for the log."""
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", "")),
        ("platform", platform.platform()),
        ("numpy", np.__version__),
        ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
        ("PyTorch debug build", torch.version.debug),
        ("torch CUDA build", torch.version.cuda),
    ]
    try:
        import detrex

        rows.append(("detrex", f"{detrex.__version__} @{os.path.dirname(detrex.__file__)}"))
    except Exception:
        pass
    has_cuda = torch.cuda.is_available()
    rows.append(("CUDA available", has_cuda))
    if has_cuda:
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        rows.append(("cuDNN", torch.backends.cudnn.version()))
    rows.append(("CPU threads", torch.get_num_threads()))
    from importlib import metadata

    # distribution metadata only: no imports of the packages themselves (cheap)
    for dist in ("torchvision", "fvcore", "iopath", "omegaconf", "hydra-core", "timm", "pycocotools"):
        try:
            rows.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            rows.append((dist, "not found"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
