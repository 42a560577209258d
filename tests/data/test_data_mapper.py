"""DetrDatasetMapper and detection_utils: outputs for a fixed seed, crop boxes, EXIF, bad images."""

import numpy as np
import pytest
import torch
from PIL import Image

from detrex.data import DetrDatasetMapper, MapDataset, DatasetFromList
from detrex.data import detection_utils as utils
from detrex.data import transforms as T
from detrex.structures import BoxMode

H, W = 60, 80


@pytest.fixture
def record(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "img.png")
    Image.fromarray(rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)).save(path)
    return {
        "file_name": path,
        "height": H,
        "width": W,
        "image_id": 7,
        "annotations": [
            {"bbox": [10.0, 5.0, 20.0, 30.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
            {"bbox": [50.5, 40.25, 25.0, 15.5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
            {"bbox": [0.0, 0.0, 10.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
        ],
    }


def _plain_mapper():
    return DetrDatasetMapper(
        augmentation=[T.RandomFlip(), T.ResizeShortestEdge((30, 45, 90), max_size=100, sample_style="choice")],
        augmentation_with_crop=[
            T.RandomFlip(),
            T.ResizeShortestEdge((40, 50), sample_style="choice"),
            T.RandomCrop("absolute_range", (20, 35)),
            T.ResizeShortestEdge((30, 45), max_size=100, sample_style="choice"),
        ],
        is_train=True,
    )


def test_mapper_fixed_seed_matches_hand_computation(record):
    mapper = _plain_mapper()
    flips_seen = set()
    for seed in range(30):
        # reference draws in detrex's order: branch, flip, size (plain branch only is checked by hand)
        np.random.seed(seed)
        branch = np.random.rand()
        if not branch > 0.5:
            continue
        flip = np.random.uniform(0, 1) < 0.5
        size = int(np.random.choice((30, 45, 90)))
        np.random.seed(seed)
        out = mapper(record)
        # sizes: short side (H=60) -> size, long side capped at 100
        scale = size / 60.0
        newh, neww = size, W * scale
        if neww > 100:
            newh, neww = newh * 100 / neww, 100.0
        newh, neww = int(newh + 0.5), int(neww + 0.5)
        assert out["image"].dtype == torch.uint8
        assert tuple(out["image"].shape) == (3, newh, neww)
        inst = out["instances"]
        assert inst.image_size == (newh, neww)
        assert (out["height"], out["width"]) == (H, W)  # original size
        assert out["image_id"] == 7 and out["file_name"] == record["file_name"]
        assert "annotations" not in out
        # boxes: XYWH -> XYXY, flipped (x -> W - x), scaled, clipped; the crowd box is dropped
        expected = []
        for x, y, w, h in ([10.0, 5.0, 20.0, 30.0], [50.5, 40.25, 25.0, 15.5]):
            x0, y0, x1, y1 = x, y, x + w, y + h
            if flip:
                x0, x1 = W - x1, W - x0
            sx, sy = neww / W, newh / H
            expected.append(
                [
                    min(max(x0 * sx, 0), neww),
                    min(max(y0 * sy, 0), newh),
                    min(max(x1 * sx, 0), neww),
                    min(max(y1 * sy, 0), newh),
                ]
            )
        np.testing.assert_allclose(
            inst.gt_boxes.tensor.numpy(), np.array(expected, dtype=np.float32), rtol=1e-6, atol=1e-4
        )
        assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [2, 0]
        flips_seen.add(bool(flip))
    assert flips_seen == {True, False}  # both the flipped and the unflipped case were checked


def test_mapper_crop_branch_boxes_inside_image(record):
    mapper = _plain_mapper()
    n_crop = 0
    for seed in range(40):
        np.random.seed(seed)
        is_crop = not np.random.rand() > 0.5
        np.random.seed(seed)
        out = mapper(record)
        h, w = out["image"].shape[1:]
        inst = out["instances"]
        assert inst.image_size == (h, w)
        b = inst.gt_boxes.tensor
        assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 1] >= 0)
        assert torch.all(b[:, 2] <= w) and torch.all(b[:, 3] <= h)
        assert torch.all(b[:, 2] - b[:, 0] > 1e-5) and torch.all(b[:, 3] - b[:, 1] > 1e-5)
        n_crop += is_crop
    assert n_crop > 5


def test_mapper_is_deterministic_under_np_seed(record):
    mapper = _plain_mapper()
    np.random.seed(123)
    a = [mapper(record) for _ in range(4)]
    np.random.seed(123)
    b = [mapper(record) for _ in range(4)]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)


def test_mapper_test_mode_drops_or_keeps_annotations(record):
    aug = [T.ResizeShortestEdge(30, max_size=1000)]
    out = DetrDatasetMapper(aug, None, is_train=False)(record)
    assert tuple(out["image"].shape) == (3, 30, 40)
    assert "annotations" not in out and "instances" not in out
    assert (out["height"], out["width"]) == (H, W)
    assert len(record["annotations"]) == 3  # the input dict is not modified
    kept = DetrDatasetMapper(aug, None, is_train=False, keep_annotations_in_test=True)(record)
    np.testing.assert_allclose(kept["instances"].gt_boxes.tensor[0].numpy(), [5.0, 2.5, 15.0, 17.5])


def test_read_image_applies_exif_orientation(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :5] = 255  # white stripe on the left
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rot.jpg")
    im.save(path, exif=exif, quality=100)
    out = utils.read_image(path, format="RGB")
    assert out.shape == (30, 10, 3) and out.dtype == np.uint8
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # left stripe is now at the top
    bgr = utils.read_image(path, format="BGR")
    np.testing.assert_array_equal(bgr, out[:, :, ::-1])


def test_check_image_size_mismatch(record):
    img = np.zeros((H + 1, W, 3), dtype=np.uint8)
    with pytest.raises(utils.SizeMismatchError, match="img.png"):
        utils.check_image_size(record, img)


def test_bad_image_raises_or_is_skipped(tmp_path, record, caplog):
    bad = dict(record, file_name=str(tmp_path / "corrupt.png"))
    with open(bad["file_name"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really a png")
    missing = dict(record, file_name=str(tmp_path / "missing.jpg"))
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(30)], None, is_train=True)
    with pytest.raises(utils.BadImageError, match="corrupt.png"):
        mapper(bad)
    with pytest.raises(utils.BadImageError, match="missing.jpg"):
        mapper(missing)

    skipping = DetrDatasetMapper([T.ResizeShortestEdge(30)], None, is_train=True, on_bad_image="skip")
    assert skipping(bad) is None and skipping.num_skipped == 1
    # the skip travels with the next sample the mapper returns (for the training loader to log and count)
    (name, reason), = skipping(record)["bad_images_skipped"]
    assert name == bad["file_name"] and "corrupt.png" in reason
    assert "bad_images_skipped" not in skipping(record)
    # MapDataset retries another index when the mapper returns None
    ds = MapDataset(DatasetFromList([bad, record, missing]), skipping)
    for idx, name in ((0, bad["file_name"]), (2, missing["file_name"])):
        out = ds[idx]
        assert out["file_name"] == record["file_name"] and [r[0] for r in out["bad_images_skipped"]] == [name]
    assert skipping.num_skipped == 3
    # an image whose size differs from the dict's is skipped the same way
    assert skipping(dict(record, width=record["width"] + 1)) is None and skipping.num_skipped == 4
    with pytest.raises(RuntimeError, match="every item"):
        MapDataset(DatasetFromList([bad]), skipping)[0]


def test_filter_empty_instances_threshold():
    from detrex.structures import Boxes, Instances

    inst = Instances(
        (10, 10),
        gt_boxes=Boxes(torch.tensor([[0, 0, 5, 5], [3, 3, 3, 8], [1, 1, 1.00002, 2]])),
        gt_classes=torch.tensor([0, 1, 2]),
    )
    assert utils.filter_empty_instances(inst).gt_classes.tolist() == [0, 2]


def test_transform_instance_annotations_clips():
    anno = {"bbox": [-5.0, 2.0, 20.0, 50.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    out = utils.transform_instance_annotations(anno, T.TransformList([T.NoOpTransform()]), (30, 12))
    np.testing.assert_allclose(out["bbox"], [0.0, 2.0, 12.0, 30.0])
    assert out["bbox_mode"] == BoxMode.XYXY_ABS
