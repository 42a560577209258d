import torch
import torchvision

from detrex.modeling.criterion import SetCriterion
from detrex.modeling.matcher import HungarianMatcher

torch.set_num_threads(1)


def _criterion():
    return SetCriterion(
        num_classes=3,
        matcher=HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        weight_dict={"loss_class": 1, "loss_bbox": 5.0, "loss_giou": 2.0},
    )


def _targets():
    return [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]


def test_loss_keys_with_any_number_of_aux_outputs():
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 5, 3), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25}
    outputs["aux_outputs"] = [
        {"pred_logits": torch.randn(2, 5, 3), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25} for _ in range(7)
    ]
    losses = _criterion()(outputs, _targets())
    expected = {"loss_class", "loss_bbox", "loss_giou"}
    expected |= {f"{k}_{i}" for k in ("loss_class", "loss_bbox", "loss_giou") for i in range(7)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_perfect_boxes_give_zero_box_losses_and_focal_matches_torchvision():
    targets = _targets()
    pred_boxes = torch.full((2, 4, 4), 0.5)
    pred_boxes[0, 1] = targets[0]["boxes"][0]
    pred_boxes[0, 3] = targets[0]["boxes"][1]
    pred_boxes[1, 2] = targets[1]["boxes"][0]
    pred_boxes[1, 0] = torch.tensor([0.1, 0.1, 0.05, 0.05])
    logits = torch.full((2, 4, 3), -4.0)
    logits[0, 1, 0] = logits[0, 3, 2] = logits[1, 2, 1] = 4.0
    losses = _criterion()({"pred_logits": logits, "pred_boxes": pred_boxes}, targets)
    assert losses["loss_bbox"].abs() < 1e-6
    assert losses["loss_giou"].abs() < 1e-6
    onehot = torch.zeros(2, 4, 3)
    onehot[0, 1, 0] = onehot[0, 3, 2] = onehot[1, 2, 1] = 1.0
    expected = torchvision.ops.sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / 3
    assert torch.allclose(losses["loss_class"], expected, atol=1e-6)


def test_l1_normalized_by_num_boxes_min_one():
    crit = _criterion()
    out = {"pred_logits": torch.zeros(1, 1, 3), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
    tgt = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.3]])}]
    assert torch.allclose(crit(out, tgt)["loss_bbox"], torch.tensor(0.2))
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = crit(out, empty)
    assert losses["loss_bbox"] == 0 and torch.isfinite(losses["loss_class"])
