#!/usr/bin/env python
"""Show what KS-DETR's knowledge sharing does to attention, for one image and its ground truth.

    python tools/visualize_attention.py --config-file CFG --dataset shapes_val --index 0 3 --output out/ \
        [--num-queries 4] [--mapper test|train] [--save-raw] [--opts train.init_checkpoint=model_final.pth]

e.g. for the deformable shapes demo (random init unless a checkpoint is given; ``train.seed`` seeds it):

    python tools/visualize_attention.py \
        --config-file projects/ks_detr/configs/ks_deformable_detr/ks_deformable_detr_shapes_demo.py \
        --index 0 --num-queries 3 --output out/ --save-raw

The tool looks at the last encoder layer (the KS layer of a KS model) and picks query tokens on the GT
foreground (the token under each box centre first). Single-scale models (DAB/Conditional/DN-DETR and their KS
versions) get two PNG panels per image:

* ``<name>_gt_mask.png``: the image with its (mapped) GT boxes, the GT foreground/background token mask M
  on the last encoder layer's token grid with the authors' rule (bilinear ``align_corners=True`` point
  sampling, the released models) and, side by side, the ``cell_overlap`` rule (a token is foreground when any
  pixel of its stride cell is inside a box);
* ``<name>_attention.png``: the last encoder layer's self-attention weights, averaged over heads, as heatmaps
  over the key tokens: one row per query token (chosen on the foreground, marked by a ring) and rows for the
  mean over all (valid) queries and over the foreground queries. Columns: the **student** A = softmax(QK^T/sqrt(d))
  and **teacher 1** A^t, computed from the GT-enhanced tokens X^t = sMLP(X, M) (share-V teacher: it uses A^t
  with the student's values). **Teacher 2** (share A) uses the student's weights A with its own values V^t, so
  its attention-weight map *is* the student's column; it differs from the student only in the values.
  A last column shows A^t - A.

Deformable models (Deformable-DETR, DN-Deformable-DETR and their KS versions) get:

* ``<name>_gt_mask.png``: the image with its GT boxes and the KS GT mask M of **every feature level** (KS-
  Deformable-DETR resizes one full-resolution box canvas to each level and concatenates the levels' tokens),
  with the authors' rule (top row; "the model's" marks the rule its ``ksgt`` uses) and the ``cell_overlap``
  rule (bottom row), next to the image with the chosen query tokens (on the finest level, level 0);
* ``<name>_sampling.png``: one row per query token (cyan ring): the sampling locations of all heads x levels x
  points drawn on the padded image (inside a grey frame: points off the feature maps read zeros), one dot per
  point whose area and opacity grow with its attention weight, coloured by level. Columns: the **student**
  A = softmax(attention_weights(q)) and, for a KS model, **teacher 1** A^t = softmax(attention_weights_teacher(q^t))
  from the GT-enhanced query q^t = sMLP(X, M) + P, and A^t - A (red: teacher 1 weighs the point more). All
  three KS branches sample the *same* locations (offsets come from the student query only); teacher 1 shares
  the student's values, teacher 2 shares the student's weights A (so its column would repeat the student's)
  and has its own values. Dot sizes share one scale per row. A baseline model shows the student column only.

With ``--save-raw`` it also writes, single scale, ``<name>_attention.npz`` (``student``, ``teacher1``: (N, N)
head-averaged attention of image tokens, rows = queries; ``student_heads``/``teacher1_heads``: (heads, N, N);
``mask_authors``/``mask_cell_overlap``: (h, w); ``query_tokens``; ``feat_size``; ``valid``: (N,) not-padded),
and for deformable models ``<name>_sampling.npz``: per branch (``student``; KS also ``teacher1``, ``teacher2``)
``<branch>_locations`` (queries, heads, levels, points, 2) normalized ``(x, y)``, where (0, 0) and (1, 1) are
the top-left and bottom-right corners of each level's (padded) feature map, i.e. of the padded image (not
clipped: values outside [0, 1] are points off the map), and ``<branch>_weights`` (queries, heads, levels,
points), summing to 1 over levels x points per query and head; ``query_tokens`` (indices into the N = sum_l
H_l*W_l tokens, level-major, row-major); ``spatial_shapes`` (L, 2) (H_l, W_l); ``level_start_index``;
``valid``, ``mask_authors``, ``mask_cell_overlap`` and, for KS, ``mask_model`` (the mask its sMLP received):
(N,) bool; ``padded_size``, ``image_size`` (h, w).

How it works: the model runs in eval mode (no dropout) but, for a KS model, with the detector's teacher path
switched on (``model.training`` set, submodules in eval). Single scale: a forward pre-hook on the KS layer's
attention records its inputs; the weights are recomputed from the packed ``in_proj`` (rows [0:C] q, [C:2C] k,
[3C:4C] q^t, [4C:5C] k^t), with padded keys masked. Deformable: forward hooks record the last layer's query
(input of ``sampling_offsets``), teacher query (input of ``attention_weights_teacher``) and GT mask (``ksgt``
input), a pre-hook on the decoder the level geometry; locations and weights are recomputed with the
attention's own ``compute_sampling_locations`` / ``compute_attention_weights`` from the transformer's encoder
reference points. A baseline (non-KS) model shows the student only.

The code lives in ``projects/ks_detr/visualization/`` (``single_scale.py``, ``deformable.py``, ``common.py``);
this file is the command line.
"""
import argparse
import os
import sys
from typing import Dict

