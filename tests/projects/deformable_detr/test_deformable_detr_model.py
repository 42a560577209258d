"""Deformable-DETR (plain, box refinement, two-stage): training steps, eval without annotations, head sharing
and initialisation, the encode/decode split and the KS hook, the two-stage criterion, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.modeling import HungarianMatcher
from projects.deformable_detr.modeling import DeformableCriterion, DeformableDETR, DeformableDetrTransformer
from projects.deformable_detr.modeling import DeformableDetrTransformerDecoder, DeformableDetrTransformerEncoder
from projects.deformable_detr.modeling import MultiLevelInputs
from tests.projects import model_helpers as mh

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "deformable_detr" / "configs"


def tiny_model(with_box_refine=False, as_two_stage=False, num_classes=5, num_queries=10, dec_layers=3,
               model_cls=DeformableDETR):
    parts = mh.multi_scale_parts()  # built first: the seed gives the weights it always did
    transformer = DeformableDetrTransformer(
        encoder=DeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, num_layers=2),
        decoder=DeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, num_layers=dec_layers),
        as_two_stage=as_two_stage,
        two_stage_num_proposals=num_queries,
    )
    weights = mh.weight_dict(mh.BASE_WEIGHTS, dec_layers - 1, enc=True)
    return mh.tiny_detector(model_cls, parts, transformer, DeformableCriterion, weights, num_classes, num_queries,
                            with_box_refine=with_box_refine, as_two_stage=as_two_stage)


def batch(with_instances=True):
    """64x96 and 80x64 images (requested at twice their size), padded to 80x96."""
    return mh.two_image_batch(mh.WIDE_FIRST, with_instances, scale=2)


def test_r50_config_training_step_and_eval():
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(CONFIGS / "models" / "deformable_detr_r50.py"))
    wd = cfg.model.criterion.weight_dict
    assert wd["loss_giou_4"] == 2.0 and wd["loss_class_enc"] == 1.0 and "loss_giou_5" not in wd
    model = instantiate(cfg.model)
    assert isinstance(model, DeformableDETR) and isinstance(model.criterion, DeformableCriterion)
    assert model.query_embedding.weight.shape == (300, 512)
    assert model.transformer.level_embeds.shape == (4, 256)
    layer = model.transformer.encoder.layers[0]
    assert layer.ffns[0].layers[0][0].out_features == 1024 and layer.attentions[0].dropout.p == 0.1
    assert model.position_embedding.temperature == 10000 and model.position_embedding.offset == -0.5
    mh.check_training_step(model, batch(), mh.loss_keys(5))
    mh.check_grads(model, ("transformer.encoder.layers.0.attentions.0.sampling_offsets.weight",
                           "transformer.decoder.layers.5.attentions.1.value_proj.weight",
                           "transformer.reference_points.weight", "query_embedding.weight",
                           "neck.extra_convs.0.conv.weight", "backbone.res2.0.conv1.weight", "class_embed.0.weight"))
    assert all(p.grad is None for p in model.backbone.stem.parameters())
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[1], size=(160, 128), count=300, inside=True)


def test_plain_model_shares_one_head_under_every_name():
    model = tiny_model()
    assert all(m is model.class_embed[0] for m in model.class_embed)
    assert all(m is model.bbox_embed[0] for m in model.bbox_embed)
    assert model.transformer.decoder.bbox_embed is None
    sd = model.state_dict()
    assert "class_embed.2.weight" in sd and "transformer.decoder.bbox_embed.0.layers.0.weight" not in sd
    last = model.bbox_embed[0].layers[-1]
    assert (last.weight == 0).all() and torch.equal(last.bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert torch.allclose(model.class_embed[0].bias, torch.full((5,), -4.59512), atol=1e-4)
    assert (model.transformer.reference_points.bias == 0).all()


def test_box_refine_has_distinct_heads_and_refines_references():
    torch.manual_seed(0)
    model = tiny_model(with_box_refine=True)
    assert len({id(m) for m in model.bbox_embed}) == 3 and model.transformer.decoder.bbox_embed is model.bbox_embed
    assert torch.equal(model.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert (model.bbox_embed[1].layers[-1].bias == 0).all()
    assert "transformer.decoder.bbox_embed.2.layers.2.weight" in model.state_dict()
    for head in model.bbox_embed:  # make the refinement visible (the last layers start at zero)
        nn.init.normal_(head.layers[-1].weight, std=0.1)
    mh.check_training_step(model, batch(), mh.loss_keys(2), backward=False)
    model.eval()
    images = model.preprocess_image(batch(with_instances=False))
    feats, masks, poses = model.multi_level_inputs(images)
    with torch.no_grad():
        _, init_ref, inter_refs, _, _ = model.transformer(feats, masks, poses, model.query_embedding.weight)
    assert init_ref.shape == (2, 10, 2) and inter_refs.shape == (3, 2, 10, 4)  # points become boxes
    assert not torch.allclose(inter_refs[0], inter_refs[1])


def test_two_stage_training_step_has_encoder_losses():
    torch.manual_seed(0)
    model = tiny_model(with_box_refine=True, as_two_stage=True)
    assert not hasattr(model, "query_embedding") and len(model.class_embed) == 4
    assert model.transformer.decoder.class_embed is model.class_embed
    assert all((head.layers[-1].bias == 0).all() for head in model.bbox_embed)
    mh.check_training_step(model, batch(), mh.loss_keys(2, enc=True))
    assert model.transformer.enc_output.weight.grad.abs().sum() > 0
    assert model.transformer.pos_trans.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
    assert raw["pred_boxes"].shape == (2, 10, 4)
    assert raw["enc_outputs"]["pred_logits"].shape[1] == 10 * 12 + 5 * 6 + 3 * 3 + 2 * 2  # one proposal per token


def test_two_stage_needs_box_refine_and_matching_transformer():
    with pytest.raises(ValueError, match="with_box_refine"):
        tiny_model(as_two_stage=True)
    model_kwargs = dict(with_box_refine=True)
    with pytest.raises(ValueError, match="transformer.as_two_stage"):
        m = tiny_model(**model_kwargs)
        DeformableDETR(m.backbone, m.position_embedding, m.neck, m.transformer, 32, 5, 10, m.criterion,
                       with_box_refine=True, as_two_stage=True)


def test_encoder_proposal_loss_is_class_agnostic():
    torch.manual_seed(0)
    crit = DeformableCriterion(3, HungarianMatcher(2.0, 5.0, 2.0), mh.BASE_WEIGHTS)
    outputs = {"pred_logits": torch.randn(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.25,
               "enc_outputs": {"pred_logits": torch.randn(1, 6, 3), "pred_boxes": torch.rand(1, 6, 4) * 0.5 + 0.25}}
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])
    a = crit(outputs, [{"labels": torch.tensor([1, 2]), "boxes": boxes}])
    b = crit(outputs, [{"labels": torch.tensor([2, 0]), "boxes": boxes}])
    assert {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(a)
    for k in ("loss_class_enc", "loss_bbox_enc", "loss_giou_enc"):
        assert torch.equal(a[k], b[k])  # every label counts as class 0
    assert not torch.equal(a["loss_class"], b["loss_class"])
    assert "loss_class_enc" not in crit({k: v for k, v in outputs.items() if k != "enc_outputs"},
                                        [{"labels": torch.tensor([1, 2]), "boxes": boxes}])


class _HookedDETR(DeformableDETR):
    seen = {}

    def transformer_inputs(self, images, multi_level_masks, multi_level_feats, levels, targets):
        type(self).seen = {"levels": levels, "train": targets is not None}
        return {"token_probe": "probe"}


def test_hook_sees_multi_level_geometry_and_reaches_encoder_layers():
    torch.manual_seed(0)
    model = tiny_model(model_cls=_HookedDETR).train()
    received = []
    for layer in model.transformer.encoder.layers:
        layer.register_forward_hook(lambda m, args, kwargs, out: received.append(kwargs.get("token_probe")),
                                    with_kwargs=True)
    model(batch())
    levels = _HookedDETR.seen["levels"]
    assert _HookedDETR.seen["train"] and isinstance(levels, MultiLevelInputs)
    assert levels.spatial_shapes.tolist() == [[10, 12], [5, 6], [3, 3], [2, 2]]  # padded 80x96 batch
    assert levels.level_start_index.tolist() == [0, 120, 150, 159]
    assert levels.mask_flatten.shape == (2, 163) and levels.mask_flatten.dtype == torch.bool
    # image 0 is 64 high: the last two rows of the stride-8 level are padding; image 1 is 64 wide
    assert levels.mask_flatten[0, :120].view(10, 12)[8:].all() and not levels.mask_flatten[0, :96].any()
    assert levels.mask_flatten[1, :120].view(10, 12)[:, 8:].all()
    assert torch.allclose(levels.valid_ratios[0, 0], torch.tensor([1.0, 0.8]))
    assert received == ["probe", "probe"]


def test_decode_is_repeatable_and_depends_on_the_memory_given():
    torch.manual_seed(0)
    model = tiny_model(with_box_refine=True).eval()
    images = model.preprocess_image(batch(with_instances=False))
    tr = model.transformer
    with torch.no_grad():
        levels = tr.flatten_inputs(*model.multi_level_inputs(images))
        memory = tr.encode(levels)
        q = tr.prepare_queries(memory, levels, model.query_embedding.weight)
        hs1, ref1 = tr.decode(memory, levels, q["query"], q["query_pos"], q["reference_points"])
        hs2, ref2 = tr.decode(memory, levels, q["query"], q["query_pos"], q["reference_points"])
        hs3, _ = tr.decode(memory * 2, levels, q["query"], q["query_pos"], q["reference_points"])
        full = tr(None, None, None, model.query_embedding.weight, levels=levels)
    assert torch.equal(hs1, hs2) and torch.equal(ref1, ref2)
    assert not torch.allclose(hs1, hs3)
    assert torch.equal(full[0], hs1) and torch.equal(full[2], ref1)


def test_wrong_number_of_levels_is_a_clear_error():
    model = tiny_model()
    feats = [torch.zeros(1, 32, 4, 4)] * 3
    masks = [torch.zeros(1, 4, 4, dtype=torch.bool)] * 3
    with pytest.raises(ValueError, match="expected 4 feature levels"):
        model.transformer.flatten_inputs(feats, masks, feats)


@pytest.mark.parametrize(
    "name,depth,max_iter,init,refine,two_stage",
    [
        ("deformable_detr_r50_50ep", 50, 375000, mh.R50_INIT, False, False),
        ("deformable_detr_r50_12ep", 50, 90000, mh.R50_INIT, False, False),
        ("deformable_detr_r101_50ep", 101, 375000, mh.R101_INIT, False, False),
        ("deformable_detr_r101_12ep", 101, 90000, mh.R101_INIT, False, False),
        ("deformable_detr_refine_r50_50ep", 50, 375000, mh.R50_INIT, True, False),
        ("deformable_detr_two_stage_r50_50ep", 50, 375000, mh.R50_INIT, True, True),
    ],
)
def test_top_level_configs_hold_the_recipe(name, depth, max_iter, init, refine, two_stage):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    mh.check_recipe(cfg, name, depth, init, max_iter=max_iter)
    assert cfg.model.with_box_refine is refine
    assert cfg.model.as_two_stage is two_stage and cfg.model.transformer.as_two_stage is two_stage
    multiplier = instantiate(cfg.lr_multiplier)
    # the single x0.1 step: epoch 40 of 50, or epoch 11 of 12
    drop = 300000 if max_iter == 375000 else 82500
    assert multiplier((drop - 1) / max_iter) == 1.0 and multiplier((drop + 1) / max_iter) == pytest.approx(0.1)
