"""KS -> baseline checkpoint conversion rules (ks_detr_method.md §9)."""
import numpy as np
import pytest
import torch

from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline

PREFIX = "transformer.encoder.layers.5.attentions.0.attn."


@pytest.mark.parametrize("rows", [6, 5, 4])  # triple, dual share-V, dual share-A
def test_single_scale_packed_projection_sliced(rows):
    C = 8
    w = torch.randn(rows * C, C)
    b = torch.randn(rows * C)
    sd = {
        "ksgt.smlp_module.token_split_conv.linear.0.weight": torch.randn(C, C),
        "ksgt.smlp_module.token_split_conv.linear.0.bias": torch.randn(C),
        "transformer.encoder.layers.4.attentions.0.attn.in_proj_weight": torch.randn(3 * C, C),
        PREFIX + "in_proj_weight": w,
        PREFIX + "in_proj_bias": b,
        PREFIX + "out_proj.weight": torch.randn(C, C),
    }
    out, changes = convert_ks_to_baseline(sd)
    assert list(out) == [k for k in sd if not k.startswith("ksgt.")]
    assert torch.equal(out[PREFIX + "in_proj_weight"], w[:3 * C])
    assert torch.equal(out[PREFIX + "in_proj_bias"], b[:3 * C])
    assert out["transformer.encoder.layers.4.attentions.0.attn.in_proj_weight"] is sd[
        "transformer.encoder.layers.4.attentions.0.attn.in_proj_weight"]
    assert len(changes) == 4


def test_deformable_teacher_keys_dropped_and_numpy_supported():
    base = "transformer.encoder.layers.5.attentions.0."
    sd = {
        base + "sampling_offsets.weight": np.zeros((16, 8)),
        base + "attention_weights_teacher.weight": np.zeros((8, 8)),
        base + "attention_weights_teacher.bias": np.zeros(8),
        base + "value_proj_teacher.weight": np.zeros((8, 8)),
        base + "value_proj_teacher.bias": np.zeros(8),
        "transformer.decoder.layers.0.attentions.0.attn.in_proj_weight": np.ones((24, 8)),
        "ksgt.smlp_module.token_split_conv.linear.0.bias": np.zeros(8),
    }
    out, changes = convert_ks_to_baseline(sd)
    assert set(out) == {base + "sampling_offsets.weight",
                        "transformer.decoder.layers.0.attentions.0.attn.in_proj_weight"}
    assert out["transformer.decoder.layers.0.attentions.0.attn.in_proj_weight"].shape == (24, 8)
    assert len(changes) == 5 and all(c.startswith("dropped") for c in changes)
