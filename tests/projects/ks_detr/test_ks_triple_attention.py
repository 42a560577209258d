"""Triple / dual attention encoder layer (ks_detr_method.md §4.1, §4.3, §11.3)."""

import pytest
import torch
from torch import nn

from detrex.layers.mlp import FFN
from projects.ks_detr.modeling.triple_attention import KSMultiheadTripleAttention, KSTripleAttnEncoderLayer

C, HEADS, N, B = 16, 4, 7, 2


def _layer(mode="triple", drop=0.0):
    torch.manual_seed(0)
    attn = KSMultiheadTripleAttention(C, HEADS, attn_drop=drop, mode=mode)
    ffn = FFN(C, 32, activation=nn.PReLU(), ffn_drop=drop)
    layer = KSTripleAttnEncoderLayer(attn, ffn, nn.LayerNorm(C))
    with torch.no_grad():  # non-trivial norms and biases
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _inputs():
    g = torch.Generator().manual_seed(1)
    x, pos, xt = (torch.randn(N, B, C, generator=g) for _ in range(3))
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, 5:] = True
    return x, pos, xt, pad


def _reference_student(layer, x, pos, pad):
    """Independent baseline post-norm layer: torch MHA with the first 3C rows, shared norms and FFN."""
    mha = nn.MultiheadAttention(C, HEADS)
    attn = layer.attentions[0].attn
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.in_proj_weight[:3 * C])
        mha.in_proj_bias.copy_(attn.in_proj_bias[:3 * C])
        mha.out_proj.load_state_dict(attn.out_proj.state_dict())
    mha.eval()
    y = x + mha(x + pos, x + pos, x, key_padding_mask=pad)[0]
    y = layer.norms[0](y)
    return layer.norms[1](layer.ffns[0](y))


@pytest.mark.parametrize("mode,n_rows,n_teachers", [("triple", 6, 2), ("dual_share_a", 4, 1), ("dual_share_v", 5, 1)])
def test_student_equals_baseline_layer(mode, n_rows, n_teachers):
    layer = _layer(mode).eval()
    assert layer.attentions[0].attn.in_proj_weight.shape == (n_rows * C, C)
    x, pos, xt, pad = _inputs()
    with torch.no_grad():
        ref = _reference_student(layer, x, pos, pad)
        student = layer(x, query_pos=pos, query_key_padding_mask=pad)
        e1, teachers = layer.forward_teachers(x, xt, pos, pad)
    assert torch.allclose(student, ref, atol=1e-5)
    assert torch.allclose(e1, ref, atol=1e-5)
    assert len(teachers) == n_teachers
    for t in teachers:
        assert t.shape == (N, B, C) and not torch.allclose(t, ref, atol=1e-3)


def test_teacher_weights_do_not_change_student():
    layer = _layer("triple").eval()
    x, pos, xt, pad = _inputs()
    with torch.no_grad():
        before_plain = layer(x, query_pos=pos, query_key_padding_mask=pad)
        before, t_before = layer.forward_teachers(x, xt, pos, pad)
        layer.attentions[0].attn.in_proj_weight[3 * C:] += 1.0
        layer.attentions[0].attn.in_proj_bias[3 * C:] -= 1.0
        after, t_after = layer.forward_teachers(x, xt * 2, pos, pad)
        after_plain = layer(x, query_pos=pos, query_key_padding_mask=pad)
    assert torch.equal(before, after) and torch.equal(before_plain, after_plain)
    assert not torch.allclose(t_before[0], t_after[0])


