"""Category names of a registered COCO dataset reach the demo, the visualizer and the evaluator's per-category
table even when the dataset was never loaded in the process (its metadata then has no ``thing_classes``)."""
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detrex.data import DatasetCatalog, MetadataCatalog, ensure_thing_classes, load_coco_json, register_coco_instances
from detrex.structures import Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")


def write_dataset(root, categories=({"id": 7, "name": "tree"},)):
    """Two 40x48 RGB images with one box each, categories as given (dataset ids, not 1..K)."""
    os.makedirs(root / "images", exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 40})
        cat = categories[i % len(categories)]["id"]
        anns.append({"id": i + 1, "image_id": i + 1, "bbox": [4, 5, 20, 18], "area": 360, "iscrowd": 0,
                     "category_id": cat})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": list(categories)}))
    return str(path), str(root / "images")


def register(tmp_path, categories=({"id": 7, "name": "tree"},)):
    name = f"names_{uuid.uuid4().hex[:8]}"
    json_file, image_root = write_dataset(tmp_path, categories)
    register_coco_instances(name, {}, json_file, image_root)
    return name, json_file, image_root


def test_ensure_thing_classes_reads_the_json_like_load_coco_json(tmp_path):
    cats = ({"id": 7, "name": "tree"}, {"id": 3, "name": "bush"})
    name, json_file, image_root = register(tmp_path, cats)
    meta = MetadataCatalog.get(name)
    assert meta.get("thing_classes") is None  # registered, not loaded
    assert ensure_thing_classes(meta) == ["bush", "tree"]  # sorted by category id
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # loading the dataset afterwards agrees (Metadata refuses a different value)
    dicts = DatasetCatalog.get(name)
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [1, 0]
    other = MetadataCatalog.get(name + "_direct")
    load_coco_json(json_file, image_root, name + "_direct")
    assert other.thing_classes == meta.thing_classes
    assert ensure_thing_classes(MetadataCatalog.get(f"no_json_{uuid.uuid4().hex[:6]}")) is None


def test_visualization_demo_labels_boxes_with_the_json_names(tmp_path, monkeypatch):
    sys.path.insert(0, REPO)
    from demo.predictor import VisualizationDemo, dataset_metadata, load_config
    from detrex.utils import visualizer

    name, _, _ = register(tmp_path)
    cfg = load_config(TINY, [f"dataloader.test.dataset.names={name}"])
    meta = dataset_metadata(cfg)
    assert meta.thing_classes == ["tree"]

    class FakePredictor:
        metadata = meta

        def __call__(self, image):
            inst = Instances(image.shape[:2], pred_boxes=Boxes(torch.tensor([[2.0, 3.0, 30.0, 20.0]])),
                             scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
            return {"instances": inst}

    texts = []
    real = visualizer.Visualizer.draw_text
    monkeypatch.setattr(visualizer.Visualizer, "draw_text",
                        lambda self, text, *a, **k: (texts.append(text), real(self, text, *a, **k))[1])
    VisualizationDemo(FakePredictor(), confidence_threshold=0.25).run_on_image(np.zeros((40, 48, 3), np.uint8))
    assert texts == ["tree 90%"]


def test_evaluator_per_category_table_uses_the_json_names(tmp_path):
    from detrex.evaluation import COCOEvaluator

    cats = ({"id": 7, "name": "tree"}, {"id": 3, "name": "bush"})
    name, _, _ = register(tmp_path, cats)
    assert MetadataCatalog.get(name).get("thing_classes") is None
    ev = COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "eval"))
    ev.reset()
    # image 1 holds a "tree" (contiguous 1), image 2 a "bush" (contiguous 0): detect both exactly
    for image_id, cls in ((1, 1), (2, 0)):
        inst = Instances((40, 48), pred_boxes=Boxes(torch.tensor([[4.0, 5.0, 24.0, 23.0]])),
                         scores=torch.tensor([0.9]), pred_classes=torch.tensor([cls]))
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    res = ev.evaluate()["bbox"]
    assert res["AP-tree"] == pytest.approx(100.0) and res["AP-bush"] == pytest.approx(100.0)


@pytest.mark.slow
def test_demo_cli_prints_the_json_names(tmp_path):
    """The issue's case: a COCO dataset registered at the top of a config, one category "tree"; the demo (which
    never loads the dataset) labels detections "tree", not "class 0"."""
    name, _, image_root = register(tmp_path)
    json_file = str(tmp_path / "ann.json")
    cfg = tmp_path / "trees.py"
    cfg.write_text(textwrap.dedent(f"""
        from detrex.data import register_coco_instances
        register_coco_instances("trees_val", {{}}, {json_file!r}, {image_root!r})
        import importlib.util
        _spec = importlib.util.spec_from_file_location("tiny_cfg", {TINY!r})
        from detrex.config import LazyConfig
        _base = LazyConfig.load({TINY!r})
        model, dataloader, train = _base.model, _base.dataloader, _base.train
        model.num_classes = 1
        model.criterion.num_classes = 1
        dataloader.test.dataset.names = "trees_val"
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "demo/demo.py", "--config-file", str(cfg), "--input",
                        os.path.join(image_root, "0.png"), "--output", str(tmp_path / "out"),
                        "--confidence-threshold", "0.0", "--opts", "train.seed=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[tree: " in r.stdout and "class 0" not in r.stdout, r.stdout
