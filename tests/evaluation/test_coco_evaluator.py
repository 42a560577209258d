"""COCOEvaluator, inference_on_dataset and print_csv_format on the shapes set and small custom jsons."""

import json
import logging
import math
import os
import sys

import pytest
import torch

from detrex.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from detrex.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators, inference_on_dataset, print_csv_format

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_helpers import GTModel, remap_json, run_eval, shapes_val_json  # noqa: E402

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture
def shapes_val(shapes_root, unique_name):
    """The default shapes val set registered from the session cache."""
    json_file, image_root = shapes_val_json(shapes_root)
    name = unique_name("shapes_val")
    register_coco_instances(name, {}, json_file, image_root)
    return name


def test_ground_truth_gives_ap_100(shapes_val, tmp_path):
    results, model = run_eval(shapes_val, output_dir=str(tmp_path))
    bbox = results["bbox"]
    for k in ("AP", "AP50", "AP75", "APs", "APm"):
        assert bbox[k] == pytest.approx(100.0), k
    assert math.isnan(bbox["APl"])  # no object is larger than 96^2 pixels in the default set
    assert [bbox["AP-" + c] for c in CLASSES] == [pytest.approx(100.0)] * 3
    assert len(model.by_id) == 100
    # the results json uses dataset category ids (1..3) and XYWH boxes
    res = json.load(open(tmp_path / "coco_instances_results.json"))
    gt = json.load(open(MetadataCatalog.get(shapes_val).json_file))
    assert len(res) == len(gt["annotations"])
    assert {r["category_id"] for r in res} == {1, 2, 3}
    gt_boxes = {}
    for a in gt["annotations"]:
        gt_boxes.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    for r in res:
        candidates = gt_boxes[(r["image_id"], r["category_id"])]
        assert any(r["bbox"] == pytest.approx(b, abs=1e-4) for b in candidates)


def test_swapped_class_lowers_ap(shapes_val):
    # circles (contiguous 0) predicted as squares (1) with a lower score than the true squares:
    # circle AP = 0; square AP stays 100 (false positives rank below every true square); triangle 100.
    results, _ = run_eval(shapes_val, swap={0: (1, 0.5)}, distributed=False)
    bbox = results["bbox"]
    assert bbox["AP-circle"] == pytest.approx(0.0)
    assert bbox["AP-square"] == pytest.approx(100.0)
    assert bbox["AP-triangle"] == pytest.approx(100.0)
    assert bbox["AP"] == pytest.approx(200.0 / 3, abs=1e-3)


def test_noncontiguous_ids_same_ap(shapes_val, tmp_path, unique_name):
    json_file = MetadataCatalog.get(shapes_val).json_file
    image_root = MetadataCatalog.get(shapes_val).image_root
    remapped = str(tmp_path / "remapped.json")
    remap_json(json_file, remapped, {1: 3, 2: 7, 3: 11})
    name = unique_name("noncontig")
    register_coco_instances(name, {}, remapped, image_root)
    a, _ = run_eval(shapes_val, swap={0: (1, 0.5), 2: (0, 0.3)}, distributed=False)
    b, _ = run_eval(name, output_dir=str(tmp_path / "out"), swap={0: (1, 0.5), 2: (0, 0.3)}, distributed=False)
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    assert a["bbox"]["AP"] == pytest.approx(100.0 / 3, abs=1e-3)  # only squares are right
    assert list(a["bbox"]) == list(b["bbox"])
    for k, v in a["bbox"].items():
        assert (math.isnan(v) and math.isnan(b["bbox"][k])) or v == b["bbox"][k], k
    res = json.load(open(tmp_path / "out" / "coco_instances_results.json"))
    assert {r["category_id"] for r in res} == {3, 7}  # triangles relabelled as circles; no "11" predictions


def test_empty_predictions_give_zero_with_warning(shapes_val, caplog):
    with caplog.at_level(logging.WARNING, logger="detrex"):
        results, _ = run_eval(shapes_val, empty=True, distributed=False)
    assert all(results["bbox"][k] == 0.0 for k in ("AP", "AP50", "AP75", "AP-circle"))
    assert "No predictions" in caplog.text


def test_images_without_annotations_and_dataset_without_json(tmp_path, unique_name):
    from detrex.structures import BoxMode
    from PIL import Image

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    dicts = []
    for i in range(4):
        Image.new("RGB", (40, 30)).save(img_dir / f"{i}.png")
        annos = (
            []
            if i % 2
            else [
                {
                    "bbox": [2.0, 3.0, 10.0 + i, 12.0],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": i % 3 // 2,
                    "iscrowd": 0,
                }
            ]
        )
        dicts.append(
            {"file_name": str(img_dir / f"{i}.png"), "height": 30, "width": 40, "image_id": i, "annotations": annos}
        )
    name = unique_name("nojson")
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    with pytest.raises(ValueError, match="output_dir"):
        COCOEvaluator(name)
    results, _ = run_eval(name, output_dir=str(tmp_path / "out"), distributed=False)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert os.path.isfile(tmp_path / "out" / f"{name}_coco_format.json")


def test_class_id_out_of_range_is_a_clear_error(shapes_val):
    from detrex.structures import Boxes, Instances

    ev = COCOEvaluator(shapes_val, distributed=False)
    inst = Instances(
        (10, 10),
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])),
        scores=torch.tensor([0.9]),
        pred_classes=torch.tensor([3]),
    )
    with pytest.raises(ValueError, match=rf"{shapes_val}.*class id 3.*num_classes=3"):
        ev.process([{"image_id": 1}], [{"instances": inst}])


