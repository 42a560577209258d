"""Transforms and augmentations: detectron2's sizes, rounding, RNG draws, PIL bilinear resize, box mapping."""

import numpy as np
import pytest
from PIL import Image

from detrex.data import transforms as T


@pytest.mark.parametrize(
    "oldh, oldw, size, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1067)),  # 640 * 800/480 = 1066.67 -> 1067
        (640, 480, 800, 1333, (1067, 800)),
        (100, 1000, 800, 1333, (133, 1333)),  # long side capped: 8000 -> 1333, short 133.3 -> 133
        (2, 5, 1, 10**9, (1, 3)),  # 2.5 rounds up (int(x + 0.5)), unlike round(2.5) == 2
        (500, 500, 128, 192, (128, 128)),
        (128, 300, 128, 192, (82, 192)),  # 300 -> 192 caps; 128 * 192/300 = 81.92 -> 82
    ],
)
def test_resize_shortest_edge_output_shape(oldh, oldw, size, max_size, expected):
    assert T.ResizeShortestEdge.get_output_shape(oldh, oldw, size, max_size) == expected


def test_resize_shortest_edge_choice_and_range_draws():
    img = np.zeros((60, 90, 3), dtype=np.uint8)
    aug = T.ResizeShortestEdge((30, 40, 50), max_size=1000, sample_style="choice")
    np.random.seed(3)
    seen = set()
    for _ in range(30):
        t = aug.get_transform(img)
        seen.add(t.new_h)
        assert t.new_w == int(90 * t.new_h / 60 + 0.5)
    assert seen == {30, 40, 50}
    # the draws are np.random.choice(sizes), one per call, like detectron2
    np.random.seed(7)
    expected = [int(np.random.choice((30, 40, 50))) for _ in range(5)]
    np.random.seed(7)
    assert [aug.get_transform(img).new_h for _ in range(5)] == expected

    rng_aug = T.ResizeShortestEdge((20, 24), sample_style="range")
    np.random.seed(0)
    sizes = {rng_aug.get_transform(img).new_h for _ in range(60)}
    assert sizes == {20, 21, 22, 23, 24}
    with pytest.raises(ValueError):
        T.ResizeShortestEdge((1, 2, 3), sample_style="range")


def test_resize_uint8_is_pil_bilinear():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    out = T.ResizeTransform(37, 53, 20, 29).apply_image(img)
    ref = np.asarray(Image.fromarray(img).resize((29, 20), Image.BILINEAR))
    assert out.dtype == np.uint8 and out.shape == (20, 29, 3)
    np.testing.assert_array_equal(out, ref)
    gray = img[:, :, :1]
    assert T.ResizeTransform(37, 53, 20, 29).apply_image(gray).shape == (20, 29, 1)


def test_flip_image_and_boxes():
    img = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    t = T.HFlipTransform(5)
    np.testing.assert_array_equal(t.apply_image(img), img[:, ::-1])
    boxes = np.array([[1.0, 0.5, 3.0, 2.0], [0.0, 0.0, 5.0, 1.0]])
    np.testing.assert_allclose(t.apply_box(boxes), [[2.0, 0.5, 4.0, 2.0], [0.0, 0.0, 5.0, 1.0]])


def test_random_flip_uses_one_uniform_draw():
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    np.random.seed(11)
    draws = [np.random.uniform(0, 1) for _ in range(20)]
    np.random.seed(11)
    aug = T.RandomFlip()
    kinds = [type(aug.get_transform(img)).__name__ for _ in range(20)]
    assert kinds == ["HFlipTransform" if d < 0.5 else "NoOpTransform" for d in draws]
    assert isinstance(T.RandomFlip(prob=1.0).get_transform(img), T.HFlipTransform)
    assert isinstance(T.RandomFlip(prob=0.0).get_transform(img), T.NoOpTransform)
    v = T.RandomFlip(prob=1.0, horizontal=False, vertical=True).get_transform(img)
    assert isinstance(v, T.VFlipTransform) and v.height == 4


def test_random_crop_absolute_range():
    img = np.zeros((50, 30, 3), dtype=np.uint8)
    aug = T.RandomCrop("absolute_range", (20, 40))
    np.random.seed(5)
    # reference draws, in detectron2's order: crop h, crop w, then y0, x0
    ch = np.random.randint(20, 41)
    cw = np.random.randint(20, 31)  # width capped by the image (30)
    y0 = np.random.randint(50 - ch + 1)
    x0 = np.random.randint(30 - cw + 1)
    np.random.seed(5)
    t = aug.get_transform(img)
    assert (t.h, t.w, t.y0, t.x0) == (ch, cw, y0, x0)
    out = t.apply_image(img)
    assert out.shape == (ch, cw, 3)
    np.testing.assert_allclose(
        t.apply_box(np.array([[x0 + 1.0, y0 + 2.0, x0 + 5.0, y0 + 6.0]])), [[1.0, 2.0, 5.0, 6.0]]
    )
    for _ in range(50):
        t = aug.get_transform(img)
        assert 20 <= t.h <= 40 and 20 <= t.w <= 30 and t.y0 + t.h <= 50 and t.x0 + t.w <= 30


def test_apply_transform_gens_chains_and_is_seeded():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    augs = [T.RandomFlip(prob=1.0), T.ResizeShortestEdge(20, max_size=100)]
    out, tfms = T.apply_transform_gens(augs, img)
    assert out.shape == (20, 30, 3)
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(img[:, ::-1])).resize((30, 20), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)
    # box [10, 4, 20, 8] -> flipped [40, 4, 50, 8] -> halved [20, 2, 25, 4]
    np.testing.assert_allclose(tfms.apply_box(np.array([[10.0, 4.0, 20.0, 8.0]])), [[20.0, 2.0, 25.0, 4.0]])

    augs = [
        T.RandomFlip(),
        T.ResizeShortestEdge((16, 24, 32), sample_style="choice"),
        T.RandomCrop("absolute_range", (10, 14)),
    ]
    np.random.seed(42)
    a, _ = T.apply_transform_gens(augs, img)
    np.random.seed(42)
    b, _ = T.apply_transform_gens(augs, img)
    np.testing.assert_array_equal(a, b)


def test_aug_input_transforms_boxes():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    inp = T.AugInput(img, boxes=np.array([[2.0, 1.0, 6.0, 5.0]]))
    tfms = inp.apply_augmentations([T.HFlipTransform(20), T.ResizeTransform(10, 20, 5, 10)])
    assert inp.image.shape == (5, 10, 3)
    np.testing.assert_allclose(inp.boxes, [[7.0, 0.5, 9.0, 2.5]])
    assert len(tfms) == 2
