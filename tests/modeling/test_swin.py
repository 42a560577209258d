"""Swin Transformer backbone: shapes and strides, detrex/official key names, ImageNet-checkpoint
conversion, and numerical agreement with timm's independent Swin implementation."""

import math

import pytest
import torch
import torch.nn as nn

from detrex.checkpoint.c2_model_loading import align_and_update_state_dicts
from detrex.checkpoint.swin_conversion import convert_swin_imagenet_state_dict, is_swin_imagenet_state_dict
from detrex.modeling.backbone.swin import SwinTransformer

torch.set_num_threads(1)

TINY = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def tiny_swin(**kw):
    torch.manual_seed(0)
    return SwinTransformer(**{**TINY, **kw})


# ----------------------------------------------------------------------------------------------
# shapes
@pytest.mark.parametrize("hw", [(64, 96), (70, 101), (33, 29)])
def test_output_shapes_and_strides_for_any_input_size(hw):
    model = tiny_swin().eval()
    h, w = hw
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert list(out) == ["p0", "p1", "p2", "p3"]
    specs = model.output_shape()
    for i, (name, stride, channels) in enumerate([("p0", 4, 24), ("p1", 8, 48), ("p2", 16, 96), ("p3", 32, 192)]):
        assert specs[name].stride == stride and specs[name].channels == channels
        assert out[name].shape == (2, channels, math.ceil(h / stride), math.ceil(w / stride))
        assert torch.isfinite(out[name]).all()
    assert model.size_divisibility == 32


