"""Activation checkpointing (``detrex.layers.set_activation_checkpoint``, ``train.activation_checkpoint``):
every encoder and decoder layer of every detector family, KS triple-attention layers included, is recomputed in
backward, and the losses and every parameter's gradient equal those of the plain model (float64, dropout on:
the recomputation replays the same dropout masks)."""
import os

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from detrex.layers import BaseTransformerLayer, CheckpointableLayer, TransformerLayerSequence
from detrex.layers import set_activation_checkpoint
from detrex.layers.mlp import FFN
from detrex.layers.attention import MultiheadAttention
from tests.projects import model_helpers as mh

@pytest.fixture(autouse=True)
def float64():
    """Build and run in float64 (the positional embeddings follow the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KS = "projects/ks_detr/configs"
# model config, multi-scale?
MODELS = {
    "DAB-DETR": ("projects/dab_detr/configs/models/dab_detr_r50.py", False),
    "Conditional-DETR": ("projects/conditional_detr/configs/models/conditional_detr_r50.py", False),
    "DN-DETR": ("projects/dn_detr/configs/models/dn_detr_r50.py", False),
    "Deformable-DETR": ("projects/deformable_detr/configs/models/deformable_detr_r50.py", True),
    "DN-Deformable-DETR": ("projects/dn_deformable_detr/configs/models/dn_deformable_detr_r50.py", True),
    "KS-DAB-DETR": (f"{KS}/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py", False),
    "KS-Conditional-DETR": (f"{KS}/ks_conditional_detr/models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py", False),
    "KS-DN-DETR": (f"{KS}/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py", False),
    "KS-Deformable-DETR": (f"{KS}/ks_deformable_detr/models/ks_deformable_detr_r50_smlp_qkv_triple_attn.py", True),
    "KS-DN-Deformable-DETR": (
        f"{KS}/ks_dn_deformable_detr/models/ks_dn_deformable_detr_r50_smlp_qkv_triple_attn.py", True),
}


def tiny_model(name, dropout=0.1, **edits):
    """The R50 model config of ``name`` with the tiny ResNet-18 backbone (8..64 channels), FFN width 64 and 8
    queries; 6 + 6 layers of width 256 as in the config, dropout ``dropout`` everywhere; float64."""
    path, multi_scale = MODELS[name]
    cfg = LazyConfig.load(os.path.join(ROOT, path)).model
    if multi_scale:
        cfg.backbone = L(mh.tiny_resnet)(out_features=["res3", "res4", "res5"])
        for key, ch in (("res3", 16), ("res4", 32), ("res5", 64)):
            cfg.neck.input_shapes[key].channels = ch
    else:
        cfg.backbone = L(mh.tiny_resnet)(out_features=["res5"])
        cfg.in_channels = 64
    cfg.num_queries = 8
    for part in (cfg.transformer.encoder, cfg.transformer.decoder):
        part.feedforward_dim = 64
        part.attn_dropout = dropout
        part.ffn_dropout = dropout
    for key, value in edits.items():
        *path_, last = key.split(".")
        node = cfg
        for p in path_:
            node = node[p]
        node[last] = value
    torch.manual_seed(0)
    model = instantiate(cfg).train()
    # the sine position embedding computes in float32 whatever the default dtype: cast it to the model's
    model.position_embedding.register_forward_hook(lambda m, args, out: out.to(torch.get_default_dtype()))
    return model


def batch():
    return mh.two_image_batch(mh.SMALL)


def losses_and_grads(model, items, seed=1):
    """Forward with the RNG at ``seed`` (dropout, denoising noise), backward; the loss values and every
    parameter's gradient."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = model(items)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def count_layer_calls(model):
    """Counts of forward passes (and KS ``forward_teachers`` calls) per checkpointable layer."""
    calls = {}
    for name, m in model.named_modules():
        if isinstance(m, CheckpointableLayer):
            calls[name] = 0
            m.register_forward_pre_hook(lambda mod, args, name=name: calls.__setitem__(name, calls[name] + 1))
            if hasattr(m, "_forward_teachers"):
                inner = m._forward_teachers

                def counted(*a, _inner=inner, _name=name, **k):
                    calls[_name] += 1
                    return _inner(*a, **k)

                m._forward_teachers = counted
    return calls


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointed_gradients_equal_plain_ones(name):
    plain = tiny_model(name)
    ckpt = tiny_model(name)
    ckpt.load_state_dict(plain.state_dict())
    n = set_activation_checkpoint(ckpt)
    assert n == 12  # 6 encoder + 6 decoder layers, KS last encoder layer included
    items = batch()
    losses_p, grads_p = losses_and_grads(plain, items)
    calls = count_layer_calls(ckpt)
    losses_c, grads_c = losses_and_grads(ckpt, items)

    # every layer ran its forward again in backward (twice per call: forward + recomputation)
    assert len(calls) == 12 and all(c >= 2 and c % 2 == 0 for c in calls.values()), calls
    assert set(losses_c) == set(losses_p)
    assert all(v.dtype == torch.float64 for v in losses_p.values())
    assert all(g.dtype == torch.float64 for g in grads_p.values())
    for k in losses_p:
        torch.testing.assert_close(losses_c[k], losses_p[k], rtol=1e-12, atol=1e-12, msg=k)
    assert set(grads_c) == set(grads_p) and len(grads_p) > 50
    for k in grads_p:
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-9, atol=1e-12, msg=k)


