"""detrex.utils.visualizer: boxes/labels in class colours, thresholds, masks, heatmaps, panels."""
import types

import numpy as np
import pytest
import torch
from PIL import Image

from detrex.structures import Boxes, BoxMode, Instances
from detrex.utils.visualizer import PALETTE, Visualizer, class_color, heatmap_to_rgb, make_panel, save_image


def _gray(h=60, w=80):
    return np.full((h, w, 3), 128, np.uint8)


def _preds(boxes, scores, classes, size=(60, 80)):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    return inst


def test_palette_is_distinct_and_metadata_colours_win():
    assert len(set(PALETTE)) == len(PALETTE) >= 10
    meta = types.SimpleNamespace(thing_classes=["a", "b"], thing_colors=[(1, 2, 3), (4, 5, 6)])
    assert class_color(1, meta) == (4, 5, 6)
    assert class_color(3, meta) == PALETTE[3]  # beyond the metadata: palette
    assert class_color(25) == PALETTE[25 % len(PALETTE)]


def test_predictions_drawn_in_class_colour_and_thresholded():
    meta = types.SimpleNamespace(thing_classes=["cat", "dog"], thing_colors=[(255, 0, 0), (0, 0, 255)])
    vis = Visualizer(_gray(), meta, line_width=2)
    out = vis.draw_instance_predictions(_preds([[10, 30, 40, 55], [50, 30, 75, 55]], [0.9, 0.2], [0, 1]),
                                        score_threshold=0.5).get_image()
    assert out.shape == (60, 80, 3)
    assert tuple(out[45, 10]) == (255, 0, 0)  # left edge of the kept box
    assert not (np.abs(out.astype(int) - (0, 0, 255)).sum(-1) < 10).any()  # the 0.2 box is not drawn
    assert tuple(out[45, 25]) == (128, 128, 128)  # inside the box untouched


def test_scale_and_dataset_dict_boxes():
    vis = Visualizer(_gray(), None, scale=2.0, line_width=1)
    d = {"annotations": [{"bbox": [10, 20, 30, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2}]}
    out = vis.draw_dataset_dict(d).get_image()
    assert out.shape == (120, 160, 3)
    assert tuple(out[50, 20]) == PALETTE[2]  # x=10*2, y in [40, 60]: the scaled left edge
    assert tuple(out[50, 21]) == (128, 128, 128)


def test_mask_and_heatmap_overlays():
    vis = Visualizer(_gray(40, 40), line_width=1)
    mask = np.zeros((2, 2), bool)
    mask[1, 1] = True
    out = vis.overlay_mask(mask, color=(255, 0, 0), alpha=0.5, outline=False).get_output().get_image()
    assert tuple(out[30, 30]) == (192, 64, 64) and tuple(out[5, 5]) == (128, 128, 128)
    heat = np.array([[0.0, 1.0], [0.25, 0.5]])
    out = Visualizer(_gray(40, 40)).overlay_heatmap(heat, alpha=1.0, cmap="viridis").get_output().get_image()
    assert tuple(out[5, 30]) == tuple(heatmap_to_rgb(np.array([[1.0]]), "viridis")[0, 0])  # the max cell
    assert tuple(out[5, 5]) == tuple(heatmap_to_rgb(np.array([[0.0, 1.0]]), "viridis")[0, 0])


def test_panel_layout_and_save(tmp_path):
    a, b = np.zeros((30, 40, 3), np.uint8), np.full((20, 50, 3), 255, np.uint8)
    p = make_panel([a, b, a], ["x", "y", "z"], ncols=2, pad=5)
    assert p.shape[1] == 2 * 50 + 3 * 5 and p.shape[0] > 2 * 30 + 3 * 5
    with pytest.raises(ValueError, match="titles"):
        make_panel([a], ["x", "y"])
    save_image(p, str(tmp_path / "sub" / "p.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "p.png")), p)
    with pytest.raises(ValueError, match="RGB"):
        Visualizer(np.zeros((4, 4, 5), np.uint8))
