"""DAB-DETR on tiny models: training step, eval without annotations, extension points, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.layers import PositionEmbeddingSine
from detrex.modeling import HungarianMatcher, ResNet, SetCriterion
from detrex.modeling.backbone import BasicStem
from detrex.structures import Boxes, Instances
from projects.dab_detr.modeling import (
    DABDETR,
    DabDetrTransformer,
    DabDetrTransformerDecoder,
    DabDetrTransformerEncoder,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]


def tiny_dab_detr(num_classes=5, num_queries=10, dec_layers=3, transformer_cls=DabDetrTransformer, model_cls=DABDETR):
    weight_dict = {"loss_class": 1, "loss_bbox": 5.0, "loss_giou": 2.0}
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
        position_embedding=PositionEmbeddingSine(16, temperature=20, normalize=True),
        transformer=transformer_cls(
            encoder=DabDetrTransformerEncoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=2),
            decoder=DabDetrTransformerDecoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=dec_layers),
        ),
        embed_dim=32,
        num_classes=num_classes,
        num_queries=num_queries,
        criterion=SetCriterion(num_classes, HungarianMatcher(2.0, 5.0, 2.0), weight_dict),
    )


def batch(with_instances=True):
    g = torch.Generator().manual_seed(0)
    items = []
    for (h, w), boxes, labels in [
        ((64, 96), [[10.0, 12.0, 40.0, 50.0], [50.0, 5.0, 90.0, 30.0]], [1, 3]),
        ((80, 64), [[5.0, 30.0, 60.0, 75.0]], [0]),
    ]:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": 2 * h, "width": 2 * w}
        if with_instances:
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(labels))
        items.append(x)
    return items


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_dab_detr().train()
    losses = model(batch())
    expected = {f"loss_{k}{s}" for k in ("class", "bbox", "giou") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["class_embed.weight"].abs().sum() > 0
    assert grads["transformer.encoder.layers.0.attentions.0.attn.in_proj_weight"].abs().sum() > 0
    assert grads["backbone.res2.0.conv1.weight"].abs().sum() > 0
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())
    # the anchor-centre "freeze" is the documented no-op: centres still get gradients
    assert grads["anchor_box_embed.weight"][:, :2].abs().sum() > 0


def test_loss_weights_are_applied():
    torch.manual_seed(0)
    model = tiny_dab_detr().train()
    model.criterion.weight_dict["loss_bbox"] = 0.0
    assert model(batch())["loss_bbox"] == 0


def test_eval_without_instances_returns_detections_at_requested_size():
    torch.manual_seed(0)
    model = tiny_dab_detr().eval()
    model.select_box_nums_for_evaluation = 7
    with torch.no_grad():
        out = model(batch(with_instances=False))
    assert len(out) == 2
    inst = out[1]["instances"]
    assert inst.image_size == (160, 128)
    assert len(inst) <= 7 and set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert (inst.pred_boxes.tensor[:, 2] <= 128).all() and (inst.pred_boxes.tensor[:, 3] <= 160).all()


def test_shared_box_head_and_state_dict_alias():
    model = tiny_dab_detr()
    assert model.transformer.decoder.bbox_embed is model.bbox_embed
    sd = model.state_dict()
    assert torch.equal(sd["bbox_embed.layers.2.weight"], sd["transformer.decoder.bbox_embed.layers.2.weight"])
    assert (sd["bbox_embed.layers.2.weight"] == 0).all()
    assert torch.allclose(sd["class_embed.bias"], torch.full((5,), -4.59512), atol=1e-4)
    assert "transformer.decoder.layers.0.attentions.1.query_pos_proj.weight" in sd
    assert "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight" not in sd
    assert "pixel_mean" not in sd


class _RecordingTransformer(DabDetrTransformer):
    """Adds two extra (L = 5) outputs and records the extra inputs, like a KS subclass would."""

    seen = {}

    def forward(self, x, mask, anchor_box_embed, pos_embed, **kwargs):
        type(self).seen = dict(kwargs)
        x, mask, anchors, pos = self.flatten_inputs(x, mask, anchor_box_embed, pos_embed)
        memory = self.encode(x, mask, pos, **kwargs)
        hs, ref = self.decode(memory, mask, pos, anchors)
        hs2, ref2 = self.decode(memory * 2, mask, pos, anchors)
        return torch.cat([hs, hs2[-2:]]), torch.cat([ref, ref2[-2:]])


class _ExtraInputsDABDETR(DABDETR):
    def transformer_inputs(self, images, img_masks, features, targets):
        return {"token_flag": targets is not None, "feat_hw": tuple(features.shape[-2:])}


def test_extension_points_extra_inputs_and_more_outputs():
    torch.manual_seed(0)
    model = tiny_dab_detr(transformer_cls=_RecordingTransformer, model_cls=_ExtraInputsDABDETR).train()
    for i in range(4):  # aux keys _0.._3 for the 5 outputs
        model.criterion.weight_dict.update({f"loss_class_{i}": 1.0, f"loss_bbox_{i}": 5.0, f"loss_giou_{i}": 2.0})
    losses = model(batch())
    assert _RecordingTransformer.seen == {"token_flag": True, "feat_hw": (3, 3)}  # padded 80x96 batch
    assert {"loss_class_3", "loss_giou_3"} <= set(losses) and "loss_class_4" not in losses
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
    assert _RecordingTransformer.seen["token_flag"] is False
    assert len(raw["aux_outputs"]) == 4


def test_encoder_passes_kwargs_to_layers():
    seen = []

    class Layer(nn.Module):
        pre_norm = False

        def forward(self, query, key, value, query_pos=None, **kwargs):
            seen.append(kwargs.get("token_mask"))
            return query

    enc = DabDetrTransformerEncoder(embed_dim=8, num_heads=2, layers=[Layer(), Layer()])
    enc(torch.zeros(3, 1, 8), query_pos=torch.zeros(3, 1, 8), token_mask="M")
    assert seen == ["M", "M"]


def test_model_config_builds_baseline_r50():
    from detrex import config

    cfg = config.LazyConfig.load(str(REPO / "projects/dab_detr/configs/models/dab_detr_r50.py"))
    assert (
        cfg.model.criterion.weight_dict["loss_giou_4"] == 2.0 and "loss_giou_5" not in cfg.model.criterion.weight_dict
    )
    assert "device" not in cfg.model
    cfg.model.backbone.stages.depth = 18  # keep the test light: only the transformer is checked here
    cfg.model.in_channels = 512
    model = config.instantiate(cfg.model)
    assert isinstance(model, DABDETR)
    assert model.anchor_box_embed.weight.shape == (300, 4)
    assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6
    assert model.position_embedding.temperature == 20


@pytest.mark.parametrize(
    "name,depth,init",
    [
        ("dab_detr_r50_50ep", 50, "detectron2://ImageNetPretrained/torchvision/R-50.pkl"),
        ("dab_detr_r101_50ep", 101, "output/weights/R-101.pkl"),
    ],
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    from detrex.config import LazyConfig
    from detrex.solver import backbone_lr_factor

    cfg = LazyConfig.load(str(REPO / f"projects/dab_detr/configs/{name}.py"))
    assert cfg.model.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == init
    assert cfg.train.max_iter == 375000 and cfg.train.eval_period == 5000 and cfg.train.checkpointer.period == 5000
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert not cfg.train.amp.enabled
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
    assert cfg.train.output_dir == f"./output/{name}" == cfg.dataloader.evaluator.output_dir
    assert cfg.dataloader.train.num_workers == 16