import numpy as np
import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from demo.predictor import USER_ERRORS, UserInputError, build_model, default_device, load_config  # noqa: E402
from detrex.config import instantiate, try_get_key  # noqa: E402
from projects.ks_detr.visualization import deformable, single_scale  # noqa: E402
from projects.ks_detr.visualization.common import UnsupportedModelError, choose_queries  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--dataset", default=None, help="registered dataset name (default: the config's test dataset)")
    p.add_argument("--index", type=int, nargs="+", default=[0], help="indices of images in the dataset")
    p.add_argument("--mapper", choices=("test", "train"), default="test",
                   help="map the image with the config's test mapper (annotations kept) or train mapper (augmented)")
    p.add_argument("--num-queries", type=int, default=4, help="query tokens to show (chosen on the foreground)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--save-raw", action="store_true", help="also write the attention matrices as .npz")
    p.add_argument("--device", default="cpu")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides")
    return p


def run_single_scale(model, mapped: Dict, metadata, prefix: str, num_queries: int, save_raw: bool):
    """Capture, draw and (optionally) save one image of a single-scale model; returns (written, summary)."""
    rec = single_scale.capture_attention(model, [mapped])
    boxes = rec["targets"][0]["boxes_xyxy"]
    masks = single_scale.token_masks(boxes, rec["padded_size"], rec["feat_size"], rec["image_size"])
    valid = rec["valid"].cpu().numpy()
    queries = choose_queries(masks["authors"], valid, boxes.cpu().numpy(), rec["padded_size"], num_queries)
    image = mapped["image"].permute(1, 2, 0).numpy()
    written = single_scale.render_attention(image, rec, masks, queries, metadata, prefix)
    if save_raw:
        np.savez_compressed(prefix + "_attention.npz", **single_scale.raw_attention(rec, masks, queries))
        written.append(prefix + "_attention.npz")
    summary = (f"tokens {rec['feat_size']}, {int(masks['authors'].sum())} fg tokens (authors) / "
               f"{int(masks['cell_overlap'].sum())} (cell_overlap), queries {queries}")
    return written, summary


def run_deformable(model, mapped: Dict, metadata, prefix: str, num_queries: int, save_raw: bool):
    """Capture, draw and (optionally) save one image of a deformable model; returns (written, summary)."""
    rec = deformable.capture_sampling(model, [mapped])
    boxes = rec["targets"][0]["boxes_xyxy"]
    masks = deformable.level_token_masks(boxes, rec["padded_size"], rec["spatial_shapes"], rec["image_size"])
    valid = rec["valid"].cpu().numpy()
    rule = rec["mask_rule"] or "authors"
    queries = deformable.choose_level_queries(masks[rule], valid, boxes.cpu().numpy(), rec, num_queries)
    image = mapped["image"].permute(1, 2, 0).numpy()
    written = deformable.render_sampling(image, rec, masks, queries, metadata, prefix)
    if save_raw:
        np.savez_compressed(prefix + "_sampling.npz", **deformable.raw_sampling(rec, masks, queries))
        written.append(prefix + "_sampling.npz")
    summary = (f"levels {rec['spatial_shapes']}, {int(masks['authors'].sum())} fg tokens (authors) / "
               f"{int(masks['cell_overlap'].sum())} (cell_overlap), queries {queries}")
    return written, summary


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        torch.set_grad_enabled(False)
        cfg = load_config(args.config_file, list(args.opts) + unknown)
        from detrex.data import DatasetCatalog, MetadataCatalog, ensure_thing_classes

        name = args.dataset or try_get_key(cfg, f"dataloader.{args.mapper}.dataset.names")
        if name is None:
            raise UserInputError("No dataset: pass --dataset NAME (a registered dataset)")
        name = name if isinstance(name, str) else list(name)[0]
        if name not in DatasetCatalog:
            raise UserInputError(f"Dataset {name!r} is not registered; registered: {sorted(DatasetCatalog)}")
        dicts = DatasetCatalog.get(name)
        mapper_cfg = try_get_key(cfg, f"dataloader.{args.mapper}.mapper")
        if mapper_cfg is None:
            raise UserInputError(f"The config has no dataloader.{args.mapper}.mapper")
        if args.mapper == "test":
            mapper_cfg.keep_annotations_in_test = True
        mapper = instantiate(mapper_cfg)
        seed = try_get_key(cfg, "train.seed", default=-1)
        if isinstance(seed, int) and seed >= 0:  # a random-init model is then the same on every run
            torch.manual_seed(seed)
        model = build_model(cfg, device=default_device(args.device))
        metadata = MetadataCatalog.get(name)
        ensure_thing_classes(metadata)  # a dataset whose loader does not set them: the json's names
        is_deformable = deformable.find_deformable_attention(model) is not None
        os.makedirs(args.output, exist_ok=True)
        for idx in args.index:
            if not 0 <= idx < len(dicts):
                raise UserInputError(f"--index {idx} is out of range: {name!r} has {len(dicts)} images")
            mapped = mapper(dicts[idx])
            if "instances" not in mapped:
                raise UserInputError(f"image {idx} of {name!r} has no annotations")
            prefix = os.path.join(args.output, f"{name}_{idx:05d}")
            run = run_deformable if is_deformable else run_single_scale
            written, summary = run(model, mapped, metadata, prefix, args.num_queries, args.save_raw)
            print(f"{name}[{idx}] ({dicts[idx]['file_name']}): {summary} -> {', '.join(written)}", flush=True)
    except USER_ERRORS + (UnsupportedModelError,) as e:
        print(f"visualize_attention.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
