#!/usr/bin/env python
"""Turn a KS-DETR checkpoint into a baseline one (drop the teacher-only weights).

Usage: python tools/convert_ks_to_baseline.py IN OUT

IN is a ``{"model": state_dict, ...}`` file: ``.pth``/``.pt`` (torch) or ``.pkl`` (detectron2 pickle). OUT gets
``{"model": converted_state_dict}`` in the format of its own extension (``.pkl`` -> pickle, else torch). The
KS-DAB-DETR checkpoint becomes a DAB-DETR one (``projects/dab_detr``), KS-Deformable a Deformable-DETR one,
and so on; the rules are in ``projects/ks_detr/modeling/checkpoint.py``.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def _load(path):
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a dict checkpoint, got {type(data).__name__}.")
    if "model" not in data:
        raise SystemExit(f"{path}: no 'model' entry (keys: {sorted(data)[:10]}); expected {{'model': state_dict}}.")
    return data["model"]


def _save(model, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump({"model": model, "__author__": "convert_ks_to_baseline"}, f)
    else:
        import torch

        torch.save({"model": model}, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="KS checkpoint ({'model': ...}, .pth or .pkl)")
    parser.add_argument("output", help="where to write the baseline checkpoint")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        raise SystemExit(f"{args.input}: no such file.")

    from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline

    model = _load(args.input)
    converted, changes = convert_ks_to_baseline(model)
    for line in changes:
        print(line)
    print(f"{len(model)} keys -> {len(converted)} keys; wrote {args.output}")
    if not changes:
        print("warning: nothing teacher-only found; is the input a KS checkpoint?")
    _save(converted, args.output)


if __name__ == "__main__":
    main()
