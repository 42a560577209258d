"""KS-DETR decodes the student and teacher memories in one decoder call (batch stacked): the outputs equal the
sequential passes it replaced (kept here as the reference) to 1e-6 in float64, for all five KS variants, and the
student-only eval path is unchanged."""
import copy
import os
import types

import pytest
import torch
from torch import nn

from tests.projects.ks_detr import single_scale_helpers as ss
from tests.projects.ks_detr import test_ks_deformable_detr as ks_def
from tests.projects.ks_detr import test_ks_dn_deformable_detr as ks_dn_def

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SINGLE_SCALE = {
    "dab": "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py",
    "conditional": "projects/ks_detr/configs/ks_conditional_detr/models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py",
    "dn": "projects/ks_detr/configs/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py",
}


# ------------------------------------------------------------------ the sequential passes (before the change)
def sequential_single_scale_forward(self, x, mask, queries, pos_embed, ks_teacher_tokens=None, **decoder_inputs):
    """KS single-scale transformers before the one-pass change: the same decoder called once per memory."""
    if ks_teacher_tokens is None:  # eval: the baseline transformer, not part of the change
        return type(self).forward(self, x, mask, queries, pos_embed, **decoder_inputs)
    x, mask, queries, pos_embed = self.flatten_inputs(x, mask, queries, pos_embed)
    memory, teacher_memories = self.encoder.forward_teachers(x, pos_embed, mask, ks_teacher_tokens)
    hidden_states, references = self.decode(memory, mask, pos_embed, queries, **decoder_inputs)
    hs, refs = [hidden_states], [references]
    for t_memory in teacher_memories:
        t_hidden, t_ref = self.decode(t_memory, mask, pos_embed, queries, **decoder_inputs)
        hs.append(t_hidden[-1:])
        refs.append(t_ref[-1:])
    if references.dim() == 3:  # Conditional-DETR: reference points (B, Q, 2), the same for every pass
        return torch.cat(hs, 0), references
    return torch.cat(hs, 0), torch.cat(refs, 0)


def sequential_decode_all(self, memories, levels, decode_inputs, init_reference):
    """KS multi-scale detectors before the one-pass change: one decoder call and one head call per memory."""
    classes, coords = [], []
    for i, memory in enumerate(memories):
        states, references = self.transformer.decode(memory, levels, **decode_inputs)
        cls, box = self.predict(states, init_reference, references)
        if i > 0:
            cls, box = cls[-1:], box[-1:]
        classes.append(cls)
        coords.append(box)
    return torch.cat(classes), torch.cat(coords)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    return model


def build(variant):
    if variant in SINGLE_SCALE:
        model = ss.tiny_ks_model(os.path.join(ROOT, SINGLE_SCALE[variant]))
        items = ss.batch()
    elif variant == "deformable":
        model = ks_def.tiny_model(ks=True, with_box_refine=True)
        items = ks_def.batch()
    else:
        model = ks_dn_def.tiny_model()
        items = ks_dn_def.batch()
    model = no_dropout(model).double()
    embed = model.position_embedding.forward  # sine embeddings are built in float32 from the mask
    model.position_embedding.forward = lambda mask: embed(mask).double()
    reference = copy.deepcopy(model)
    if variant in SINGLE_SCALE:
        reference.transformer.forward = types.MethodType(sequential_single_scale_forward, reference.transformer)
    else:
        reference.decode_all = types.MethodType(sequential_decode_all, reference)
    return model, reference, items


def raw(model, items, train):
    model.train(train)
    images = model.preprocess_image(items)
    targets = model.prepare_targets(items) if train else None
    torch.manual_seed(0)  # DN-DETR draws its denoising noise in the forward
    return model.forward_raw(images, targets)


@pytest.mark.parametrize("variant", ["dab", "conditional", "dn", "deformable", "dn_deformable"])
def test_one_decoder_pass_equals_sequential_passes(variant):
    model, reference, items = build(variant)
    with torch.no_grad():
        out, ref = raw(model, items, True), raw(reference, items, True)
        for key in ("pred_logits", "pred_boxes"):
            got, want = out["stacked_outputs"][key], ref["stacked_outputs"][key]
            assert got.dtype == torch.float64 and got.shape == want.shape and got.shape[0] == want.shape[0]
            assert torch.allclose(got, want, rtol=0, atol=1e-6), (key, (got - want).abs().max())
        assert len(out["aux_outputs"]) == len(ref["aux_outputs"])
        # the student-only eval path is the baseline's: untouched
        ev, ev_ref = raw(model, items, False), raw(reference, items, False)
        assert torch.equal(ev["pred_logits"], ev_ref["pred_logits"])
        assert torch.equal(ev["pred_boxes"], ev_ref["pred_boxes"])
        assert "stacked_outputs" not in ev


@pytest.mark.parametrize("variant", ["dab", "deformable"])
def test_one_decoder_pass_gradients_equal_sequential(variant):
    model, reference, items = build(variant)
    grads = []
    for m in (model, reference):
        m.zero_grad()
        out = raw(m, items, True)["stacked_outputs"]
        (out["pred_logits"].sum() + out["pred_boxes"].square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=0, atol=1e-6), name
