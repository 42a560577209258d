"""detrex.layers.detr_transformer: the shared encoder loop and the single-scale transformer wrapper."""
import torch
import torch.nn as nn

import pytest

from detrex.layers.detr_transformer import (
    ConditionalDecoder,
    DetrEncoder,
    SingleScaleDetrTransformer,
    post_norm_encoder_layer,
)


class _AddPos(nn.Module):
    """A stand-in layer: output = query + 2 * query_pos, records what it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, query, key, value, query_pos=None, **kwargs):
        self.seen.append((query_pos.clone(), sorted(kwargs)))
        return query + 2 * query_pos


def _encoder(layers, norm=None, cls=DetrEncoder):
    enc = cls(layers)
    enc.post_norm_layer = norm
    return enc


def test_encoder_runs_layers_in_order_with_position_and_kwargs():
    layers = [_AddPos(), _AddPos()]
    enc = _encoder(layers)
    x, pos = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    out = enc(x, query_pos=pos, query_key_padding_mask=torch.zeros(2, 5, dtype=torch.bool), extra=1)
    torch.testing.assert_close(out, x + 4 * pos)
    for layer in layers:
        assert torch.equal(layer.seen[0][0], pos)
        assert "extra" in layer.seen[0][1]


def test_encoder_layer_position_hook_and_final_norm():
    class Scaled(DetrEncoder):
        def layer_position(self, query, query_pos):  # DAB-DETR style: position depends on the layer input
            return query_pos * 0.5

    norm = nn.LayerNorm(4)
    enc = _encoder([_AddPos()], norm=norm, cls=Scaled)
    x, pos = torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    torch.testing.assert_close(enc(x, query_pos=pos), norm(x + pos))


def test_single_scale_flatten_shapes_and_order():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    mask = torch.tensor([[[False, True], [False, False]], [[True, True], [False, False]]])
    queries = torch.randn(7, 5)
    f, m, q, p = SingleScaleDetrTransformer.flatten_inputs(x, mask, queries, x + 1)
    assert f.shape == (4, 2, 3) and m.shape == (2, 4) and q.shape == (7, 2, 5) and p.shape == (4, 2, 3)
    # token t of image b is pixel (t // W, t % W): channels in the last dim
    assert torch.equal(f[1, 0], x[0, :, 0, 1]) and torch.equal(f[2, 1], x[1, :, 1, 0])
    assert m[0].tolist() == [False, True, False, False] and torch.equal(q[:, 1], queries)


def test_post_norm_encoder_layer_builds_a_working_layer():
    layer = post_norm_encoder_layer(8, 2, 0.0, 16, 0.0, nn.ReLU(), ("self_attn", "norm", "ffn", "norm"), False)
    x = torch.randn(6, 2, 8)
    y = layer(x, query_pos=torch.zeros_like(x), query_key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))
    assert y.shape == x.shape and torch.isfinite(y).all()
    # post-norm: every output token is layer-normalized
    torch.testing.assert_close(y.mean(-1), torch.zeros(6, 2), atol=1e-5, rtol=0)


def _conditional_decoder(cls=ConditionalDecoder, **kw):
    args = dict(embed_dim=8, num_heads=2, attn_dropout=0.0, feedforward_dim=16, ffn_dropout=0.0,
                activation=nn.ReLU(), operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
                num_layers=3, batch_first=False, post_norm=True, return_intermediate=True,
                ref_point_in=8, ref_point_out=2)
    args.update(kw)
    return cls(**args)


def test_conditional_decoder_modules_in_released_checkpoint_order():
    dec = _conditional_decoder(modulate_hw_attn=True)
    # only layer 0 keeps the cross-attention's query_pos_proj (the released checkpoints have no such key later)
    keys = list(dec.state_dict())
    assert any(k.startswith("layers.0.attentions.1.query_pos_proj.") for k in keys)
    assert not any(".attentions.1.query_pos_proj." in k for k in keys if not k.startswith("layers.0."))
    heads = [k.split(".")[0] for k in keys if not k.startswith("layers.")]
    assert list(dict.fromkeys(heads)) == ["query_scale", "ref_point_head", "ref_anchor_head", "post_norm_layer"]
    assert "ref_anchor_head" not in dict(_conditional_decoder().named_children())


def test_conditional_decoder_run_layer_and_stacking():
    torch.manual_seed(0)
    dec = _conditional_decoder().eval()
    q, mem = torch.randn(4, 2, 8), torch.randn(6, 2, 8)
    pos, kpos, sine = torch.randn(4, 2, 8), torch.randn(6, 2, 8), torch.randn(4, 2, 8)
    out0 = dec.run_layer(0, q, mem, mem, pos, kpos, sine)
    # run_layer(idx, ...) is layer idx called with the shared keywords; layer 0 is flagged as the first
    direct = dec.layers[0](q, mem, mem, query_pos=pos, key_pos=kpos, query_sine_embed=sine, is_first_layer=True)
    torch.testing.assert_close(out0, direct)
    stacked = dec.stack_outputs([dec.normed(out0), dec.normed(out0 + 1)], out0 + 1)
    assert stacked.shape == (2, 2, 4, 8)  # [L, B, Q, C]
    torch.testing.assert_close(stacked[1], dec.post_norm_layer(out0 + 1).transpose(0, 1))
    dec.return_intermediate = False
    last = dec.stack_outputs([], out0)
    assert last.shape == (1, 2, 4, 8)
    torch.testing.assert_close(last[0], dec.post_norm_layer(out0).transpose(0, 1))


def test_conditional_decoder_rejects_batch_first_naming_the_class():
    class MyDecoder(ConditionalDecoder):
        pass

    with pytest.raises(NotImplementedError, match="MyDecoder works sequence-first"):
        _conditional_decoder(cls=MyDecoder, batch_first=True)
