"""Shared pieces of the single-scale KS detector tests (test_ks_{dab,conditional,dn}_detr.py): a tiny backbone,
a two-image batch with ground truth, the raw-output call, the expected loss keys, a tiny KS model from a KS
model config, and the checks every single-scale KS detector passes (teacher gradients, teacher-free eval,
prediction-set layout).

The last encoder layer's packed in-projection holds, in rows of C = 256: W_q, W_k, W_v (the student),
W_q^t, W_k^t (teacher 1, share V), W_v^t (teacher 2, share A) -- ks_detr_method.md §4.2."""
import os

import torch
from torch import nn

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from tests.projects import model_helpers as mh

C = 256  # the DAB decoder's anchor sine embedding is fixed at 4 x 128 = 2C channels
NUM_CLASSES = 5


class TinyBackbone(nn.Module):
    """Stride-16 stand-in for ResNet: {"res5": (B, 16, H/16, W/16)}."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=16, stride=16)

    def forward(self, x):
        return {"res5": self.conv(x)}


def batch(with_instances=True):
    """Two uint8 images (64x96 with two boxes, 80x64 with one; absolute xyxy pixels), fixed by seed 0."""
    return mh.two_image_batch(mh.KS_SINGLE_SCALE, with_instances)


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
    return mh.loss_keys(n_aux, denoising=denoising)


def tiny_ks_model(cfg_path, edits=None):
    """The model of the KS model config ``cfg_path`` made tiny (seed 0): TinyBackbone, 8 queries, NUM_CLASSES
    classes, FFN width 32; ``edits``: further ``{"dotted.key": value}`` settings of the model config. The box
    head's last layer and the sMLP bias are randomised so that outputs differ between the passes."""
    torch.manual_seed(0)
    cfg = LazyConfig.load(cfg_path).model
    cfg.backbone = L(TinyBackbone)()
    cfg.in_channels = 16
    cfg.num_queries = 8
    cfg.num_classes = NUM_CLASSES
    cfg.criterion.num_classes = NUM_CLASSES
    cfg.transformer.encoder.feedforward_dim = 32
    cfg.transformer.decoder.feedforward_dim = 32
    for key, value in (edits or {}).items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = value
    model = instantiate(cfg)
    with torch.no_grad():  # make the heads and the sMLP non-trivial
        model.bbox_embed.layers[-1].weight.normal_(0, 0.01)
        model.ksgt.smlp_module.token_split_conv.linear[0].bias.normal_(0, 1.0)
    return model


def last_in_proj(model):
    """The KS layer's attention module (its ``in_proj_weight`` is (6C, C) in triple mode)."""
    return model.transformer.encoder.layers[5].attentions[0].attn


def perturb_teacher_weights(model):
    """Change every teacher-only weight: the sMLP and rows 3C: of the KS layer's in-projection."""
    with torch.no_grad():
        model.ksgt.smlp_module.token_split_conv.linear[0].weight.add_(1.0)
        attn = last_in_proj(model)
        attn.in_proj_weight[3 * C:].mul_(-3.0)
        attn.in_proj_bias[3 * C:].add_(1.0)


def check_teacher_gradients(model):
    """After a backward pass: the sMLP and the teachers' W_q^t, W_k^t, W_v^t got nonzero gradients."""
    smlp_w = model.ksgt.smlp_module.token_split_conv.linear[0].weight
    in_proj = last_in_proj(model).in_proj_weight
    assert smlp_w.grad is not None and smlp_w.grad.abs().sum() > 0
    for block in range(3, 6):  # W_q^t, W_k^t, W_v^t
        assert in_proj.grad[block * C:(block + 1) * C].abs().sum() > 0


def check_ks_training_step(model, keys):
    """One seeded training step on ``batch()``: exactly ``keys``, every loss finite and positive, gradients
    reach the teachers. Returns the losses."""
    model.zero_grad()
    torch.manual_seed(0)
    losses = mh.check_training_step(model, batch(), keys)
    assert all(v > 0 for v in losses.values())
    check_teacher_gradients(model)
    return losses


