import re

import pytest
import torch
import torchvision

from detrex.layers import FrozenBatchNorm2d, ShapeSpec
from detrex.modeling.backbone import BasicBlock, BasicStem, BottleneckBlock, ResNet

torch.set_num_threads(1)


def _build(depth, **kwargs):
    stem_out = kwargs.pop("stem_out_channels", 64)
    return ResNet(
        stem=BasicStem(3, stem_out, norm="FrozenBN"),
        stages=ResNet.make_default_stages(
            depth, stride_in_1x1=False, norm="FrozenBN", stem_out_channels=stem_out, **kwargs.pop("stage_kwargs", {})
        ),
        **kwargs,
    )


def _torchvision_to_d2(name):
    """detectron2's convert-torchvision-to-d2 renaming rules."""
    if "layer" not in name:
        name = "stem." + name
    for i in range(1, 5):
        name = name.replace(f"layer{i}", f"res{i + 1}")
    for k in range(1, 4):
        name = name.replace(f"bn{k}", f"conv{k}.norm")
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return name


@pytest.mark.parametrize("depth,tv", [(18, torchvision.models.resnet18), (50, torchvision.models.resnet50)])
def test_matches_torchvision_resnet(depth, tv):
    torch.manual_seed(0)
    ref = tv(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    sd = {
        _torchvision_to_d2(k): v
        for k, v in ref.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    model = _build(depth, out_features=["res2", "res3", "res4", "res5"]).eval()
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 96)
    feats = model(x)
    body = torch.nn.Sequential(
        ref.conv1, ref.bn1, ref.relu, ref.maxpool, ref.layer1, ref.layer2, ref.layer3, ref.layer4
    )
    with torch.no_grad():
        expected = body(x)
    # activations grow to O(1000) with random weights: compare relative to the largest value
    assert (feats["res5"] - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_key_names_shapes_and_output_shape_depth50_narrow():
    model = _build(
        50, stem_out_channels=16, stage_kwargs={"res2_out_channels": 32}, out_features=["res3", "res5"], freeze_at=1
    )
    keys = list(model.state_dict())
    assert "stem.conv1.weight" in keys and "stem.conv1.norm.running_var" in keys
    assert "res2.0.shortcut.weight" in keys and "res2.1.shortcut.weight" not in keys
    assert "res4.5.conv3.norm.bias" in keys and "res4.6.conv1.weight" not in keys
    pattern = re.compile(
        r"^(stem\.conv1|res[2-5]\.\d+\.(conv[123]|shortcut))\.(weight|norm\.(weight|bias|running_mean|running_var))$"
    )
    assert all(pattern.match(k) for k in keys), [k for k in keys if not pattern.match(k)]
    assert isinstance(model.res2[0], BottleneckBlock)
    shapes = model.output_shape()
    assert shapes == {"res3": ShapeSpec(channels=64, stride=8), "res5": ShapeSpec(channels=256, stride=32)}
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"res3", "res5"}
    assert out["res3"].shape == (2, 64, 8, 8) and out["res5"].shape == (2, 256, 2, 2)


def test_depth18_blocks_and_truncated_stages():
    model = _build(18, out_features=["res3"])
    assert isinstance(model.res2[0], BasicBlock)
    assert model.stage_names == ("res2", "res3")  # stages after the last requested feature are not built
    assert not hasattr(model, "res4")
    assert model(torch.randn(1, 3, 32, 32))["res3"].shape == (1, 128, 4, 4)


def test_freeze_at_and_frozen_bn():
    model = _build(18, out_features=["res5"], freeze_at=2)
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in model.named_modules() if n.endswith("norm"))
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    # FrozenBN statistics are buffers, not parameters
    assert not any("norm" in n for n, _ in model.named_parameters())


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="depth"):
        ResNet.make_default_stages(depth=42)
    with pytest.raises(ValueError, match="out_features"):
        _build(18, out_features=["res6"])