def test_teacher_branches_follow_their_definitions():
    """Teacher 1 = A^t V (own weights, student's V), teacher 2 = A V^t (student's weights, own V)."""
    layer = _layer("triple").eval()
    x, pos, xt, pad = _inputs()
    attn = layer.attentions[0].attn
    W, b = attn.in_proj_weight, attn.in_proj_bias
    # two reference MHAs built from row blocks
    def mha_from(rows):
        m = nn.MultiheadAttention(C, HEADS).eval()
        with torch.no_grad():
            m.in_proj_weight.copy_(torch.cat([W[r * C:(r + 1) * C] for r in rows]))
            m.in_proj_bias.copy_(torch.cat([b[r * C:(r + 1) * C] for r in rows]))
            m.out_proj.load_state_dict(attn.out_proj.state_dict())
        return m
    with torch.no_grad():
        _, (t1, t2) = layer.forward_teachers(x, xt, pos, pad)
        # share V: q^t, k^t from X^t+P, v from the student's X
        o1 = mha_from([3, 4, 2])(xt + pos, xt + pos, x, key_padding_mask=pad)[0]
        # share A: q, k from X+P, v^t from X^t
        o2 = mha_from([0, 1, 5])(x + pos, x + pos, xt, key_padding_mask=pad)[0]
        ref1 = layer.norms[1](layer.ffns[0](layer.norms[0](x + o1)))
        ref2 = layer.norms[1](layer.ffns[0](layer.norms[0](x + o2)))
    assert torch.allclose(t1, ref1, atol=1e-5)
    assert torch.allclose(t2, ref2, atol=1e-5)


def test_branches_share_modules_and_init_quirk():
    layer = _layer("triple")
    names = [n for n, _ in layer.named_parameters()]
    assert "attentions.0.attn.in_proj_weight" in names and "attentions.0.attn.out_proj.weight" in names
    assert "ffns.0.activation.weight" in layer.state_dict() and "ffns.0.layers.0.1.weight" in layer.state_dict()
    # one out_proj / norm / FFN object each: a call counter sees every branch go through the same modules
    calls = {"out_proj": 0, "norm0": 0, "ffn": 0, "norm1": 0}
    for key, mod in (("out_proj", layer.attentions[0].attn.out_proj), ("norm0", layer.norms[0]),
                     ("ffn", layer.ffns[0]), ("norm1", layer.norms[1])):
        mod.register_forward_hook(lambda m, i, o, key=key: calls.__setitem__(key, calls[key] + 1))
    x, pos, xt, pad = _inputs()
    layer.forward_teachers(x, xt, pos, pad)
    assert calls == {"out_proj": 3, "norm0": 3, "ffn": 3, "norm1": 3}
    # xavier over the whole packed [6C, C] matrix: bound sqrt(6 / (C + 6C))
    fresh = KSMultiheadTripleAttention(C, HEADS).attn
    bound = (6.0 / (C + 6 * C)) ** 0.5
    assert fresh.in_proj_weight.abs().max() <= bound and fresh.in_proj_weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(fresh.in_proj_bias) == 0


def test_gradients_reach_teacher_rows_and_student_projections():
    layer = _layer("triple", drop=0.5).train()
    x, pos, xt, pad = _inputs()
    xt.requires_grad_(True)
    torch.manual_seed(3)
    e1, (t1, t2) = layer.forward_teachers(x, xt, pos, pad)
    (t1.sum() + t2.sum()).backward()
    g = layer.attentions[0].attn.in_proj_weight.grad
    assert g[3 * C:].abs().sum() > 0 and xt.grad.abs().sum() > 0
    # the teacher losses also reach the student's projections (share A -> W_q, W_k; share V -> W_v)
    assert g[:C].abs().sum() > 0 and g[2 * C:3 * C].abs().sum() > 0


def test_student_equals_dab_encoder_layer_class():
    """Against the baseline's own layer (DabDetrTransformerEncoder's BaseTransformerLayer)."""
    from projects.dab_detr.modeling import DabDetrTransformerEncoder

    torch.manual_seed(0)
    enc = DabDetrTransformerEncoder(embed_dim=C, num_heads=HEADS, feedforward_dim=32, num_layers=1).eval()
    base = enc.layers[0]
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layer = _layer("triple").eval()
    sd = layer.state_dict()
    for k, v in base.state_dict().items():
        if "in_proj" in k:
            sd[k][:3 * C] = v  # teacher rows keep their own (random) values
        else:
            sd[k] = v
    layer.load_state_dict(sd)
    x, pos, xt, pad = _inputs()
    with torch.no_grad():
        ref = base(x, query_pos=pos, query_key_padding_mask=pad)
        assert torch.allclose(layer(x, query_pos=pos, query_key_padding_mask=pad), ref, atol=1e-5)
        assert torch.allclose(layer.forward_teachers(x, xt, pos, pad)[0], ref, atol=1e-5)