def test_out_indices_select_outputs_and_norm_layers():
    model = tiny_swin(out_indices=(3,)).eval()
    names = {n for n, _ in model.named_children()}
    assert {"norm3"} <= names and not names & {"norm0", "norm1", "norm2"}
    out = model(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p3"] and out["p3"].shape == (1, 192, 2, 3)
    assert set(model.output_shape()) == {"p3"}

    model = tiny_swin(out_indices=(1,)).eval()
    out = model(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p1"] and out["p1"].shape == (1, 48, 8, 12)


def test_outputs_do_not_depend_on_other_images_in_the_batch():
    """Window/mask bookkeeping must keep images of a batch apart (shifted-window masks broadcast)."""
    model = tiny_swin().eval()
    x = torch.randn(3, 3, 40, 60)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    for k in batched:
        torch.testing.assert_close(batched[k][1:2], single[k], rtol=1e-4, atol=1e-5)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="out_indices"):
        SwinTransformer(**{**TINY, "out_indices": (4,)})
    with pytest.raises(ValueError, match="depths"):
        SwinTransformer(embed_dim=24, depths=(2, 2), num_heads=(1, 2, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tiny_swin()(torch.randn(3, 64, 64))


def test_training_mode_gradients_and_frozen_stages():
    model = tiny_swin(drop_path_rate=0.2, frozen_stages=2).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())
    assert not model.layers[0].training and model.layers[1].training  # frozen stage stays in eval
    out = model(torch.randn(2, 3, 64, 96))
    sum(v.sum() for v in out.values()).backward()
    assert model.layers[1].blocks[1].attn.relative_position_bias_table.grad.abs().sum() > 0
    assert model.layers[0].blocks[0].attn.qkv.weight.grad is None


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    x = torch.randn(1, 3, 36, 36)
    grads = []
    for use_checkpoint in (False, True):
        model = tiny_swin(use_checkpoint=use_checkpoint).train()
        out = model(x)
        sum(v.square().mean() for v in out.values()).backward()
        grads.append(model.layers[0].blocks[1].mlp.fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# key names: the released KS-DAB-DETR-Swin-T checkpoint uses detrex's (= official detection) names
def expected_swin_t_backbone_keys():
    """name -> shape of Swin-T with out_indices=(3,), written from the official architecture."""
    embed, depths, heads, ws = 96, (2, 2, 6, 2), (3, 6, 12, 24), 7
    keys = {
        "patch_embed.proj.weight": (embed, 3, 4, 4),
        "patch_embed.proj.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
        "norm3.weight": (768,),
        "norm3.bias": (768,),
    }
    for i, (depth, nh) in enumerate(zip(depths, heads)):
        c = embed * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            keys.update(
                {
                    p + "norm1.weight": (c,),
                    p + "norm1.bias": (c,),
                    p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, nh),
                    p + "attn.relative_position_index": (ws * ws, ws * ws),
                    p + "attn.qkv.weight": (3 * c, c),
                    p + "attn.qkv.bias": (3 * c,),
                    p + "attn.proj.weight": (c, c),
                    p + "attn.proj.bias": (c,),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
        if i < 3:
            p = f"layers.{i}.downsample."
            keys.update(
                {p + "reduction.weight": (2 * c, 4 * c), p + "norm.weight": (4 * c,), p + "norm.bias": (4 * c,)}
            )
    return keys


@pytest.fixture(scope="module")
def swin_t():
    """Full-size Swin-T as the DAB-DETR Swin-T config builds it (never run forward here)."""
    return SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1,
                           out_indices=(3,))


def test_swin_t_state_dict_matches_detrex_names_and_shapes(swin_t):
    got = {k: tuple(v.shape) for k, v in swin_t.state_dict().items()}
    expected = expected_swin_t_backbone_keys()
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    # patch embed 4 + 12 blocks x 14 + 3 patch mergings x 3 + norm3 2
    assert len(got) == 4 + 12 * 14 + 3 * 3 + 2
    assert swin_t.output_shape()["p3"].channels == 768 and swin_t.output_shape()["p3"].stride == 32


def test_swin_t_parameter_count_equals_torchvision_swin_t_without_classifier(swin_t):
    import torchvision

    ref = torchvision.models.swin_t(weights=None)
    ref_params = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("head."))
    assert sum(p.numel() for p in swin_t.parameters()) == ref_params == 27_519_354


def test_relative_position_index_follows_the_official_formula(swin_t):
    index = swin_t.layers[0].blocks[0].attn.relative_position_index
    ws = 7
    for qi, ki in [(0, 0), (0, 48), (48, 0), (10, 24), (30, 3)]:
        dy, dx = qi // ws - ki // ws, qi % ws - ki % ws
        assert index[qi, ki].item() == (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)


# ----------------------------------------------------------------------------------------------
# official ImageNet checkpoint -> backbone
def official_format_state_dict(backbone_state, depths, window_size=7, num_classes=1000, last=3):
    """An official Swin classification state dict: backbone names, final ``norm`` instead of
    ``norm3``, classifier ``head`` and ``attn_mask`` buffers of the shifted blocks at 224x224."""
    sd = {}
    for k, v in backbone_state.items():
        sd[("norm." + k[len(f"norm{last}."):]) if k.startswith(f"norm{last}.") else k] = v.clone()
    c = sd["norm.weight"].shape[0]
    sd["head.weight"] = torch.randn(num_classes, c)
    sd["head.bias"] = torch.randn(num_classes)
    res = 224 // 4
    for i, depth in enumerate(depths):
        n_windows = max(res // window_size, 1) ** 2
        for j in range(1, depth, 2):
            sd[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(n_windows, window_size**2, window_size**2)
        res //= 2
    return sd


def test_official_swin_t_checkpoint_loads_with_no_missing_or_unexpected_keys(swin_t):
    source = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
              for k, v in swin_t.state_dict().items()}
    official = official_format_state_dict(source, (2, 2, 6, 2))
    assert is_swin_imagenet_state_dict(official)
    assert "norm3.weight" not in official and "layers.2.blocks.5.attn_mask" in official

    converted = convert_swin_imagenet_state_dict({"model": official})
    fresh = SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), out_indices=(3,))
    result = fresh.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, source[k], rtol=0, atol=0)

    # authors' behaviour: final norm dropped, norm3 left at its initial value
    converted = convert_swin_imagenet_state_dict(official, map_final_norm=False)
    assert "norm3.weight" not in converted and "norm.weight" not in converted
    assert not any(k.startswith("head.") or k.endswith("attn_mask") for k in converted)


