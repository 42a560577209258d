#!/usr/bin/env python
"""Convert a torchvision ResNet ``.pth`` to a detectron2-format ``.pkl`` (as detectron2's
``tools/convert-torchvision-to-d2.py``).

    wget https://download.pytorch.org/models/resnet101-5d3b4d8f.pth
    python tools/convert_torchvision_to_d2.py resnet101-5d3b4d8f.pth output/weights/R-101.pkl

Output: ``{"model": {name: numpy array}, "__author__": "torchvision", "matching_heuristics": True}``
with detectron2 ResNet names (:func:`detrex.checkpoint.convert_torchvision_resnet_names`):
``conv1`` -> ``stem.conv1``, ``bn1`` -> ``stem.conv1.norm``, ``layer{N}`` -> ``res{N+1}``,
``bn{1,2,3}`` -> ``conv{1,2,3}.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` ->
``shortcut.norm``; ``num_batches_tracked`` buffers are dropped. The ImageNet classifier ``fc.*`` is
dropped (``--keep-fc`` keeps it as ``stem.fc.*``, as detectron2's script does; it is then reported as
an unused key when loading into a backbone).

Use the result with ``stride_in_1x1=False``, RGB input and ImageNet mean/std (the DETR configs do).
"""
import argparse
import os
import pickle
import sys
from typing import Dict, List, Optional

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import torch  # noqa: E402

from detrex.checkpoint.c2_model_loading import (  # noqa: E402
    convert_torchvision_resnet_names,
    is_torchvision_resnet_state_dict,
)

__all__ = ["convert_torchvision_resnet", "main"]


class ConversionError(ValueError):
    """The input file is not a torchvision ResNet checkpoint (message says why)."""


def _load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: not a torch checkpoint of plain tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint of tensors ({first}). Pass a torchvision "
            "ResNet file such as resnet50-0676ba61.pth from download.pytorch.org/models."
        ) from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor], *, keep_fc: bool = False,
                               source: str = "<state dict>") -> Dict[str, object]:
    """Rename a torchvision ResNet state dict; returns the detectron2 ``.pkl`` payload."""
    if any(k.startswith(("stem.", "res2.")) for k in state_dict):
        raise ConversionError(f"{source}: already has detectron2 names (stem.*, res2.*); nothing to convert")
    if not is_torchvision_resnet_state_dict(state_dict):
        sample = sorted(state_dict)[:5]
        raise ConversionError(
            f"{source}: not a torchvision ResNet state dict (expected only conv1.*, bn1.*, layer1-4.*, fc.* "
            f"keys, with layer1.0.*); first keys: {sample}"
        )
    renamed = convert_torchvision_resnet_names(state_dict)
    model = {
        k: v.detach().cpu().numpy()
        for k, v in renamed.items()
        if keep_fc or not k.startswith("stem.fc.")
    }
    return {"model": model, "__author__": "torchvision", "matching_heuristics": True}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision ResNet .pth (state dict)")
    parser.add_argument("output", help="detectron2-format .pkl to write")
    parser.add_argument("--keep-fc", action="store_true", help="keep the classifier as stem.fc.*")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every renamed key")
    args = parser.parse_args(argv)
    try:
        state_dict = _load_state_dict(args.input)
        res = convert_torchvision_resnet(state_dict, keep_fc=args.keep_fc, source=args.input)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "wb") as f:
        pickle.dump(res, f)
    if args.verbose:
        for k in sorted(res["model"]):
            print(k, tuple(res["model"][k].shape))
    print(f"wrote {len(res['model'])} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
