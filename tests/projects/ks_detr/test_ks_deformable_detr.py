"""KS-Deformable-DETR (ks_detr_method.md §2.3 step 4, §4.2, §4.4, §5, §7, §11): the R50 model from its config
trains one step (24 loss keys, gradients reach the sMLP and the teacher projections) and evaluates without
annotations; teacher-only weights never change eval outputs; the triple layer's student is the baseline layer
and the teachers share offsets, output projection, norms and FFN; the 8 prediction sets are laid out as
6 student layers, teacher 1, teacher 2; the multi-level GT token mask; configs and the shapes demo."""
import math
import os

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from detrex.config import LazyConfig, instantiate
from detrex.config.targets import target_to_string
from detrex.structures import Boxes, Instances
from projects.deformable_detr.modeling import DeformableCriterion, DeformableDETR, DeformableDetrTransformer
from projects.deformable_detr.modeling import DeformableDetrTransformerDecoder, DeformableDetrTransformerEncoder
from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline
from projects.ks_detr.modeling.deformable_triple_attention import KSDeformableTripleAttnEncoderLayer
from projects.ks_detr.modeling.deformable_triple_attention import KSMultiScaleTripleAttention
from projects.ks_detr.modeling.ks_deformable_detr import KSDeformableDETR
from projects.ks_detr.modeling.ks_deformable_transformer import KSDeformableDetrTransformer
from projects.ks_detr.modeling.ks_deformable_transformer import KSDeformableDetrTransformerEncoder
from projects.ks_detr.modeling.smlp import KSGT
from tests.projects import model_helpers as mh
from tests.projects.ks_detr.multi_scale_helpers import build_ks_r50, eval_ignoring_teacher_weights
from tests.projects.ks_detr.multi_scale_helpers import training_step_with_config_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG = os.path.join(ROOT, "projects/ks_detr/configs/ks_deformable_detr")
LAST_ATTN = "transformer.encoder.layers.{}.attentions.0."


def _name(target):
    return target_to_string(target).rsplit(".", 1)[-1]


def batch(with_instances=True):
    """Two small images (64x80 with two boxes, 72x64 with one), padded to 72x80."""
    return mh.two_image_batch(mh.SMALL, with_instances)


def tiny_model(ks=True, num_classes=5, num_queries=8, dec_layers=3, dropout=0.0, with_box_refine=False):
    """A 4-level, 32-channel (KS-)Deformable-DETR; same seed gives the same weights for both classes."""
    torch.manual_seed(0)
    weights = mh.weight_dict(mh.BASE_WEIGHTS, dec_layers + (1 if ks else -1))
    enc_cls = KSDeformableDetrTransformerEncoder if ks else DeformableDetrTransformerEncoder
    parts = mh.multi_scale_parts()
    transformer = (KSDeformableDetrTransformer if ks else DeformableDetrTransformer)(
        encoder=enc_cls(32, 2, feedforward_dim=64, attn_dropout=dropout, ffn_dropout=dropout, num_layers=2),
        decoder=DeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, attn_dropout=dropout,
                                                 ffn_dropout=dropout, num_layers=dec_layers),
    )
    if ks:
        return mh.tiny_detector(KSDeformableDETR, parts, transformer, DeformableCriterion, weights, num_classes,
                                num_queries, with_box_refine=with_box_refine, ksgt=KSGT(32))
    return mh.tiny_detector(DeformableDETR, parts, transformer, DeformableCriterion, weights, num_classes,
                            num_queries, with_box_refine=with_box_refine)


# ----------------------------------------------------------------------------------------- R50 from its config
def test_r50_config_training_step_and_gt_free_eval():
    cfg, model, layer = build_ks_r50(os.path.join(CFG, "ks_deformable_detr_r50_12ep_smlp_qkv_triple_attn.py"),
                                     KSDeformableDETR)
    regular = model.transformer.encoder.layers[:5]
    assert not any(isinstance(m.attentions[0], KSMultiScaleTripleAttention) for m in regular)
    # init (§4.4): the teacher weight projection ends up xavier (the transformer's re-init), not zero
    assert layer.attention_weights_teacher.weight.abs().max() > 0.05
    assert layer.attention_weights_teacher.weight.abs().max() <= math.sqrt(6 / (256 + 128)) + 1e-6
    assert torch.count_nonzero(layer.attention_weights_teacher.bias) == 0
    assert torch.count_nonzero(layer.attention_weights.weight) == 0  # the student's stays zero

    # 24 keys: 6 student layers, teacher 1 (_6), teacher 2 (no suffix)
    training_step_with_config_optimizer(cfg, model, batch(), mh.loss_keys(7),
                                        **{"student value_proj": layer.value_proj.weight})

    # eval at the requested sizes; teacher-only weights do not change eval outputs
    results, raw = eval_ignoring_teacher_weights(model, batch(with_instances=False))
    assert [r["instances"].image_size for r in results] == [(64, 80), (72, 64)]
    assert all(len(r["instances"]) > 0 for r in results)
    assert len(raw["aux_outputs"]) == 5  # student decoder layers only


