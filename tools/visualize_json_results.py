#!/usr/bin/env python
"""Draw COCO-format detection results (``coco_instances_results.json``) next to the ground truth.

    python tools/visualize_json_results.py --input output/coco_instances_results.json --output out/ \
        --dataset shapes_val [--conf-threshold 0.5] [--num-images N]

Each image of the dataset that has results is written as ``<file stem>.png``: predictions (boxes with class
name and score, score >= threshold) on the left, ground truth on the right. Results use the dataset's
category ids (as the COCO evaluator writes them); they are mapped back through the metadata's
``thing_dataset_id_to_contiguous_id``. Boxes are COCO XYWH in original-image pixels.
"""
import argparse
import json
import os
import sys
from collections import defaultdict

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from demo.predictor import USER_ERRORS, UserInputError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="coco_instances_results.json")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--dataset", default="coco_2017_val", help="registered dataset the results are for")
    p.add_argument("--conf-threshold", type=float, default=0.5)
    p.add_argument("--num-images", type=int, default=None, help="at most this many images")
    return p


def load_results(path: str):
    if not os.path.isfile(path):
        raise UserInputError(f"Results file not found: {path!r} (the COCO evaluator writes "
                             "<output_dir>/coco_instances_results.json)")
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path!r} is not valid JSON: {e}") from e
    if not isinstance(results, list) or (results and not {"image_id", "bbox", "category_id", "score"} <= set(results[0])):
        raise UserInputError(f"{path!r} is not a COCO results list (dicts with image_id, bbox, category_id, score)")
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    return by_image


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        import numpy as np
        import torch

        from detrex.data import DatasetCatalog, MetadataCatalog, ensure_thing_classes
        from detrex.data.detection_utils import read_image
        from detrex.structures import Boxes, BoxMode, Instances
        from detrex.utils.visualizer import Visualizer, auto_scale, make_panel, save_image

        by_image = load_results(args.input)
        if args.dataset not in DatasetCatalog:
            raise UserInputError(f"Dataset {args.dataset!r} is not registered; registered: {sorted(DatasetCatalog)}")
        dicts = DatasetCatalog.get(args.dataset)
        metadata = MetadataCatalog.get(args.dataset)
        ensure_thing_classes(metadata)  # a dataset whose loader does not set them: the json's names
        id_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)

        def to_contiguous(cid: int) -> int:
            if id_map is None:
                return int(cid)
            if cid not in id_map:
                raise UserInputError(f"category_id {cid} in the results is not a category of {args.dataset!r}")
            return id_map[cid]

        os.makedirs(args.output, exist_ok=True)
        done = 0
        for dic in dicts:
            if args.num_images is not None and done >= args.num_images:
                break
            preds = [r for r in by_image.get(dic["image_id"], []) if r["score"] >= args.conf_threshold]
            if dic["image_id"] not in by_image:
                continue
            img = read_image(dic["file_name"], format="RGB")
            inst = Instances(img.shape[:2])
            boxes = np.asarray([p["bbox"] for p in preds], dtype=np.float32).reshape(-1, 4)
            inst.pred_boxes = Boxes(torch.as_tensor(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)))
            inst.scores = torch.tensor([p["score"] for p in preds], dtype=torch.float32)
            inst.pred_classes = torch.tensor([to_contiguous(p["category_id"]) for p in preds], dtype=torch.int64)
            scale = auto_scale(*img.shape[:2])
            pred_img = Visualizer(img, metadata, scale=scale).draw_instance_predictions(inst).get_image()
            gt_img = Visualizer(img, metadata, scale=scale).draw_dataset_dict(dic).get_image()
            n_gt = len(dic.get("annotations", []))
            panel = make_panel([pred_img, gt_img], [f"predictions (score >= {args.conf_threshold}): {len(preds)}",
                                                    f"ground truth: {n_gt}"])
            path = os.path.join(args.output, os.path.splitext(os.path.basename(dic["file_name"]))[0] + ".png")
            save_image(panel, path)
            done += 1
            print(f"{dic['file_name']}: {len(preds)} predictions, {n_gt} ground-truth boxes -> {path}", flush=True)
        if done == 0:
            raise UserInputError(f"none of the result image ids matches an image of {args.dataset!r}")
    except USER_ERRORS as e:
        print(f"visualize_json_results.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
