"""Conditional-DETR: training step and eval (tiny model and R50 from its config), reference points, box
parametrization, extension points, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.layers import PositionEmbeddingSine
from detrex.modeling import HungarianMatcher, ResNet, SetCriterion
from detrex.modeling.backbone import BasicStem
from detrex.structures import Boxes, Instances
from projects.conditional_detr.modeling import (
    ConditionalDETR,
    ConditionalDetrTransformer,
    ConditionalDetrTransformerDecoder,
    ConditionalDetrTransformerEncoder,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "conditional_detr" / "configs"


def tiny_model(
    num_classes=5, num_queries=10, dec_layers=3, transformer_cls=ConditionalDetrTransformer, model_cls=ConditionalDETR
):
    weight_dict = {"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for i in range(dec_layers - 1):
        weight_dict.update({f"{k}_{i}": v for k, v in list(weight_dict.items())[:3]})
    return model_cls(
        backbone=ResNet(
            stem=BasicStem(3, 8, norm="FrozenBN"),
            stages=ResNet.make_default_stages(18, norm="FrozenBN", stem_out_channels=8, res2_out_channels=8),
            out_features=["res5"],
            freeze_at=1,
        ),
        in_features=["res5"],
        in_channels=64,
        position_embedding=PositionEmbeddingSine(16, temperature=10000, normalize=True),
        transformer=transformer_cls(
            encoder=ConditionalDetrTransformerEncoder(32, 2, 0.0, 64, 0.0, num_layers=2),
            decoder=ConditionalDetrTransformerDecoder(32, 2, 0.0, 64, 0.0, num_layers=dec_layers),
        ),
        embed_dim=32,
        num_classes=num_classes,
        num_queries=num_queries,
        criterion=SetCriterion(num_classes, HungarianMatcher(2.0, 5.0, 2.0), weight_dict),
    )


def batch(with_instances=True, sizes=((64, 80), (72, 64))):
    g = torch.Generator().manual_seed(0)
    specs = [
        ([[10.0, 12.0, 40.0, 50.0], [45.0, 5.0, 78.0, 30.0]], [1, 3]),
        ([[5.0, 30.0, 60.0, 70.0]], [0]),
    ]
    items = []
    for (h, w), (boxes, labels) in zip(sizes, specs):
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": 2 * h, "width": 2 * w}
        if with_instances:
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(labels))
        items.append(x)
    return items


def _keys(num_aux):
    return {f"loss_{k}{s}" for k in ("class", "bbox", "giou") for s in [""] + [f"_{i}" for i in range(num_aux)]}


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_model().train()
    losses = model(batch())
    assert set(losses) == _keys(2)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in (
        "class_embed.weight",
        "query_embed.weight",
        "transformer.decoder.ref_point_head.layers.1.weight",
        "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight",
        "backbone.res2.0.conv1.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())


def test_eval_without_instances_returns_detections_at_requested_size():
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.select_box_nums_for_evaluation = 7
    with torch.no_grad():
        out = model(batch(with_instances=False))
    assert len(out) == 2
    inst = out[1]["instances"]
    assert inst.image_size == (144, 128)
    assert len(inst) <= 7 and set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}


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
        type(self).seen = dict(kwargs)
        x, mask, query_embed, pos = self.flatten_inputs(x, mask, query_embed, pos_embed)
        memory = self.encode(x, mask, pos, **kwargs)
        hs, ref = self.decode(memory, mask, pos, query_embed)
        hs2, ref2 = self.decode(memory * 2, mask, pos, query_embed)
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
    assert set(losses) == _keys(3)
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
    model.train()
    losses = model(batch())
    assert set(losses) == _keys(5)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.query_embed.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(batch(with_instances=False))
    assert len(out) == 2 and len(out[0]["instances"]) == 300


@pytest.mark.parametrize(
    "name,depth,init",
    [
        ("conditional_detr_r50_50ep", 50, "detectron2://ImageNetPretrained/torchvision/R-50.pkl"),
        ("conditional_detr_r101_50ep", 101, "output/weights/R-101.pkl"),
    ],
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    from detrex.solver import backbone_lr_factor

    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert cfg.model.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == init
    assert cfg.train.max_iter == 375000 and cfg.train.eval_period == 5000 and cfg.train.checkpointer.period == 5000
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert not cfg.train.amp.enabled
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
    assert cfg.train.output_dir == f"./output/{name}" == cfg.dataloader.evaluator.output_dir
    assert (
        cfg.model.criterion.weight_dict["loss_giou_4"] == 2.0 and "loss_giou_5" not in cfg.model.criterion.weight_dict
    )