# ------------------------------------------------------------------------------------- the triple layer
def test_student_path_is_the_baseline_and_checkpoint_converts():
    ks, base = tiny_model(ks=True), tiny_model(ks=False)
    converted, changes = convert_ks_to_baseline(ks.state_dict())
    assert sorted(c.split()[1] for c in changes) == sorted(
        [f"{LAST_ATTN.format(1)}{n}.{p}" for n in ("attention_weights_teacher", "value_proj_teacher")
         for p in ("weight", "bias")] + [f"ksgt.smlp_module.token_split_conv.linear.0.{p}" for p in ("weight", "bias")])
    base.load_state_dict(converted, strict=True)
    ks.eval(), base.eval()
    inputs = batch(with_instances=False)
    with torch.no_grad():
        a = ks.forward_raw(ks.preprocess_image(inputs), None)
        b = base.forward_raw(base.preprocess_image(inputs), None)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_teachers_share_locations_output_projection_norms_and_ffn():
    """With teacher projections equal to the student's and X^t = X, both teachers equal the student, so they
    use the same sampling locations, output projection, norms and FFN; with other teacher weights and a real
    X^t they differ, while the student stays the baseline layer's output."""
    model = tiny_model(ks=True)
    enc = model.transformer.encoder
    ks_layer = enc.layers[-1]
    assert isinstance(ks_layer, KSDeformableTripleAttnEncoderLayer)
    attn = ks_layer.attentions[0]
    attn.attention_weights_teacher.load_state_dict(attn.attention_weights.state_dict())
    attn.value_proj_teacher.load_state_dict(attn.value_proj.state_dict())
    with torch.no_grad():
        attn.attention_weights.weight.normal_(0, 0.2)  # non-uniform weights, so sharing A is visible
        attn.attention_weights_teacher.weight.copy_(attn.attention_weights.weight)
    images = model.preprocess_image(batch())
    feats, masks, poses = model.multi_level_inputs(images)
    levels = model.transformer.flatten_inputs(feats, masks, poses)
    with torch.no_grad():
        student = model.transformer.encode(levels)
        memory, (t1, t2) = model.transformer.encode_teachers(levels, lambda x, padding_mask=None: x)
        assert torch.equal(memory, student)
        assert torch.allclose(t1, student, atol=1e-6) and torch.allclose(t2, student, atol=1e-6)

        def shifted(x, padding_mask=None):
            return x + 1.0

        memory2, (u1, u2) = model.transformer.encode_teachers(levels, shifted)
        assert torch.equal(memory2, student)
        assert not torch.allclose(u1, student, atol=1e-3) and not torch.allclose(u2, student, atol=1e-3)
        # teacher 1 only changes the weights: identical when the query shift does not reach them
        attn.attention_weights_teacher.weight.zero_()
        attn.attention_weights.weight.zero_()  # both uniform -> teacher 1 == student again
        student0 = model.transformer.encode(levels)
        _, (v1, v2) = model.transformer.encode_teachers(levels, shifted)
        assert torch.allclose(v1, student0, atol=1e-6)
        assert not torch.allclose(v2, student0, atol=1e-3)  # teacher 2's values come from X^t = X + 1


def test_prediction_sets_are_student_layers_then_teacher_1_then_teacher_2():
    model = tiny_model(ks=True, dec_layers=3, with_box_refine=True)  # refinement: each pass has own references
    model.train()
    images = model.preprocess_image(batch())
    targets = model.prepare_targets(batch())
    student = model.forward_raw(images, None)  # no targets: the baseline (student) path
    assert len(student["aux_outputs"]) == 2
    student_sets = student["aux_outputs"] + [
        {"pred_logits": student["pred_logits"], "pred_boxes": student["pred_boxes"]}]

    out = model.forward_raw(images, targets)
    sets = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}]
    assert len(sets) == 5  # 3 student layers, teacher 1 final, teacher 2 final
    for ours, theirs in zip(sets[:3], student_sets):
        assert torch.equal(ours["pred_logits"], theirs["pred_logits"])
        assert torch.equal(ours["pred_boxes"], theirs["pred_boxes"])
    for teacher in sets[3:]:  # the teachers see the GT (sMLP) and their own projections
        assert not torch.allclose(teacher["pred_logits"], sets[2]["pred_logits"], atol=1e-4)

    # teachers identical to the student -> their final layers equal the student's final layer
    attn = model.transformer.encoder.layers[-1].attentions[0]
    attn.attention_weights_teacher.load_state_dict(attn.attention_weights.state_dict())
    attn.value_proj_teacher.load_state_dict(attn.value_proj.state_dict())
    model.ks_teacher_tokens = lambda images, levels, targets: (lambda x, padding_mask=None: x)
    out = model.forward_raw(images, targets)
    for teacher in (out["aux_outputs"][3], out):
        assert torch.allclose(teacher["pred_logits"], student["pred_logits"], atol=1e-5)
        assert torch.allclose(teacher["pred_boxes"], student["pred_boxes"], atol=1e-6)


