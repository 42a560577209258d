"""Throughput of the training data pipeline (images/s) with 0, 1, 2, ... DataLoader workers.

The pipeline is the COCO training one of ``configs/common/data/coco_detr.py``: ``build_detection_train_loader``
(serialized dataset, infinite ``TrainingSampler``, aspect-ratio grouping) over ``DetrDatasetMapper`` with
DETR's augmentation (flip; resize the short side to 480..800, max 1333; or the resize-crop-resize branch),
reading JPEGs from disk. No COCO download is needed: ``--images`` synthetic 640x480 JPEGs (smooth random
content, ~COCO file sizes) and a COCO-format json with 7 boxes per image are written to a temporary folder.

Timed: the wall time of ``--batches`` batches after ``--warmup-batches`` batches (worker start-up, first reads
and page cache). images/s = images delivered / time. Compare with the images/s of one training process in
``bench/train_step.py`` (the consumer).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def write_synthetic_coco(root: str, num_images: int, height: int = 480, width: int = 640, boxes_per_image: int = 7,
                         seed: int = 0) -> str:
    """Write ``num_images`` JPEGs and ``annotations.json`` (COCO format, 80 categories) under ``root``; return the
    json path. The pictures are upsampled low-frequency noise plus mild pixel noise (JPEG size ~ COCO's)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(height, width, 3))
        name = f"{i:06d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(os.path.join(root, name), quality=90)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
            x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                "bbox": [float(x0), float(y0), float(bw), float(bh)], "area": float(bw * bh), "iscrowd": 0,
            })
    categories = [{"id": k, "name": f"class_{k}", "supercategory": "none"} for k in range(1, 81)]
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def build_loader(dataset_dicts, batch_size: int, num_workers: int, seed: int = 0):
    """The training loader of configs/common/data/coco_detr.py over ``dataset_dicts``."""
    from detrex.config import get_config, instantiate
    from detrex.data import build_detection_train_loader

    mapper = instantiate(get_config("common/data/coco_detr.py").dataloader.train.mapper)
    return build_detection_train_loader(
        dataset_dicts, mapper=mapper, total_batch_size=batch_size, num_workers=num_workers, seed=seed
    )


def measure(dataset_dicts, batch_size, num_workers, warmup_batches, batches):
    """(images/s, mean pixels per image) over ``batches`` batches after ``warmup_batches``."""
    it = iter(build_loader(dataset_dicts, batch_size, num_workers))
    for _ in range(warmup_batches):
        next(it)
    n_img = pixels = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        n_img += len(batch)
        pixels += sum(x["image"].shape[1] * x["image"].shape[2] for x in batch)
    elapsed = time.perf_counter() - t0
    del it  # shuts the workers down
    return n_img / elapsed, pixels / max(n_img, 1)


def instances_pickle_error():
    """None if a mapped sample (an ``Instances`` inside) survives pickling, as DataLoader workers need; else why."""
    import pickle

    import torch

    from detrex.structures import Boxes, Instances

    sample = Instances((4, 4), gt_boxes=Boxes(torch.zeros(1, 4)), gt_classes=torch.zeros(1, dtype=torch.int64))
    try:
        pickle.loads(pickle.dumps(sample))
    except Exception as e:  # RecursionError, AttributeError, ...
        return (f"detrex.structures.Instances does not survive pickle.loads(pickle.dumps(...)) ({type(e).__name__}), "
                "so DataLoader workers cannot hand samples to the main process")
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to measure (default 0,1,2)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch (default 2, one GPU's share)")
    parser.add_argument("--images", type=int, default=64, help="synthetic JPEGs to write (default 64)")
    parser.add_argument("--batches", type=int, default=64, help="timed batches per row (default 64)")
    parser.add_argument("--warmup-batches", type=int, default=4, help="untimed batches first (default 4)")
    parser.add_argument("--smoke", action="store_true", help="8 images, workers 0, 2 timed batches")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.images, args.batches, args.warmup_batches = "0", 8, 2, 1
    workers = [int(w) for w in args.workers.split(",")]

    from detrex.data import DatasetCatalog, register_coco_instances

    print(f"# bench/data.py on {C.machine_info('cpu')}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.images} synthetic 640x480 JPEGs, batch {args.batch_size}, {args.batches} timed batches after "
          f"{args.warmup_batches}; augmentation of configs/common/data/coco_detr.py")
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="detrex_bench_data_") as root:
        json_file = write_synthetic_coco(root, args.images)
        size = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root) if f.endswith(".jpg"))
        name = f"bench_synthetic_coco_{os.getpid()}"
        register_coco_instances(name, {}, json_file, root)
        try:
            dicts = DatasetCatalog.get(name)
        finally:
            DatasetCatalog.remove(name)
        print(f"# mean JPEG size {size / args.images / 1024:.0f} KiB")
        pickle_error = instances_pickle_error()
        for nw in workers:
            if nw > 0 and pickle_error:
                rows.append([nw, args.batch_size, "FAILED", "-", "-"])
                notes.append(f"workers {nw}: {pickle_error}")
                continue
            ips, pix = measure(dicts, args.batch_size, nw, args.warmup_batches, args.batches)
            rows.append([nw, args.batch_size, C.fmt(ips, 1), C.fmt(1e3 / ips, 1), f"{pix / 1e6:.2f}"])
            print(f"  workers {nw}: {ips:.1f} images/s", flush=True)
    print()
    print(C.format_table(["workers", "batch", "images/s", "ms/image", "mean Mpixel out"], rows))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
