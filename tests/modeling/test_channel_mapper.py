"""ChannelMapper: detrex state-dict layout (checked against the KS-Deformable-DETR checkpoint key list) and outputs."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detrex.layers.shape_spec import ShapeSpec
from detrex.modeling.neck.channel_mapper import ChannelMapper

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
R50_SHAPES = {"res3": ShapeSpec(channels=512, stride=8), "res4": ShapeSpec(channels=1024, stride=16),
              "res5": ShapeSpec(channels=2048, stride=32)}


def deformable_detr_neck(**kw):
    """The neck as Deformable-DETR configs build it."""
    args = dict(input_shapes=R50_SHAPES, in_features=["res3", "res4", "res5"], out_channels=256, num_outs=4,
                kernel_size=1, norm_layer=nn.GroupNorm(num_groups=32, num_channels=256))
    args.update(kw)
    return ChannelMapper(**args)


@pytest.mark.parametrize("variant", ["ks_deformable_detr_r50", "ks_dn_deformable_detr_r50"])
def test_state_dict_matches_released_checkpoint_keys(variant):
    entries = json.loads((FIXTURES / f"{variant}.keys.json").read_text())["keys"]
    expected = {e["key"][len("neck."):]: tuple(e["shape"]) for e in entries if e["key"].startswith("neck.")}
    assert len(expected) == 16
    neck = deformable_detr_neck()
    got = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    assert got == expected
    # the checkpoint stores each norm separately: no module is shared between convs
    assert all(e["canonical"] == e["key"] for e in entries if e["key"].startswith("neck."))
    norms = [c.norm for c in list(neck.convs) + list(neck.extra_convs)]
    assert len({id(n) for n in norms}) == len(norms)
    neck.load_state_dict({k: torch.randn(s) for k, s in expected.items()}, strict=True)


def test_forward_shapes_and_values():
    neck = deformable_detr_neck(input_shapes={"res3": ShapeSpec(channels=8), "res4": {"channels": 16}, "res5": 32},
                                out_channels=4, norm_layer=None, num_outs=5)
    g = torch.Generator().manual_seed(0)
    feats = {"res3": torch.randn(2, 8, 16, 20, generator=g), "res4": torch.randn(2, 16, 8, 10, generator=g),
             "res5": torch.randn(2, 32, 4, 5, generator=g), "res2": torch.randn(2, 4, 32, 40, generator=g)}
    outs = neck(feats)
    assert isinstance(outs, tuple)
    assert [tuple(o.shape) for o in outs] == [(2, 4, 16, 20), (2, 4, 8, 10), (2, 4, 4, 5), (2, 4, 2, 3), (2, 4, 1, 2)]
    # 1x1 convs are per-pixel matrix products
    for conv, name, out in zip(neck.convs, ["res3", "res4", "res5"], outs):
        w, b = conv.conv.weight[:, :, 0, 0], conv.conv.bias
        torch.testing.assert_close(out, torch.einsum("oc,bchw->bohw", w, feats[name]) + b[None, :, None, None])
    # the first extra conv reads the last *input* feature, the next one the previous output
    e0, e1 = neck.extra_convs
    assert e0.conv.weight.shape == (4, 32, 3, 3) and e1.conv.weight.shape == (4, 4, 3, 3)
    torch.testing.assert_close(outs[3], F.conv2d(feats["res5"], e0.conv.weight, e0.conv.bias, stride=2, padding=1))
    torch.testing.assert_close(outs[4], F.conv2d(outs[3], e1.conv.weight, e1.conv.bias, stride=2, padding=1))


def test_norm_and_activation_applied():
    neck = ChannelMapper({"a": ShapeSpec(channels=6)}, ["a"], out_channels=4, kernel_size=3,
                         norm_layer=lambda c: nn.GroupNorm(2, c), activation=nn.ReLU)
    assert neck.convs[0].conv.weight.shape == (4, 6, 3, 3) and neck.extra_convs is None
    x = torch.randn(1, 6, 5, 7)
    (out,) = neck({"a": x})
    expected = F.relu(F.group_norm(F.conv2d(x, neck.convs[0].conv.weight, neck.convs[0].conv.bias, padding=1), 2))
    torch.testing.assert_close(out, expected)


def test_clear_errors():
    with pytest.raises(KeyError, match=r"in_features \['res6'\] not in input_shapes"):
        ChannelMapper(R50_SHAPES, ["res5", "res6"], out_channels=256)
    with pytest.raises(ValueError, match=r"input_shapes\['res5'\] must give a positive channel count"):
        ChannelMapper({"res5": object()}, ["res5"], out_channels=256)
    neck = deformable_detr_neck()
    with pytest.raises(KeyError, match=r"backbone outputs lack \['res3'\]"):
        neck({"res4": torch.zeros(1, 1024, 2, 2), "res5": torch.zeros(1, 2048, 1, 1)})
