"""DN-Deformable-DETR: training step with denoising losses and eval (R50 from its config and a tiny model),
the denoising attention mask at work, head layout and initialisation, the decoder's positional queries, the
encode/decode split, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.layers import PositionEmbeddingSine, get_sine_pos_embed
from detrex.modeling import HungarianMatcher, ResNet
from detrex.modeling.backbone import BasicStem
from detrex.modeling.criterion.dn_criterion import DNCriterion
from detrex.modeling.neck import ChannelMapper
from detrex.structures import Boxes, Instances
from projects.dn_deformable_detr.modeling import (
    DNDeformableDETR,
    DNDeformableDetrTransformer,
    DNDeformableDetrTransformerDecoder,
    DNDeformableDetrTransformerEncoder,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "dn_deformable_detr" / "configs"
BASE_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
DN_WEIGHTS = {"loss_class_dn": 1.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0}


def loss_keys(num_aux):
    suffixes = [""] + [f"_{i}" for i in range(num_aux)]
    return {f"loss_{k}{d}{s}" for k in ("class", "bbox", "giou") for d in ("", "_dn") for s in suffixes}


def tiny_model(num_classes=5, num_queries=10, dec_layers=3, groups=3):
    weight_dict = dict(BASE_WEIGHTS, **DN_WEIGHTS)
    base = dict(weight_dict)
    for i in range(dec_layers - 1):
        weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return DNDeformableDETR(
        backbone=ResNet(
            stem=BasicStem(3, 8, norm="FrozenBN"),
            stages=ResNet.make_default_stages(18, norm="FrozenBN", stem_out_channels=8, res2_out_channels=8),
            out_features=["res3", "res4", "res5"],
            freeze_at=1,
        ),
        position_embedding=PositionEmbeddingSine(16, temperature=10000, normalize=True, offset=-0.5),
        neck=ChannelMapper({"res3": 16, "res4": 32, "res5": 64}, ["res3", "res4", "res5"], 32, kernel_size=1,
                           norm_layer=nn.GroupNorm(8, 32), num_outs=4),
        transformer=DNDeformableDetrTransformer(
            encoder=DNDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, attn_dropout=0.0, ffn_dropout=0.0,
                                                       num_layers=2),
            decoder=DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, attn_dropout=0.0, ffn_dropout=0.0,
                                                       num_layers=dec_layers),
        ),
        embed_dim=32,
        num_classes=num_classes,
        num_queries=num_queries,
        criterion=DNCriterion(num_classes, HungarianMatcher(2.0, 5.0, 2.0), weight_dict),
        denoising_groups=groups,
    )


def batch(with_instances=True):
    g = torch.Generator().manual_seed(0)
    items = []
    for (h, w), boxes, labels in [
        ((64, 80), [[10.0, 12.0, 40.0, 50.0], [45.0, 5.0, 78.0, 30.0]], [1, 3]),
        ((72, 64), [[5.0, 30.0, 60.0, 70.0]], [0]),
    ]:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": h, "width": w}
        if with_instances:
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(labels))
        items.append(x)
    return items


def test_r50_config_training_step_and_eval():
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(CONFIGS / "models" / "dn_deformable_detr_r50.py"))
    wd = cfg.model.criterion.weight_dict
    assert wd["loss_class_dn_4"] == 1.0 and wd["loss_bbox_dn"] == 5.0 and "loss_giou_dn_5" not in wd
    model = instantiate(cfg.model)
    assert isinstance(model, DNDeformableDETR) and isinstance(model.criterion, DNCriterion)
    gen = model.denoising_generator
    assert gen.label_encoder.weight.shape == (81, 255)
    assert (gen.denoising_groups, gen.label_noise_prob, gen.box_noise_scale, gen.with_indicator) == (5, 0.2, 0.4, True)
    assert model.tgt_embed.weight.shape == (300, 255) and model.refpoint_embed.weight.shape == (300, 4)
    layer = model.transformer.decoder.layers[0]
    assert layer.ffns[0].layers[0][0].out_features == 2048 and layer.attentions[1].dropout.p == 0.0
    model.train()
    losses = model(batch())
    assert set(losses) == loss_keys(5)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name in ("denoising_generator.label_encoder.weight", "tgt_embed.weight", "refpoint_embed.weight",
                 "transformer.decoder.ref_point_head.layers.0.weight", "transformer.decoder.query_scale.layers.0.weight",
                 "transformer.encoder.layers.0.attentions.0.value_proj.weight", "class_embed.5.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    # named "transformer.decoder.bbox_embed.5..." first; its earlier layers get no gradient while the last is zero
    assert model.bbox_embed[5].layers[-1].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(batch(with_instances=False))
    assert len(out) == 2 and len(out[1]["instances"]) == 300


def test_heads_aliases_and_initialisation():
    torch.manual_seed(0)
    model = tiny_model()
    assert len({id(m) for m in model.bbox_embed}) == 3 and len({id(m) for m in model.class_embed}) == 3
    assert model.transformer.decoder.bbox_embed is model.bbox_embed
    sd = model.state_dict()
    assert torch.equal(sd["bbox_embed.1.layers.0.weight"], sd["transformer.decoder.bbox_embed.1.layers.0.weight"])
    keys = list(sd)
    assert keys.index("refpoint_embed.weight") < keys.index("transformer.level_embeds") < keys.index(
        "class_embed.0.weight") < keys.index("denoising_generator.label_encoder.weight")
    assert torch.equal(model.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert (model.bbox_embed[2].layers[-1].bias == 0).all() and (model.bbox_embed[2].layers[-1].weight == 0).all()
    assert (model.tgt_embed.weight == 0).all()
    anchors = model.refpoint_embed.weight
    assert anchors.abs().max() <= 3.0 and anchors.std() > 0.5  # inverse-sigmoid of uniform, clamped
    assert not hasattr(model.transformer, "reference_points")


def test_queries_put_denoising_first_and_mask_hides_them():
    torch.manual_seed(0)
    model = tiny_model(groups=3)
    targets = model.prepare_targets(batch())
    q = model.build_queries(2, targets)
    assert (q["denoising_groups"], q["max_gt_num_per_image"]) == (3, 2)
    assert q["label_query"].shape == (2, 6 + 10, 32) and q["box_query"].shape == (2, 16, 4)
    assert (q["label_query"][:, 6:, -1] == 0).all()  # matching queries: indicator 0
    assert q["label_query"][0, :6, -1].tolist() == [1.0] * 6  # image 0 has 2 boxes in every group
    assert q["label_query"][1, :6, -1].tolist() == [1.0, 0.0] * 3  # image 1 has 1 box: one padding slot per group
    assert q["attn_mask"].shape == (16, 16) and q["attn_mask"][6:, :6].all()
    eval_q = model.build_queries(2, None)
    assert eval_q["attn_mask"] is None and eval_q["label_query"].shape == (2, 10, 32)


def test_matching_outputs_do_not_depend_on_denoising_queries():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images = model.preprocess_image(batch())
    targets = model.prepare_targets(batch())
    with torch.no_grad():
        plain = model.forward_raw(images, None)
        torch.manual_seed(1)
        with_dn = model.forward_raw(images, targets)
        torch.manual_seed(2)
        with_other_dn = model.forward_raw(images, targets)
    assert plain["denoising_output"] is None
    assert with_dn["denoising_output"]["pred_logits"].shape == (2, 3 * 2, 5)
    assert not torch.allclose(with_dn["denoising_output"]["pred_boxes"], with_other_dn["denoising_output"]["pred_boxes"])
    # the attention mask keeps the matching queries blind to the denoising ones
    assert torch.allclose(with_dn["pred_logits"], plain["pred_logits"], atol=1e-5)
    assert torch.allclose(with_dn["pred_boxes"], plain["pred_boxes"], atol=1e-6)


def test_decoder_positional_query_follows_the_reference_box():
    torch.manual_seed(0)
    dec = DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, num_layers=2)
    ref = torch.rand(2, 5, 4, 4)  # (B, Q, L, 4) valid-ratio-scaled boxes
    output = torch.randn(2, 5, 32)
    pos0 = dec.layer_query_pos(0, output, ref, None)
    assert torch.allclose(pos0, dec.ref_point_head(get_sine_pos_embed(ref[:, :, 0], num_pos_feats=16)))
    pos1 = dec.layer_query_pos(1, output, ref, None)
    assert torch.allclose(pos1, dec.query_scale(output) * pos0)


def test_decode_is_repeatable_and_depends_on_the_memory_given():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images = model.preprocess_image(batch(with_instances=False))
    tr = model.transformer
    q = model.build_queries(2, None)
    with torch.no_grad():
        levels = tr.flatten_inputs(*model.multi_level_inputs(images))
        memory = tr.encode(levels)
        dq = tr.prepare_queries(memory, levels, q["label_query"], q["box_query"])
        hs1, ref1 = tr.decode(memory, levels, dq["query"], dq["query_pos"], dq["reference_points"])
        hs2, ref2 = tr.decode(memory, levels, dq["query"], dq["query_pos"], dq["reference_points"])
        hs3, _ = tr.decode(memory + 1, levels, dq["query"], dq["query_pos"], dq["reference_points"])
    assert torch.equal(hs1, hs2) and torch.equal(ref1, ref2) and not torch.allclose(hs1, hs3)
    assert levels.mask_flatten.shape == (2, levels.spatial_shapes.prod(1).sum().item())


def test_two_stage_is_rejected_clearly():
    with pytest.raises(NotImplementedError, match="as_two_stage"):
        DNDeformableDetrTransformer(
            encoder=DNDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, num_layers=1),
            decoder=DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, num_layers=1),
            as_two_stage=True,
        )


@pytest.mark.parametrize("name,max_iter,drop", [("dn_deformable_detr_r50_50ep", 375000, 300000),
                                                ("dn_deformable_detr_r50_12ep", 90000, 82500)])
def test_top_level_configs_hold_the_recipe(name, max_iter, drop):
    from detrex.solver import backbone_lr_factor

    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert cfg.model.backbone.stages.depth == 50
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    assert cfg.train.max_iter == max_iter and cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
    assert cfg.train.output_dir == f"./output/{name}" == cfg.dataloader.evaluator.output_dir
    multiplier = instantiate(cfg.lr_multiplier)
    assert multiplier((drop - 1) / max_iter) == 1.0 and multiplier((drop + 1) / max_iter) == pytest.approx(0.1)
