"""DNCriterion: fixed denoising indices, dn loss values and keys, zero losses without denoising queries."""

import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from detrex.modeling.criterion.dn_criterion import DNCriterion
from detrex.modeling.matcher import HungarianMatcher

torch.set_num_threads(1)
K = 4


def criterion():
    return DNCriterion(K, HungarianMatcher(2.0, 5.0, 2.0), {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})


def matching_part(b=2, q=5, aux=0):
    torch.manual_seed(0)

    def one():
        return {"pred_logits": torch.randn(b, q, K), "pred_boxes": torch.rand(b, q, 4) * 0.5 + 0.25}

    out = one()
    if aux:
        out["aux_outputs"] = [one() for _ in range(aux)]
    return out


def test_dn_indices_are_fixed_per_group():
    targets = [
        {"labels": torch.tensor([2, 0])},
        {"labels": torch.zeros(0, dtype=torch.long)},
        {"labels": torch.tensor([1])},
    ]
    idx = DNCriterion.dn_indices(targets, denoising_groups=3, max_gt_num_per_image=2, device="cpu")
    assert idx[0][0].tolist() == [0, 1, 2, 3, 4, 5] and idx[0][1].tolist() == [0, 1, 0, 1, 0, 1]
    assert idx[1][0].numel() == 0 and idx[1][1].numel() == 0
    assert idx[2][0].tolist() == [0, 2, 4] and idx[2][1].tolist() == [0, 0, 0]
    meta = DNCriterion.dn_indices(targets, 3, 2, device="meta")
    assert meta[0][0].device.type == "meta"


def test_dn_box_and_class_losses_use_fixed_assignment():
    # one image, one object, G = 2 groups, M = 1: slots 0 and 1 both reconstruct object 0
    target = {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    outputs = matching_part(b=1)
    dn_logits = torch.randn(1, 2, K)
    dn_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]]])  # slot 1 off by 0.1 in cx
    outputs.update(
        denoising_output={"pred_logits": dn_logits, "pred_boxes": dn_boxes},
        denoising_groups=2,
        max_gt_num_per_image=torch.tensor(1),
    )
    losses = criterion()(outputs, [target])
    num_boxes = 1 * 2  # GT count x groups
    assert torch.isclose(losses["loss_bbox_dn"], torch.tensor(0.1 / num_boxes))
    # GIoU of slot 1: boxes [0.4, 0.6] vs [0.5, 0.7] in x, same y: IoU = 0.1*0.2 / (0.3*0.2) = 1/3, hull = union
    assert torch.isclose(losses["loss_giou_dn"], torch.tensor((0.0 + (1 - 1 / 3)) / num_boxes), atol=1e-6)
    onehot = torch.zeros(1, 2, K)
    onehot[0, :, 3] = 1
    expected_class = tv_focal(dn_logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / num_boxes
    assert torch.isclose(losses["loss_class_dn"], expected_class, rtol=1e-5)


def test_loss_keys_with_aux_outputs_and_padding_slots():
    targets = [
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    outputs = matching_part(aux=2)
    g, m = 3, 2

    def dn():
        return {"pred_logits": torch.randn(2, g * m, K), "pred_boxes": torch.rand(2, g * m, 4) * 0.5 + 0.25}

    outputs["denoising_output"] = dict(dn(), aux_outputs=[dn(), dn()])
    outputs.update(denoising_groups=g, max_gt_num_per_image=m)
    losses = criterion()(outputs, targets)
    expected = {f"loss_{k}{s}" for k in ("class", "bbox", "giou") for s in ("", "_0", "_1", "_dn", "_dn_0", "_dn_1")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    # the padding slot of image 1 (slot 1 of each group) is a background query in the class loss
    dn_out = outputs["denoising_output"]
    onehot = torch.zeros(2, g * m, K)
    for gi in range(g):
        onehot[0, gi * m + 0, 0] = 1
        onehot[0, gi * m + 1, 1] = 1
        onehot[1, gi * m + 0, 2] = 1
    expected_class = tv_focal(dn_out["pred_logits"], onehot, alpha=0.25, gamma=2.0, reduction="sum") / (3 * g)
    assert torch.isclose(losses["loss_class_dn"], expected_class, rtol=1e-5)
    aux = dn_out["aux_outputs"][1]
    expected_l1 = sum(
        (aux["pred_boxes"][i, gi * m + j] - t["boxes"][j]).abs().sum()
        for gi in range(g)
        for i, t in enumerate(targets)
        for j in range(len(t["labels"]))
    ) / (3 * g)
    assert torch.isclose(losses["loss_bbox_dn_1"], expected_l1, rtol=1e-5)


def test_without_denoising_output_the_dn_losses_are_zero():
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    outputs = matching_part(aux=1)
    outputs.update(denoising_output=None, denoising_groups=5, max_gt_num_per_image=0)
    losses = criterion()(outputs, targets)
    dn_keys = {f"loss_{k}{s}" for k in ("class", "bbox", "giou") for s in ("_dn", "_dn_0")}
    assert dn_keys <= set(losses)
    assert all(losses[k] == 0 for k in dn_keys)
    assert losses["loss_class"] > 0