def test_converted_checkpoint_fills_the_backbone_of_a_detector_by_suffix_matching():
    """The DetectionCheckpointer path: converted keys are matched to ``backbone.*`` model keys."""
    detector = nn.Module()
    detector.backbone = tiny_swin(out_indices=(3,))
    detector.input_proj = nn.Conv2d(192, 32, 1)
    source = tiny_swin(out_indices=(3,))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    official = official_format_state_dict(source.state_dict(), TINY["depths"], num_classes=10)
    aligned = align_and_update_state_dicts(detector.state_dict(), convert_swin_imagenet_state_dict(official))
    result = detector.load_state_dict(aligned, strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == ["input_proj.bias", "input_proj.weight"]
    torch.testing.assert_close(detector.backbone.norm3.weight, source.norm3.weight)
    torch.testing.assert_close(detector.backbone.layers[2].downsample.reduction.weight,
                               source.layers[2].downsample.reduction.weight)

    prefixed = convert_swin_imagenet_state_dict(official, prefix="backbone.")
    assert detector.load_state_dict(prefixed, strict=False).missing_keys == ["input_proj.weight", "input_proj.bias"]


def test_conversion_rejects_other_state_dicts():
    with pytest.raises(ValueError, match="not an official Swin ImageNet state dict"):
        convert_swin_imagenet_state_dict({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)})
    detector_keys = {"backbone." + k: v for k, v in tiny_swin(out_indices=(3,)).state_dict().items()}
    assert not is_swin_imagenet_state_dict(detector_keys)


# ----------------------------------------------------------------------------------------------
# numerics: same outputs as timm's Swin (an independent implementation) given official weights
def test_matches_timm_swin_on_official_weights():
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    model = tiny_swin(out_indices=(0, 3)).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    official = official_format_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("norm0.")}, TINY["depths"], num_classes=10
    )
    # detection Swin shifts windows in every stage; timm does so with always_partition=True
    ref = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=224, always_partition=True,
        embed_dim=TINY["embed_dim"], depths=TINY["depths"], num_heads=TINY["num_heads"],
    ).eval()
    ref.load_state_dict(checkpoint_filter_fn(official, ref), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model(x)["p3"]
        theirs = ref.forward_features(x).permute(0, 3, 1, 2)
    assert ours.shape == (2, 192, 7, 7)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_official_swin_imagenet_file_loads_through_detection_checkpointer(tmp_path):
    """An official-format Swin ImageNet `.pth` ({"model": {patch_embed..., norm.*, head.*}}) fills the detector's
    `backbone.*` weights through DetectionCheckpointer (renamed + suffix-matched), leaving nothing at init."""
    import torch.nn as nn

    from detrex.checkpoint import DetectionCheckpointer
    from detrex.modeling.backbone.swin import SwinTransformer

    def tiny():
        return SwinTransformer(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 6), out_indices=(3,))

    donor = tiny()
    official = {}
    for k, v in donor.state_dict().items():
        if k.startswith("norm3."):
            k = "norm." + k[len("norm3."):]  # the official checkpoints name the last stage's norm `norm`
        official[k] = torch.randn_like(v) if v.is_floating_point() else v
    official["head.weight"] = torch.randn(10, 192)
    official["head.bias"] = torch.randn(10)
    torch.save({"model": official}, tmp_path / "swin_official.pth")

    detector = nn.Module()
    detector.backbone = tiny()
    DetectionCheckpointer(detector).load(str(tmp_path / "swin_official.pth"))
    got = detector.backbone.state_dict()
    for k, v in official.items():
        if k.startswith("head."):
            continue
        target = "norm3." + k[len("norm."):] if k.startswith("norm.") else k
        assert torch.equal(got[target], v), k
