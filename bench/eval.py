"""COCO box evaluation time: pycocotools vs faster-coco-eval, and detrex's ``COCOEvaluator`` end to end.

The data are synthetic and COCO val2017-sized by default: 5000 images (640x480 .. 640x427 etc.), ~7.3
ground-truth boxes per image (~36.5k, sizes spanning COCO's small/medium/large), 80 categories with COCO's
non-contiguous ids, and 100 detections per image (500k): a third are jittered ground-truth boxes (so that AP is
non-trivial), the rest random boxes; scores uniform. ``--images`` scales it down.

Rows (each timed once: these runs take seconds to minutes, and the two libraries see identical inputs):

* ``pycocotools`` / ``faster-coco-eval``: ``loadRes(results)`` + ``evaluate()`` + ``accumulate()`` +
  ``summarize()`` of each library's ``COCOeval`` on the in-memory ground truth (the COCO object is built
  before the clock starts).
* ``COCOEvaluator``: ``process()`` of 5000 per-image ``Instances`` (top-100 each) + ``evaluate()``, with the
  backend it picks (faster-coco-eval when installed and ``use_fast_impl=True``).

The AP column shows that the backends agree.
"""

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids


def synthetic_coco(num_images: int, dets_per_image: int = 100, seed: int = 0):
    """(ground-truth dict in COCO format, list of result dicts with XYWH boxes and dataset category ids)."""
    rng = np.random.default_rng(seed)
    sizes = [(480, 640), (427, 640), (640, 480), (640, 427), (375, 500)]
    images, anns, results = [], [], []
    num_gt = rng.poisson(7.3, size=num_images)
    for i in range(num_images):
        h, w = sizes[i % len(sizes)]
        img_id = i + 1
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "height": h, "width": w})
        n = int(num_gt[i])
        # log-uniform box sides: areas from ~8^2 to ~400^2 px (COCO small/medium/large all present)
        bw = np.exp(rng.uniform(np.log(8), np.log(0.9 * w), n))
        bh = np.clip(bw * np.exp(rng.normal(0, 0.5, n)), 4, 0.95 * h)
        x0, y0 = rng.uniform(0, 1, n) * (w - bw), rng.uniform(0, 1, n) * (h - bh)
        cats = rng.choice(COCO_CATEGORY_IDS, n)
        for k in range(n):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(cats[k]),
                         "bbox": [float(x0[k]), float(y0[k]), float(bw[k]), float(bh[k])],
                         "area": float(bw[k] * bh[k]), "iscrowd": 0})
        # detections: jittered copies of the GT boxes (and their class) + random boxes
        n_true = min(n * 4, dets_per_image // 3) if n else 0
        src = rng.integers(0, max(n, 1), n_true)
        jit = rng.normal(0, 0.1, (n_true, 4))
        tx = x0[src] + jit[:, 0] * bw[src] if n else np.zeros(0)
        ty = y0[src] + jit[:, 1] * bh[src] if n else np.zeros(0)
        tw = bw[src] * np.exp(jit[:, 2]) if n else np.zeros(0)
        th = bh[src] * np.exp(jit[:, 3]) if n else np.zeros(0)
        tc = cats[src] if n else np.zeros(0, dtype=int)
        n_rand = dets_per_image - n_true
        rw = np.exp(rng.uniform(np.log(8), np.log(0.9 * w), n_rand))
        rh = np.clip(rw * np.exp(rng.normal(0, 0.5, n_rand)), 4, 0.95 * h)
        rx, ry = rng.uniform(0, 1, n_rand) * (w - rw), rng.uniform(0, 1, n_rand) * (h - rh)
        rc = rng.choice(COCO_CATEGORY_IDS, n_rand)
        bx = np.concatenate([np.stack([tx, ty, tw, th], 1), np.stack([rx, ry, rw, rh], 1)])
        cl = np.concatenate([tc, rc])
        sc = rng.uniform(0, 1, dets_per_image)
        order = np.argsort(-sc)
        for k in order:
            results.append({"image_id": img_id, "category_id": int(cl[k]), "bbox": [float(v) for v in bx[k]],
                            "score": float(sc[k])})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "none"} for c in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": anns, "categories": categories}, results