def test_ks_teacher_layers_are_checkpointed_with_all_their_outputs():
    """The KS encoder's last layer (student + two teachers, several outputs) is recomputed as one unit and
    the teacher-only weights get the plain model's gradients."""
    plain = tiny_model("KS-Deformable-DETR")
    ckpt = tiny_model("KS-Deformable-DETR")
    set_activation_checkpoint(ckpt)
    calls = count_layer_calls(ckpt)
    _, grads_p = losses_and_grads(plain, batch())
    _, grads_c = losses_and_grads(ckpt, batch())
    assert calls["transformer.encoder.layers.5"] == 2  # forward_teachers: forward + recomputation
    for k in ("attention_weights_teacher.weight", "value_proj_teacher.weight"):
        key = f"transformer.encoder.layers.5.attentions.0.{k}"
        assert grads_p[key].abs().sum() > 0
        torch.testing.assert_close(grads_c[key], grads_p[key], rtol=1e-9, atol=1e-12)


def test_dropout_masks_are_replayed_and_differ_between_calls():
    """With dropout 0.5 the checkpointed gradients still equal the plain ones (same masks in the recomputation),
    while two plain steps with different seeds differ (dropout is really on)."""
    plain = tiny_model("DAB-DETR", dropout=0.5)
    ckpt = tiny_model("DAB-DETR", dropout=0.5)
    set_activation_checkpoint(ckpt)
    _, g1 = losses_and_grads(plain, batch(), seed=3)
    _, g2 = losses_and_grads(ckpt, batch(), seed=3)
    _, g3 = losses_and_grads(plain, batch(), seed=4)
    key = "transformer.encoder.layers.0.ffns.0.layers.0.0.weight"
    torch.testing.assert_close(g2[key], g1[key], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g3[key], g1[key])


def test_switch_off_and_eval_are_not_checkpointed():
    model = tiny_model("Deformable-DETR")
    assert set_activation_checkpoint(model) == 12
    switched = [m for m in model.modules() if isinstance(m, (CheckpointableLayer, TransformerLayerSequence))]
    assert len(switched) == 14 and all(m.use_checkpoint for m in switched)  # 12 layers, 2 sequences
    calls = count_layer_calls(model)
    model.eval()
    with torch.no_grad():
        model(mh.two_image_batch(mh.SMALL, with_instances=False))
    assert all(c == 1 for c in calls.values())  # no recomputation at inference
    assert set_activation_checkpoint(model, enabled=False) == 12
    assert not any(m.use_checkpoint for m in model.modules() if isinstance(m, CheckpointableLayer))


def test_a_custom_layer_that_cannot_be_checkpointed_is_named():
    class Seq(TransformerLayerSequence):
        pass

    layer = BaseTransformerLayer(MultiheadAttention(8, 2), FFN(8, 16), nn.LayerNorm(8),
                                 operation_order=("self_attn", "norm", "ffn", "norm"))
    model = nn.Sequential(Seq([layer, nn.Linear(8, 8)]))
    with pytest.raises(TypeError, match=r"0\.layers\.1' is a Linear"):
        set_activation_checkpoint(model)


def test_config_key_documented_and_off_by_default():
    from detrex.config import get_config

    train = get_config("common/train.py").train
    assert train.activation_checkpoint is False
    with open(os.path.join(ROOT, "configs/common/train.py")) as f:
        assert "activation_checkpoint" in f.read()
