"""Shared pieces of the single-scale KS detector tests (test_ks_{dab,conditional,dn}_detr.py): a tiny backbone,
a two-image batch with ground truth, the raw-output call and the expected loss keys."""
import torch
from torch import nn

from detrex.structures import Boxes, Instances


class TinyBackbone(nn.Module):
    """Stride-16 stand-in for ResNet: {"res5": (B, 16, H/16, W/16)}."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=16, stride=16)

    def forward(self, x):
        return {"res5": self.conv(x)}


def batch(with_instances=True):
    """Two uint8 images (64x96 with two boxes, 80x64 with one; absolute xyxy pixels), fixed by seed 0."""
    g = torch.Generator().manual_seed(0)
    items = []
    for (h, w), boxes, classes in (
        ((64, 96), [[4.0, 6.0, 60.0, 50.0], [70.0, 10.0, 94.0, 40.0]], [1, 3]),
        ((80, 64), [[10.0, 20.0, 60.0, 78.0]], [2]),
    ):
        x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
        if with_instances:
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))
        items.append(x)
    return items


def raw(model, items, train, seed=None):
    """``model.forward_raw`` in train (with targets) or eval mode; ``seed`` (if given) is set right before the
    call (DN-DETR draws its denoising noise there)."""
    model.train(train)
    images = model.preprocess_image(items)
    targets = model.prepare_targets(items) if train else None
    if seed is not None:
        torch.manual_seed(seed)
    return model.forward_raw(images, targets)


def expected_keys(n_aux=7, denoising=False):
    """Loss keys of the matching part (and the ``_dn`` keys with ``denoising``) for ``n_aux`` aux sets."""
    suffixes = [""] + [f"_{i}" for i in range(n_aux)]
    parts = ("", "_dn") if denoising else ("",)
    return {f"loss_{k}{d}{s}" for k in ("class", "bbox", "giou") for d in parts for s in suffixes}