def _sample_positions(size_in, size_out):
    """Source pixel coordinate of each output cell under bilinear resize with align_corners=True."""
    if size_out == 1:
        return [0.0]
    return [i * (size_in - 1) / (size_out - 1) for i in range(size_out)]


def test_multi_level_gt_token_mask_follows_the_levels():
    """Independent oracle on unambiguous tokens: a token is foreground iff the canvas point it samples lies in a
    box (away from box edges by more than one pixel), levels in order, padded area background."""
    model = tiny_model(ks=True)
    inputs = batch()
    images = model.preprocess_image(inputs)
    targets = model.prepare_targets(inputs)
    feats, masks, poses = model.multi_level_inputs(images)
    levels = model.transformer.flatten_inputs(feats, masks, poses)
    fg = model.gt_token_mask(images, levels, targets)
    sizes = levels.level_sizes
    assert len(sizes) == 4 and fg.shape == (sum(h * w for h, w in sizes), 2)
    assert set(fg.unique().tolist()) <= {0.0, 1.0}
    H, W = images.tensor.shape[-2:]
    checked = 0
    for img, t in enumerate(targets):
        boxes = t["boxes_xyxy"].long().tolist()
        start = 0
        for h, w in sizes:
            grid = fg[start:start + h * w, img].view(h, w)
            for r, y in enumerate(_sample_positions(H, h)):
                for c, x in enumerate(_sample_positions(W, w)):
                    inside = [x1 + 1 < x < x2 - 2 and y1 + 1 < y < y2 - 2 for x1, y1, x2, y2 in boxes]
                    outside = [x < x1 - 1 or x > x2 or y < y1 - 1 or y > y2 for x1, y1, x2, y2 in boxes]
                    if any(inside):
                        assert grid[r, c] == 1, (img, h, w, r, c)
                        checked += 1
                    elif all(outside):
                        assert grid[r, c] == 0, (img, h, w, r, c)
                        checked += 1
            start += h * w
    assert checked > 60


def test_ks_settings_are_checked():
    with pytest.raises(ValueError, match="triple"):
        KSDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, num_layers=2, ks_mode="dual_share_a")
    parts = tiny_model(ks=True)
    kwargs = dict(backbone=parts.backbone, position_embedding=parts.position_embedding, neck=parts.neck,
                  transformer=parts.transformer, embed_dim=32, num_classes=5, num_queries=8, criterion=parts.criterion)
    with pytest.raises(TypeError, match="KSGT"):
        KSDeformableDETR(ksgt=nn.Linear(32, 32), **kwargs)
    with pytest.raises(ValueError, match="aux_loss"):
        KSDeformableDETR(ksgt=KSGT(32), aux_loss=False, **kwargs)
    baseline_transformer = tiny_model(ks=False).transformer
    with pytest.raises(TypeError, match="encode_teachers"):
        KSDeformableDETR(ksgt=KSGT(32), **dict(kwargs, transformer=baseline_transformer))


