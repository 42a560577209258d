import torch

from detrex.modeling.matcher import HungarianMatcher


def _logits_for(labels, num_queries, num_classes, strong):
    logits = torch.full((num_queries, num_classes), -5.0)
    for q, c in strong.items():
        logits[q, c] = 5.0
    return logits


def test_matches_boxes_and_classes():
    # queries 0..3; GT 0 = box B (class 1) at query 2, GT 1 = box A (class 0) at query 0
    boxes_a = [0.25, 0.25, 0.2, 0.2]
    boxes_b = [0.75, 0.75, 0.3, 0.3]
    pred_boxes = torch.tensor([[boxes_a, [0.5, 0.5, 0.1, 0.1], boxes_b, [0.1, 0.9, 0.1, 0.1]]])
    pred_logits = _logits_for(None, 4, 3, {0: 0, 2: 1})[None]
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([boxes_b, boxes_a])}]
    for cost_type in ("focal_loss_cost", "ce_cost"):
        matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type=cost_type)
        ((rows, cols),) = matcher({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, targets)
        assignment = dict(zip(cols.tolist(), rows.tolist()))
        assert assignment == {0: 2, 1: 0}
        assert rows.dtype == torch.int64


def test_class_cost_breaks_tie_between_identical_boxes():
    box = [0.5, 0.5, 0.2, 0.2]
    pred_boxes = torch.tensor([[box, box]])
    pred_logits = _logits_for(None, 2, 2, {0: 0, 1: 1})[None]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([box])}]
    ((rows, cols),) = HungarianMatcher(2.0, 5.0, 2.0)({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, targets)
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_images_without_boxes():
    out = {"pred_logits": torch.zeros(2, 3, 4), "pred_boxes": torch.full((2, 3, 4), 0.5)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    indices = HungarianMatcher(2.0, 5.0, 2.0)(out, targets)
    assert len(indices[0][0]) == 0 and len(indices[1][0]) == 1