def run_pycocotools(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        dets = copy.deepcopy(results)
        t0 = time.perf_counter()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return time.perf_counter() - t0, float(ev.stats[0])


def run_faster(gt, results):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        dets = copy.deepcopy(results)
        t0 = time.perf_counter()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return time.perf_counter() - t0, float(ev.stats[0])


def run_evaluator(gt, results, use_fast_impl: bool):
    """detrex COCOEvaluator: process() per image, then evaluate(). Returns (process s, evaluate s, AP, backend)."""
    import torch

    from detrex.data import DatasetCatalog, MetadataCatalog, register_coco_instances
    from detrex.evaluation import COCOEvaluator
    from detrex.structures import Boxes, Instances

    with tempfile.TemporaryDirectory(prefix="detrex_bench_eval_") as root:
        json_file = os.path.join(root, "gt.json")
        with open(json_file, "w") as f:
            json.dump(gt, f)
        name = f"bench_eval_{os.getpid()}_{int(use_fast_impl)}"
        register_coco_instances(name, {}, json_file, root)
        try:
            DatasetCatalog.get(name)  # loads the json and fills the id map, as a training run does
            contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator = COCOEvaluator(name, distributed=False, output_dir=None, use_fast_impl=use_fast_impl)
            backend = "faster-coco-eval" if evaluator._use_fast_impl else "pycocotools"
            per_image = {}
            for r in results:
                per_image.setdefault(r["image_id"], []).append(r)
            pairs = []
            for img in gt["images"]:
                dets = per_image.get(img["id"], [])
                inst = Instances((img["height"], img["width"]))
                xywh = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).reshape(-1, 4)
                inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
                inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
                inst.pred_classes = torch.tensor([contiguous[d["category_id"]] for d in dets], dtype=torch.int64)
                pairs.append(([{"image_id": img["id"]}], [{"instances": inst}]))
            evaluator.reset()
            t0 = time.perf_counter()
            for inputs, outputs in pairs:
                evaluator.process(inputs, outputs)
            t1 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                res = evaluator.evaluate()
            t2 = time.perf_counter()
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    return t1 - t0, t2 - t1, res["bbox"]["AP"] / 100.0, backend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images in the synthetic set (default 5000)")
    parser.add_argument("--dets", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--evaluator", default="fast", choices=["none", "fast", "both"],
                        help="COCOEvaluator rows: none, faster-coco-eval backend only (default), or both backends")
    parser.add_argument("--smoke", action="store_true", help="50 images, 20 detections each")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.dets = 50, 20

    try:
        import faster_coco_eval

        fast_version = faster_coco_eval.__version__
    except ImportError:
        fast_version = None
    from importlib.metadata import PackageNotFoundError, version

    try:
        coco_version = version("pycocotools")
    except PackageNotFoundError:
        coco_version = "?"
    print(f"# bench/eval.py on {C.machine_info('cpu')}")
    print(f"# {' '.join(sys.argv)}")
    t0 = time.perf_counter()
    gt, results = synthetic_coco(args.images, args.dets)
    print(f"# {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(results)} detections "
          f"(generated in {time.perf_counter() - t0:.1f} s); pycocotools {coco_version}, "
          f"faster-coco-eval {fast_version or 'not installed'}")

    rows = []
    sec, ap = run_pycocotools(gt, results)
    ref = sec
    rows.append(["pycocotools COCOeval", C.fmt(sec, 2), "-", C.fmt(sec, 2), "1.00x", f"{ap:.4f}"])
    print(f"  pycocotools: {sec:.2f} s", flush=True)
    if fast_version:
        sec, ap = run_faster(gt, results)
        rows.append(["faster-coco-eval COCOeval_faster", C.fmt(sec, 2), "-", C.fmt(sec, 2), f"{ref / sec:.2f}x",
                     f"{ap:.4f}"])
        print(f"  faster-coco-eval: {sec:.2f} s", flush=True)
    modes = {"none": [], "fast": [True], "both": [True, False]}[args.evaluator]
    for fast in modes:
        if fast and not fast_version:
            continue
        t_proc, t_eval, ap, backend = run_evaluator(gt, results, fast)
        rows.append([f"detrex COCOEvaluator ({backend})", C.fmt(t_proc, 2), C.fmt(t_eval, 2),
                     C.fmt(t_proc + t_eval, 2), f"{ref / (t_proc + t_eval):.2f}x", f"{ap:.4f}"])
        print(f"  COCOEvaluator ({backend}): process {t_proc:.2f} s + evaluate {t_eval:.2f} s", flush=True)
    print()
    print(C.format_table(["evaluation", "process s", "evaluate s", "total s", "speedup vs pycocotools", "AP"], rows))
    if not fast_version:
        print("note: faster-coco-eval is not installed (pip install faster-coco-eval): its rows are skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
