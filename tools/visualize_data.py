#!/usr/bin/env python
"""Draw a dataset's ground truth, raw or after the config's mapper, to check a (custom) dataset.

    python tools/visualize_data.py --config-file CFG --source dataloader --split train --output-dir out/ \
        [--num-images 8] [--dataset NAME] [--opts key=value ...]

* ``--source annotation``: the dataset dicts as registered (``bbox`` in its ``bbox_mode``, original image).
* ``--source dataloader``: the image and ``instances`` after ``dataloader.<split>.mapper``: the train mapper
  (random flip/resize/crop, so each run differs) or the test mapper (resize only; annotations kept for drawing).
  Boxes are drawn on the augmented image, i.e. exactly what the model is trained/evaluated on.

Class names come from the dataset's metadata (``thing_classes``). Each image is written as
``<source>_<split>_<index>_<file stem>.png``; the number of boxes per image is printed.
"""
import argparse
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from demo.predictor import USER_ERRORS, UserInputError, load_config  # noqa: E402
from detrex.config import instantiate, try_get_key  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--source", choices=("annotation", "dataloader"), default="dataloader")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which dataloader entry to use")
    p.add_argument("--dataset", default=None, help="dataset name (default: the config's dataloader.<split>)")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides")
    return p


def dataset_name(cfg, split: str, override=None) -> str:
    name = override or try_get_key(cfg, f"dataloader.{split}.dataset.names")
    if name is None:
        raise UserInputError(f"No dataset: the config has no dataloader.{split}.dataset.names; pass --dataset")
    return name if isinstance(name, str) else list(name)[0]


def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        cfg = load_config(args.config_file, list(args.opts) + unknown)
        from detrex.data import DatasetCatalog, MetadataCatalog, ensure_thing_classes
        from detrex.data.detection_utils import read_image
        from detrex.utils.visualizer import Visualizer, auto_scale

        name = dataset_name(cfg, args.split, args.dataset)
        if name not in DatasetCatalog:
            raise UserInputError(f"Dataset {name!r} is not registered; registered: {sorted(DatasetCatalog)}")
        dicts = DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
        ensure_thing_classes(metadata)  # a dataset whose loader does not set them: the json's names
        mapper = None
        if args.source == "dataloader":
            mapper_cfg = try_get_key(cfg, f"dataloader.{args.split}.mapper")
            if mapper_cfg is None:
                raise UserInputError(f"The config has no dataloader.{args.split}.mapper")
            if args.split == "test":
                mapper_cfg.keep_annotations_in_test = True
            mapper = instantiate(mapper_cfg)
        os.makedirs(args.output_dir, exist_ok=True)
        for i, dic in enumerate(dicts[: args.num_images]):
            if mapper is not None:
                d = mapper(dic)
                img = d["image"].permute(1, 2, 0).numpy()
                n = len(d["instances"]) if "instances" in d else 0
            else:
                d = dic
                img = read_image(dic["file_name"], format="RGB")
                n = len(dic.get("annotations", []))
            vis = Visualizer(img, metadata, scale=auto_scale(*img.shape[:2]))
            out = vis.draw_dataset_dict(d)
            stem = os.path.splitext(os.path.basename(dic["file_name"]))[0]
            path = os.path.join(args.output_dir, f"{args.source}_{args.split}_{i:04d}_{stem}.png")
            out.save(path)
            print(f"{dic['file_name']}: {n} boxes, image {img.shape[1]}x{img.shape[0]} -> {path}", flush=True)
    except USER_ERRORS as e:
        print(f"visualize_data.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
