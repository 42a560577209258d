"""Conditional-DETR: training step and eval (tiny model and R50 from its config), reference points, box
parametrization, extension points, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.modeling import SetCriterion
from projects.conditional_detr.modeling import ConditionalDETR, ConditionalDetrTransformer
from projects.conditional_detr.modeling import ConditionalDetrTransformerDecoder, ConditionalDetrTransformerEncoder
from tests.projects import model_helpers as mh

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "conditional_detr" / "configs"


def tiny_model(
    num_classes=5, num_queries=10, dec_layers=3, transformer_cls=ConditionalDetrTransformer, model_cls=ConditionalDETR
):
    weights = mh.weight_dict({"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}, dec_layers - 1)
    parts = mh.single_scale_parts(10000)  # built first: the seed gives the weights it always did
    transformer = transformer_cls(
        encoder=ConditionalDetrTransformerEncoder(32, 2, 0.0, 64, 0.0, num_layers=2),
        decoder=ConditionalDetrTransformerDecoder(32, 2, 0.0, 64, 0.0, num_layers=dec_layers),
    )
    return mh.tiny_detector(model_cls, parts, transformer, SetCriterion, weights, num_classes, num_queries)


def batch(with_instances=True):
    """64x80 and 72x64 images (requested at twice their size), padded to 72x80."""
    return mh.two_image_batch(mh.SMALL, with_instances, scale=2)


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_model()
    mh.check_training_step(model, batch(), mh.loss_keys(2))
    mh.check_grads(model, (
        "class_embed.weight",
        "query_embed.weight",
        "transformer.decoder.ref_point_head.layers.1.weight",
        "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight",
        "backbone.res2.0.conv1.weight",
    ))
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())


def test_eval_without_instances_returns_detections_at_requested_size():
    torch.manual_seed(0)
    model = tiny_model()
    model.select_box_nums_for_evaluation = 7
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[1], size=(144, 128), at_most=7)


def test_boxes_are_offsets_to_fixed_reference_points():
    """With a zero box head every layer predicts (reference x, reference y, 0.5, 0.5)."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    assert (model.bbox_embed.layers[-1].weight == 0).all() and (model.bbox_embed.layers[-1].bias == 0).all()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
        ref = model.transformer.decoder.ref_point_head(model.query_embed.weight).sigmoid()  # (Q, 2)
    for out in [raw] + raw["aux_outputs"]:
        boxes = out["pred_boxes"]
        assert boxes.shape == (2, 10, 4)
        assert torch.allclose(boxes[..., :2], ref.expand(2, -1, -1), atol=1e-5)
        assert torch.allclose(boxes[..., 2:], torch.full_like(boxes[..., 2:], 0.5))


def test_state_dict_layout():
    sd = tiny_model().state_dict()
    assert sd["query_embed.weight"].shape == (10, 32)
    assert sd["transformer.decoder.ref_point_head.layers.1.weight"].shape == (2, 32)
    assert "transformer.decoder.layers.0.attentions.1.query_pos_proj.weight" in sd
    assert "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight" not in sd
    assert not any(k.startswith("transformer.decoder.bbox_embed") or "anchor" in k for k in sd)
    assert "transformer.encoder.query_scale.layers.0.weight" not in sd
    assert torch.allclose(sd["class_embed.bias"], torch.full((5,), -4.59512), atol=1e-4)
    assert "pixel_mean" not in sd


class _RecordingTransformer(ConditionalDetrTransformer):
    """Decodes a second memory and appends its last layer (L = 4), as a KS subclass would."""

    seen = {}

    def forward(self, x, mask, query_embed, pos_embed, **kwargs):
        (hs, ref), (hs2, ref2) = mh.encode_then_decode_twice(self, x, mask, query_embed, pos_embed, **kwargs)
        assert torch.equal(ref, ref2)  # reference points depend on the queries only
        return torch.cat([hs, hs2[-1:]]), ref


class _ExtraInputs(ConditionalDETR):
    def transformer_inputs(self, images, img_masks, features, targets):
        return {"token_flag": targets is not None}


def test_extension_points_extra_inputs_and_more_outputs():
    torch.manual_seed(0)
    model = tiny_model(transformer_cls=_RecordingTransformer, model_cls=_ExtraInputs).train()
    model.criterion.weight_dict.update({"loss_class_2": 2.0, "loss_bbox_2": 5.0, "loss_giou_2": 2.0})
    seen = []
    model.transformer.encoder.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("token_flag")), with_kwargs=True
    )
    losses = model(batch())
    assert set(losses) == mh.loss_keys(3)
    assert _RecordingTransformer.seen == {"token_flag": True} and seen == [True]
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
    assert seen == [True, False] and len(raw["aux_outputs"]) == 3


def test_r50_config_training_step_and_eval():
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(CONFIGS / "models" / "conditional_detr_r50.py"))
    assert cfg.model.criterion.weight_dict["loss_class"] == 2.0
    assert cfg.model.position_embedding.temperature == 10000
    model = instantiate(cfg.model)
    assert isinstance(model, ConditionalDETR)
    assert model.query_embed.weight.shape == (300, 256)
    assert isinstance(model.transformer.encoder.layers[0].ffns[0].activation, nn.ReLU)
    assert model.transformer.decoder.layers[0].attentions[0].attn_drop.p == 0.1
    mh.check_training_step(model, batch(), mh.loss_keys(5))
    assert model.query_embed.weight.grad.abs().sum() > 0
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[0], count=300)


@pytest.mark.parametrize(
    "name,depth,init",
    [("conditional_detr_r50_50ep", 50, mh.R50_INIT), ("conditional_detr_r101_50ep", 101, mh.R101_INIT)],
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    mh.check_recipe(cfg, name, depth, init)
    assert cfg.train.eval_period == 5000 and cfg.train.checkpointer.period == 5000
    assert (
        cfg.model.criterion.weight_dict["loss_giou_4"] == 2.0 and "loss_giou_5" not in cfg.model.criterion.weight_dict
    )
