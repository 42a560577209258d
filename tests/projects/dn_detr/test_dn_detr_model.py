"""DN-DETR: training step with denoising losses and eval (tiny model and R50 from its config), the
denoising attention mask at work, state-dict layout, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dab_detr.modeling import DabDetrTransformerDecoder, DabDetrTransformerEncoder
from projects.dn_detr.modeling import DNDETR, DNDetrTransformer
from tests.projects import model_helpers as mh

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "dn_detr" / "configs"


def tiny_model(num_classes=5, num_queries=10, dec_layers=3, groups=3):
    parts = mh.single_scale_parts(20)  # built first: the seed gives the weights it always did
    transformer = DNDetrTransformer(
        encoder=DabDetrTransformerEncoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=2),
        decoder=DabDetrTransformerDecoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=dec_layers),
    )
    weights = mh.weight_dict(dict(mh.BASE_WEIGHTS, **mh.DN_WEIGHTS), dec_layers - 1)
    return mh.tiny_detector(DNDETR, parts, transformer, DNCriterion, weights, num_classes, num_queries,
                            freeze_anchor_box_centers=False, denoising_groups=groups)


def batch(with_instances=True, empty=False):
    """64x80 and 72x64 images, padded to 72x80; ``empty``: instances without boxes."""
    return mh.two_image_batch(mh.SMALL, with_instances, empty=empty)


def _keys(num_aux):
    return mh.loss_keys(num_aux, denoising=True)


def test_training_step_has_denoising_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_model()
    losses = mh.check_training_step(model, batch(), _keys(2))
    assert losses["loss_bbox_dn"] > 0 and losses["loss_class_dn_1"] > 0
    mh.check_grads(model, ("denoising_generator.label_encoder.weight", "anchor_box_embed.weight", "class_embed.weight"))


def test_loss_weights_apply_to_denoising_keys():
    torch.manual_seed(0)
    model = tiny_model().train()
    model.criterion.weight_dict["loss_giou_dn_0"] = 0.0
    losses = model(batch())
    assert losses["loss_giou_dn_0"] == 0 and losses["loss_giou_dn"] > 0


def test_forward_raw_layout_in_training():
    torch.manual_seed(0)
    model = tiny_model(groups=3).train()
    images = model.preprocess_image(batch())
    raw = model.forward_raw(images, model.prepare_targets(batch()))
    assert raw["denoising_groups"] == 3 and raw["max_gt_num_per_image"] == 2
    assert raw["pred_logits"].shape == (2, 10, 5)
    assert raw["denoising_output"]["pred_boxes"].shape == (2, 6, 4)
    assert len(raw["denoising_output"]["aux_outputs"]) == len(raw["aux_outputs"]) == 2


def test_matching_queries_do_not_see_denoising_queries():
    """The attention mask isolates the matching part: its outputs are the same with or without DN queries."""
    torch.manual_seed(0)
    model = tiny_model().train()  # no dropout in the tiny model
    images = model.preprocess_image(batch())
    with torch.no_grad():
        with_dn = model.forward_raw(images, model.prepare_targets(batch()))
        without = model.forward_raw(images, None)
    assert with_dn["denoising_output"] is not None and without["denoising_output"] is None
    assert torch.allclose(with_dn["pred_logits"], without["pred_logits"], atol=1e-5)
    assert torch.allclose(with_dn["pred_boxes"], without["pred_boxes"], atol=1e-6)
    # ... and the mask is what makes this so: with an all-False mask the matching queries see the DN ones
    gen = model.denoising_generator
    size = lambda m: m * gen.denoising_groups + gen.num_queries  # noqa: E731
    gen.generate_query_masks = lambda m, device=None: torch.zeros(size(m), size(m), dtype=torch.bool)
    with torch.no_grad():
        unmasked = model.forward_raw(images, model.prepare_targets(batch()))
    assert not torch.allclose(unmasked["pred_logits"], without["pred_logits"], atol=1e-5)


def test_batch_without_ground_truth_trains_with_zero_dn_losses():
    torch.manual_seed(0)
    model = tiny_model()
    losses = mh.check_training_step(model, batch(empty=True), _keys(2), backward=False)
    assert all(losses[k] == 0 for k in losses if "_dn" in k)


def test_eval_without_instances():
    torch.manual_seed(0)
    model = tiny_model()
    model.select_box_nums_for_evaluation = 7
    out = mh.eval_without_instances(model, batch(with_instances=False))
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
    mh.check_detections(out[0], at_most=7)
    assert raw["pred_logits"].shape == (2, 10, 5) and raw["denoising_output"] is None


def test_state_dict_order_and_shapes():
    model = tiny_model()
    keys = list(model.state_dict())
    i = keys.index("input_proj.bias")
    assert keys[i + 1] == "denoising_generator.label_encoder.weight"
    assert keys[i + 2].startswith("transformer.encoder.layers.0.")
    assert model.state_dict()["denoising_generator.label_encoder.weight"].shape == (6, 31)
    assert model.transformer.decoder.bbox_embed is model.bbox_embed


def test_r50_config_training_step_and_eval():
    model = mh.build_dn_r50(CONFIGS / "models" / "dn_detr_r50.py", DNDETR)
    assert model.position_embedding.temperature == 20
    mh.check_training_step(model, batch(), _keys(5))
    assert model.denoising_generator.label_encoder.weight.grad.abs().sum() > 0
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[1], count=300)


@pytest.mark.parametrize(
    "name,depth,init", [("dn_detr_r50_50ep", 50, mh.R50_INIT), ("dn_detr_r101_50ep", 101, mh.R101_INIT)]
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    mh.check_recipe(cfg, name, depth, init)
    assert cfg.model.freeze_anchor_box_centers is False