def test_inference_on_dataset_modes_and_no_evaluator(shapes_val):
    from detrex.data import get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts(shapes_val, filter_empty=False)[:3]
    model = GTModel(dicts)
    model.train()
    loader = [[{"image_id": d["image_id"], "height": d["height"], "width": d["width"]}] for d in dicts]
    assert inference_on_dataset(model, loader, None) == {}
    assert model.seen_training == [False] * 3 and model.seen_grad == [False] * 3
    assert model.training  # restored

    class Counter(DatasetEvaluator):
        def reset(self):
            self.n = 0

        def process(self, inputs, outputs):
            self.n += len(outputs)

        def evaluate(self):
            return {"count": {"n": self.n}}

    class Other(Counter):
        def evaluate(self):
            return {"other": {"n": -1}}

    assert inference_on_dataset(model, loader, [Counter(), Other()]) == {"count": {"n": 3}, "other": {"n": -1}}
    both = DatasetEvaluators([Counter(), Counter()])
    both.reset()
    with pytest.raises(KeyError, match="same key"):
        both.evaluate()


def test_print_csv_format(caplog):
    with caplog.at_level(logging.INFO, logger="detrex"):
        print_csv_format({"bbox": {"AP": 50.0, "AP50": 75.123456, "AP-cat": 1.0}, "misc": 3})
    lines = [r.getMessage() for r in caplog.records]
    assert "copypaste: Task: bbox" in lines
    assert "copypaste: AP,AP50" in lines
    assert "copypaste: 50.0000,75.1235" in lines
    assert "copypaste: misc=3" in lines


def _dist_worker(rank, world_size, init_file, shapes_root, out_file):
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        from detrex.data import register_coco_instances as reg
        from eval_helpers import run_eval as _run, shapes_val_json as _paths

        json_file, image_root = _paths(shapes_root)
        reg("shapes_val_dist", {}, json_file, image_root)
        results, model = _run("shapes_val_dist", swap={0: (1, 0.5)})
        with open(f"{out_file}.rank{rank}", "w") as f:
            json.dump({"results": results, "num_images": len([1 for _ in model.seen_training])}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(shapes_val, shapes_root, tmp_path):
    import torch.multiprocessing as mp

    single, _ = run_eval(shapes_val, swap={0: (1, 0.5)}, distributed=False)
    out = str(tmp_path / "res")
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), shapes_root, out), nprocs=2, join=True)
    r0 = json.load(open(out + ".rank0"))
    r1 = json.load(open(out + ".rank1"))
    assert list(r0["results"]) == ["bbox"]
    for k, v in single["bbox"].items():
        got = r0["results"]["bbox"][k]
        assert (math.isnan(v) and math.isnan(got)) or v == pytest.approx(got, abs=1e-9), k
    assert r1["results"] == {}  # non-main ranks get nothing
    assert r0["num_images"] + r1["num_images"] == 100 and r0["num_images"] == 50


def test_max_dets_summary_matches_pycocotools(shapes_val):
    # last maxDets != 100 uses our own summary of eval["precision"]; with <= 3 objects per image it must
    # reproduce pycocotools' summarize() numbers exactly
    import detrex.evaluation as ev_mod

    swap = {0: (1, 0.5), 2: (0, 0.3)}
    ref, _ = run_eval(shapes_val, swap=swap, distributed=False)

    class Ev101(COCOEvaluator):
        def __init__(self, *a, **k):
            super().__init__(*a, max_dets_per_image=101, **k)

    old = ev_mod.COCOEvaluator
    ev_mod.COCOEvaluator = Ev101
    try:
        got, _ = run_eval(shapes_val, swap=swap, distributed=False)
    finally:
        ev_mod.COCOEvaluator = old
    for k, v in ref["bbox"].items():
        assert (math.isnan(v) and math.isnan(got["bbox"][k])) or got["bbox"][k] == pytest.approx(v, abs=1e-9), k


def test_fast_impl_failure_falls_back_to_pycocotools(shapes_val, monkeypatch, caplog):
    import types

    import detrex.evaluation.coco_evaluation as ce

    fake = types.ModuleType("faster_coco_eval")

    def broken(*a, **k):
        raise RuntimeError("boom")

    fake.COCO, fake.COCOeval_faster = broken, broken
    monkeypatch.setitem(sys.modules, "faster_coco_eval", fake)
    assert ce._fast_coco_available()
    with caplog.at_level(logging.WARNING, logger="detrex"):
        results, _ = run_eval(shapes_val, swap={0: (1, 0.5)}, distributed=False)
    assert "falling back to pycocotools" in caplog.text
    assert results["bbox"]["AP"] == pytest.approx(200.0 / 3, abs=1e-3)


def test_unknown_image_id_is_a_clear_error(shapes_val):
    ev = COCOEvaluator(shapes_val, distributed=False)
    from detrex.structures import Boxes, Instances

    inst = Instances(
        (10, 10),
        pred_boxes=Boxes(torch.zeros(0, 4)),
        scores=torch.zeros(0),
        pred_classes=torch.zeros(0, dtype=torch.int64),
    )
    ev.process([{"image_id": 12345}], [{"instances": inst}])
    with pytest.raises(ValueError, match=r"image id\(s\) are not in.*12345"):
        ev.evaluate()