def eval_ignoring_teacher_weights(model, items, raw_fn=raw):
    """Eval without annotations before and after ``perturb_teacher_weights`` (restored afterwards): detections
    and raw outputs are identical, so the teacher-only weights never reach eval. Returns the detections and
    raw outputs."""
    model.eval()
    with torch.no_grad():
        before = model(items)
        raw_before = raw_fn(model, items, train=False)
        saved = {k: v.clone() for k, v in model.state_dict().items()
                 if k.startswith("ksgt.") or "layers.5.attentions" in k}
        perturb_teacher_weights(model)
        after = model(items)
        raw_after = raw_fn(model, items, train=False)
        model.load_state_dict(saved, strict=False)
    assert torch.equal(raw_before["pred_logits"], raw_after["pred_logits"])
    assert torch.equal(raw_before["pred_boxes"], raw_after["pred_boxes"])
    for a, b in zip(before, after):
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    return before, raw_before


def check_student_then_teachers(model, items, compare_boxes):
    """The 8 training prediction sets are the student's 6 decoder layers (equal to eval outputs: no dropout),
    teacher 1 (aux 6: moves with W_q^t, W_k^t only) and teacher 2 (final: moves with W_v^t only).
    compare_boxes: also compare the student layers' boxes. Returns the last training outputs."""
    with torch.no_grad():
        student = raw(model, items, train=False)
        out = raw(model, items, train=True)
        assert len(out["aux_outputs"]) == 7
        for i in range(6):  # aux 0..5 = the student's decoder layers
            ref = student["aux_outputs"][i] if i < 5 else student
            assert torch.allclose(out["aux_outputs"][i]["pred_logits"], ref["pred_logits"], atol=1e-5)
            if compare_boxes:
                assert torch.allclose(out["aux_outputs"][i]["pred_boxes"], ref["pred_boxes"], atol=1e-6)
        attn = last_in_proj(model)
        attn.in_proj_weight[3 * C:5 * C] += 0.5  # teacher 1 (share V): W_q^t, W_k^t
        out_q = raw(model, items, train=True)
        assert not torch.allclose(out_q["aux_outputs"][6]["pred_logits"], out["aux_outputs"][6]["pred_logits"])
        assert torch.equal(out_q["pred_logits"], out["pred_logits"])
        attn.in_proj_weight[5 * C:] += 0.5  # teacher 2 (share A): W_v^t
        out_v = raw(model, items, train=True)
        assert torch.equal(out_v["aux_outputs"][6]["pred_logits"], out_q["aux_outputs"][6]["pred_logits"])
        assert not torch.allclose(out_v["pred_logits"], out_q["pred_logits"])
    return out_v


def check_top_level_configs(cfg_dir, prefix, depth, ks_cls, baseline_cls, num_losses):
    """The three top-level configs ``<prefix>_r<depth>_50ep{,_smlp_qkv_triple_attn,..._share_outproj_ffn}``:
    KS or baseline model, the R50/R101 recipe; ``num_losses``: (KS, baseline) weight-dict sizes.
    Returns the loaded configs by name."""
    init = {50: mh.R50_INIT, 101: mh.R101_INIT}[depth]
    configs = {}
    for suffix in ("", "_smlp_qkv_triple_attn", "_smlp_qkv_triple_attn_share_outproj_ffn"):
        name = f"{prefix}_r{depth}_50ep{suffix}"
        cfg = LazyConfig.load(os.path.join(cfg_dir, f"{name}.py"))
        ks = "triple" in name
        assert cfg.model._target_ is (ks_cls if ks else baseline_cls), name
        mh.check_recipe(cfg, name, depth, init, output_name=name.replace("_share_outproj_ffn", ""))
        assert len(cfg.model.criterion.weight_dict) == num_losses[0 if ks else 1]
        configs[name] = cfg
    return configs
