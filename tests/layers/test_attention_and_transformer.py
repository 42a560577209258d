import pytest
import torch
import torch.nn as nn

from detrex.layers import (
    FFN,
    MLP,
    BaseTransformerLayer,
    ConditionalCrossAttention,
    ConditionalSelfAttention,
    MultiheadAttention,
)

torch.set_num_threads(1)


def test_ffn_state_dict_layout_shares_prelu():
    ffn = FFN(embed_dim=8, feedforward_dim=16, activation=nn.PReLU())
    keys = list(ffn.state_dict())
    assert keys == [
        "activation.weight",
        "layers.0.0.weight",
        "layers.0.0.bias",
        "layers.0.1.weight",
        "layers.1.weight",
        "layers.1.bias",
    ]
    assert ffn.activation is ffn.layers[0][1]
    x = torch.randn(3, 2, 8)
    expected = x + ffn.layers[1](ffn.activation(ffn.layers[0][0](x)))
    assert torch.allclose(ffn(x), expected)


def test_mlp():
    mlp = MLP(4, 8, 2, 3)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(8, 4), (8, 8), (2, 8)]
    x = torch.randn(5, 4)
    h = torch.relu(mlp.layers[1](torch.relu(mlp.layers[0](x))))
    assert torch.allclose(mlp(x), mlp.layers[2](h))


def test_multihead_attention_wrapper_adds_positions_and_residual():
    torch.manual_seed(0)
    m = MultiheadAttention(8, 2)
    q, pos = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    out = m(q, query_pos=pos, key_padding_mask=mask)
    ref = m.attn(q + pos, q + pos, q, key_padding_mask=mask)[0]
    assert torch.allclose(out, q + ref, atol=1e-6)
    assert "attn.in_proj_weight" in m.state_dict()


def test_conditional_self_attention_equals_standard_attention_without_positions():
    torch.manual_seed(0)
    c, heads = 8, 2
    m = ConditionalSelfAttention(c, heads)
    for proj in (m.query_pos_proj, m.key_pos_proj):
        nn.init.zeros_(proj.bias)
    ref = nn.MultiheadAttention(c, heads)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([m.query_content_proj.weight, m.key_content_proj.weight, m.value_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([m.query_content_proj.bias, m.key_content_proj.bias, m.value_proj.bias]))
        ref.out_proj.weight.copy_(m.out_proj.weight)
        ref.out_proj.bias.copy_(m.out_proj.bias)
    x = torch.randn(4, 3, c)
    zero = torch.zeros_like(x)
    mask = torch.tensor([[False, False, True, True]] * 3)
    out = m(x, x, x, query_pos=zero, key_pos=zero, key_padding_mask=mask)
    assert torch.allclose(out, x + ref(x, x, x, key_padding_mask=mask)[0], atol=1e-5)


def test_conditional_cross_attention_masks_padded_keys_and_first_layer_positions():
    torch.manual_seed(0)
    m = ConditionalCrossAttention(8, 2)
    q, qpos, sine = torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    mem, kpos = torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 4:] = True
    out = m(q, mem, mem, query_pos=qpos, key_pos=kpos, query_sine_embed=sine, key_padding_mask=mask)
    mem2 = mem.clone()
    mem2[4:] += 100.0  # padded keys must not matter
    out2 = m(q, mem2, mem2, query_pos=qpos, key_pos=kpos, query_sine_embed=sine, key_padding_mask=mask)
    assert out.shape == (3, 2, 8)
    assert torch.allclose(out, out2, atol=1e-5)
    # query_pos only enters in the first layer
    later = m(q, mem, mem, query_pos=qpos, key_pos=kpos, query_sine_embed=sine)
    later2 = m(q, mem, mem, query_pos=qpos * 5, key_pos=kpos, query_sine_embed=sine)
    assert torch.allclose(later, later2)
    m.query_pos_proj = None
    with pytest.raises(RuntimeError, match="query_pos_proj"):
        m(q, mem, mem, query_pos=qpos, key_pos=kpos, query_sine_embed=sine, is_first_layer=True)


def test_base_transformer_layer_post_norm_and_names():
    torch.manual_seed(0)
    layer = BaseTransformerLayer(
        attn=MultiheadAttention(8, 2),
        ffn=FFN(8, 16, activation=nn.ReLU()),
        norm=nn.LayerNorm(8),
        operation_order=("self_attn", "norm", "ffn", "norm"),
    )
    assert not layer.pre_norm
    assert {k.split(".")[0] for k in layer.state_dict()} == {"attentions", "ffns", "norms"}
    x, pos = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    y = layer.norms[0](layer.attentions[0](x, query_pos=pos))
    expected = layer.norms[1](layer.ffns[0](y))
    assert torch.allclose(layer(x, query_pos=pos, unrelated_kwarg=1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown operations"):
        BaseTransformerLayer(MultiheadAttention(8, 2), FFN(8, 16), nn.LayerNorm(8), ("self_attn", "bogus"))
    with pytest.raises(ValueError, match="attentions"):
        BaseTransformerLayer([MultiheadAttention(8, 2)], FFN(8, 16), nn.LayerNorm(8), ("self_attn", "cross_attn"))
