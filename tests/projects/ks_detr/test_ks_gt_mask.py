"""GT foreground/background token mask (ks_detr_method.md §2, §11.1)."""
import pytest
import torch

from projects.ks_detr.modeling.gt_mask import boxes_to_canvas, gt_token_mask, gt_token_mask_multi_level

CANVAS = (320, 480)


def _mask(boxes, feat=(10, 15), rule="authors", padded=CANVAS):
    return gt_token_mask([torch.tensor(boxes, dtype=torch.float32)], padded, feat, rule=rule)


def test_small_box_vanishes_with_authors_rule():
    m = _mask([[300.0, 40.0, 310.0, 52.0]])
    assert m.shape == (150, 1)
    assert m.sum().item() == 0


def test_small_box_kept_with_cell_overlap_rule():
    m = _mask([[300.0, 40.0, 310.0, 52.0]], rule="cell_overlap").view(10, 15)
    # x 300..309 lies in stride-32 column 9, y 40..51 in row 1
    expected = torch.zeros(10, 15)
    expected[1, 9] = 1
    assert torch.equal(m, expected)


def test_large_box_block():
    m = _mask([[10.0, 20.0, 200.0, 300.0]])
    grid = m[:, 0].view(10, 15)
    expected = torch.zeros(10, 15)
    expected[1:9, 1:6] = 1  # rows 1-8, columns 1-5
    assert torch.equal(grid, expected)
    assert int(m.sum()) == 40


def test_values_are_binary_float_and_row_major_n_by_b():
    boxes = [torch.tensor([[10.0, 20.0, 200.0, 300.0]]), torch.zeros(0, 4)]
    m = gt_token_mask(boxes, CANVAS, (10, 15))
    assert m.dtype == torch.float32 and m.shape == (150, 2)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[:, 1].sum() == 0  # image without boxes stays background
    # token index r*15 + c: row 1 col 1 is token 16, row 0 col 0 is token 0
    assert m[16, 0] == 1 and m[0, 0] == 0


def test_canvas_truncation_exclusive_edges_and_or():
    c = boxes_to_canvas([torch.tensor([[1.9, 2.7, 4.2, 5.99], [3.0, 3.0, 6.0, 4.0]])], (8, 8))
    expected = torch.zeros(8, 8)
    expected[2:5, 1:4] = 1  # int64 truncation: x 1..3, y 2..4
    expected[3:4, 3:6] = 1  # OR with the second box
    assert torch.equal(c[0], expected)


def test_multi_level_concatenation():
    boxes = [torch.tensor([[10.0, 20.0, 200.0, 300.0]])]
    levels = [(40, 60), (20, 30), (10, 15), (5, 8)]
    m = gt_token_mask_multi_level(boxes, CANVAS, levels)
    assert m.shape == (3190, 1)
    # level 2 (offset 2400 + 600) equals the single-scale 10x15 mask from the same raw canvas
    assert torch.equal(m[3000:3150], gt_token_mask(boxes, CANVAS, (10, 15)))


def test_pad_fg_pixel_grows_and_clamps_boxes():
    c = boxes_to_canvas([torch.tensor([[2.0, 2.0, 4.0, 4.0]])], (8, 10), image_sizes=[(6, 5)], pad_fg_pixel=3)
    expected = torch.zeros(8, 10)
    expected[0:6, 0:5] = 1  # grown by 3 px per side, clamped to the 6x5 image (not the 8x10 canvas)
    assert torch.equal(c[0], expected)


def _canvas_by_slices(boxes_xyxy, padded_size, image_sizes=None, pad_fg_pixel=0):
    """The per-box slice painting the vectorized canvas replaced (reference)."""
    canvas = torch.zeros((len(boxes_xyxy), *padded_size))
    for i, boxes in enumerate(boxes_xyxy):
        if boxes.numel() == 0:
            continue
        b = boxes.to(torch.int64)
        if pad_fg_pixel > 0:
            h_i, w_i = image_sizes[i]
            b = b + torch.tensor([-pad_fg_pixel, -pad_fg_pixel, pad_fg_pixel, pad_fg_pixel])
            b[:, 0::2] = b[:, 0::2].clamp(0, w_i)
            b[:, 1::2] = b[:, 1::2].clamp(0, h_i)
        for x1, y1, x2, y2 in b.tolist():
            canvas[i, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    return canvas


@pytest.mark.parametrize("pad", [0, 3])
def test_vectorized_canvas_equals_slice_painting(pad):
    g = torch.Generator().manual_seed(pad)
    padded, sizes = (37, 53), [(37, 40), (30, 53), (20, 20)]
    boxes = []
    for n in (6, 0, 4):
        xy = torch.rand(n, 2, generator=g) * 70 - 10  # some start left of / above the image, some beyond it
        wh = torch.rand(n, 2, generator=g) * 25
        boxes.append(torch.cat([xy, xy + wh], 1))
    boxes[2][0] = torch.tensor([-5.0, -7.0, -1.0, -2.0])  # entirely outside: empty
    expected = _canvas_by_slices(boxes, padded, sizes, pad)
    assert torch.equal(boxes_to_canvas(boxes, padded, sizes, pad), expected)
    assert expected.sum() > 0
