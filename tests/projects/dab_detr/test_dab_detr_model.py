"""DAB-DETR on tiny models: training step, eval without annotations, extension points, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig
from detrex.modeling import SetCriterion
from projects.dab_detr.modeling import DABDETR, DabDetrTransformer, DabDetrTransformerDecoder, DabDetrTransformerEncoder
from tests.projects import model_helpers as mh

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]


def tiny_dab_detr(num_classes=5, num_queries=10, dec_layers=3, transformer_cls=DabDetrTransformer, model_cls=DABDETR):
    parts = mh.single_scale_parts(20)  # built first: the seed gives the weights it always did
    transformer = transformer_cls(
        encoder=DabDetrTransformerEncoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=2),
        decoder=DabDetrTransformerDecoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=dec_layers),
    )
    weights = mh.weight_dict(mh.BASE_WEIGHTS, dec_layers - 1)
    return mh.tiny_detector(model_cls, parts, transformer, SetCriterion, weights, num_classes, num_queries)


def batch(with_instances=True):
    """64x96 and 80x64 images (requested at twice their size), padded to 80x96."""
    return mh.two_image_batch(mh.WIDE_FIRST, with_instances, scale=2)


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_dab_detr()
    mh.check_training_step(model, batch(), mh.loss_keys(2))  # loss_{class,bbox,giou}{,_0,_1}
    mh.check_grads(model, ("class_embed.weight", "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight",
                           "backbone.res2.0.conv1.weight"))
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())
    # the anchor-centre "freeze" is the documented no-op: centres still get gradients
    assert model.anchor_box_embed.weight.grad[:, :2].abs().sum() > 0


def test_loss_weights_are_applied():
    torch.manual_seed(0)
    model = tiny_dab_detr().train()
    model.criterion.weight_dict["loss_bbox"] = 0.0
    assert model(batch())["loss_bbox"] == 0


def test_eval_without_instances_returns_detections_at_requested_size():
    torch.manual_seed(0)
    model = tiny_dab_detr()
    model.select_box_nums_for_evaluation = 7
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[1], size=(160, 128), at_most=7, inside=True)


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
        (hs, ref), (hs2, ref2) = mh.encode_then_decode_twice(self, x, mask, anchor_box_embed, pos_embed, **kwargs)
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
    "name,depth,init", [("dab_detr_r50_50ep", 50, mh.R50_INIT), ("dab_detr_r101_50ep", 101, mh.R101_INIT)]
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    cfg = LazyConfig.load(str(REPO / f"projects/dab_detr/configs/{name}.py"))
    mh.check_recipe(cfg, name, depth, init)
    assert cfg.train.eval_period == 5000 and cfg.train.checkpointer.period == 5000
    assert cfg.dataloader.train.num_workers == 16