# ---------------------------------------------------------------------------------------------------- configs
SCHEDULES = {12: (90000, 82500), 24: (180000, 150000), 50: (375000, 300000)}


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("epochs", [12, 24, 50])
@pytest.mark.parametrize("ks", [True, False])
def test_configs(depth, epochs, ks):
    name = f"ks_deformable_detr_r{depth}_{epochs}ep{'_smlp_qkv_triple_attn' if ks else ''}.py"
    cfg = LazyConfig.load(os.path.join(CFG, name))
    m = cfg.model
    if ks:
        assert _name(m._target_) == "KSDeformableDETR"
        assert _name(m.transformer._target_) == "KSDeformableDetrTransformer"
        assert _name(m.transformer.encoder._target_) == "KSDeformableDetrTransformerEncoder"
        assert m.transformer.encoder.ks_mode == "triple"
        assert m.ksgt.mask_rule == "authors" and m.ksgt.pad_fg_pixel == 0 and m.ksgt.embed_dim == m.embed_dim
        wd = m.criterion.weight_dict
        for i in range(7):
            assert (wd[f"loss_class_{i}"], wd[f"loss_bbox_{i}"], wd[f"loss_giou_{i}"]) == (1.0, 5.0, 2.0)
    else:
        assert _name(m._target_) == "DeformableDETR" and "ksgt" not in m
        assert _name(m.transformer.encoder._target_) == "DeformableDetrTransformerEncoder"
    # the authors' architecture (§7.2): FFN 1024, dropout 0.1, no refinement, one stage, 4 levels
    assert m.transformer.encoder.feedforward_dim == 1024 and m.transformer.encoder.attn_dropout == 0.1
    assert m.with_box_refine is False and m.as_two_stage is False and m.neck.num_outs == 4
    assert m.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == (mh.R50_INIT if depth == 50 else mh.R101_INIT)
    # recipe (§7.1): 12/24ep differ from 50ep only in the schedule
    max_iter, drop = SCHEDULES[epochs]
    assert cfg.train.max_iter == max_iter
    assert list(cfg.lr_multiplier.scheduler.milestones) == [drop, max_iter]
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.clip_grad.params.max_norm == 0.1 and cfg.train.amp.enabled is False
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.evaluator.output_dir == cfg.train.output_dir


@pytest.mark.parametrize("depth,epochs", [(50, 12), (101, 12), (50, 50), (101, 50)])
def test_readme_linked_names_are_aliases(depth, epochs):
    src = f"ks_deformable_detr_r{depth}_{epochs}ep_smlp_qkv_triple_attn"
    alias = LazyConfig.load(os.path.join(CFG, f"{src}_outproj_ffn_v0.py"))
    cfg = LazyConfig.load(os.path.join(CFG, f"{src}.py"))
    for key in ("model", "train", "optimizer", "lr_multiplier", "dataloader"):
        assert OmegaConf.to_container(alias[key]) == OmegaConf.to_container(cfg[key]), key


# ----------------------------------------------------------------------------------------------- shapes demo
KS_DEMO = os.path.join(CFG, "ks_deformable_detr_shapes_demo.py")
TWIN_DEMO = os.path.join(ROOT, "projects/deformable_detr/configs/deformable_detr_shapes_demo.py")


def test_shapes_demo_is_the_twin_plus_ks_parts():
    ks, twin = LazyConfig.load(KS_DEMO), LazyConfig.load(TWIN_DEMO)
    for key in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_container(ks[key]) == OmegaConf.to_container(twin[key]), key
    assert {k: v for k, v in ks.train.items() if k != "output_dir"} == {
        k: v for k, v in twin.train.items() if k != "output_dir"}
    assert ks.train.init_checkpoint == "" and ks.dataloader.test.dataset.names == "shapes_val"
    ks_only = {"_target_", "ksgt", "ks_mode", "weight_dict"}

    def flat(node, prefix=""):
        out = {}
        for k, v in node.items():
            if k not in ks_only:
                out.update(flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
        return out

    assert flat(ks.model) == flat(twin.model)
    assert _name(ks.model._target_) == "KSDeformableDETR" and _name(twin.model._target_) == "DeformableDETR"
    L = ks.model.transformer.decoder.num_layers
    assert {int(k.rsplit("_", 1)[1]) for k in ks.model.criterion.weight_dict if k[-1].isdigit()} == set(range(L + 1))
    assert {int(k.rsplit("_", 1)[1]) for k in twin.model.criterion.weight_dict if k[-1].isdigit()} == set(range(L - 1))


def test_shapes_demo_model_trains_and_evaluates():
    cfg = LazyConfig.load(KS_DEMO)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert model.ksgt.smlp_module.token_split_conv.linear[0].in_features == cfg.model.embed_dim
    assert model.transformer.level_embeds.shape[0] == 2
    model.train()
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 128, 150), generator=g, dtype=torch.uint8),
               "instances": Instances((128, 150), gt_boxes=Boxes(torch.tensor([[10.0, 12.0, 60.0, 58.0]])),
                                      gt_classes=torch.tensor([2]))} for _ in range(2)]
    mh.check_training_step(model, inputs, {k for k in cfg.model.criterion.weight_dict if not k.endswith("_enc")})
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"]} for x in inputs])
    assert len(out) == 2 and 0 < len(out[0]["instances"]) <= cfg.model.select_box_nums_for_evaluation
