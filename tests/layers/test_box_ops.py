import torch
import torchvision.ops as tvops

from detrex.layers import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)


def _random_xyxy(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_box_conversions_match_torchvision():
    boxes = _random_xyxy(7, 0)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    assert torch.allclose(cxcywh, tvops.box_convert(boxes, "xyxy", "cxcywh"))
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), boxes, atol=1e-5)
    # works on any leading shape
    assert box_cxcywh_to_xyxy(cxcywh.view(1, 7, 4)).shape == (1, 7, 4)


def test_iou_and_giou_match_torchvision():
    a, b = _random_xyxy(5, 1), _random_xyxy(6, 2)
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, tvops.box_iou(a, b), atol=1e-6)
    assert union.shape == (5, 6)
    assert torch.allclose(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b), atol=1e-6)


def test_giou_hand_case():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    # disjoint: IoU 0, enclosing area 3, union 2 -> GIoU = -1/3
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([[-1.0 / 3.0]]))
    assert torch.allclose(generalized_box_iou(a, a), torch.tensor([[1.0]]))


def test_inverse_sigmoid():
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x, atol=1e-6)
    # clamped at eps = 1e-3 like detrex
    assert torch.allclose(inverse_sigmoid(torch.tensor([0.0, 1.0])), torch.tensor([-6.9068, 6.9068]), atol=1e-3)
