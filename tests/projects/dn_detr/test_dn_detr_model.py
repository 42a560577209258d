"""DN-DETR: training step with denoising losses and eval (tiny model and R50 from its config), the
denoising attention mask at work, state-dict layout, configs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.layers import PositionEmbeddingSine
from detrex.modeling import HungarianMatcher, ResNet
from detrex.modeling.backbone import BasicStem
from detrex.modeling.criterion.dn_criterion import DNCriterion
from detrex.structures import Boxes, Instances
from projects.dab_detr.modeling import DabDetrTransformerDecoder, DabDetrTransformerEncoder
from projects.dn_detr.modeling import DNDETR, DNDetrTransformer

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "dn_detr" / "configs"
BASE_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
DN_WEIGHTS = {"loss_class_dn": 1.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0}


def tiny_model(num_classes=5, num_queries=10, dec_layers=3, groups=3):
    weight_dict = dict(BASE_WEIGHTS, **DN_WEIGHTS)
    base = dict(weight_dict)
    for i in range(dec_layers - 1):
        weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return DNDETR(
        backbone=ResNet(
            stem=BasicStem(3, 8, norm="FrozenBN"),
            stages=ResNet.make_default_stages(18, norm="FrozenBN", stem_out_channels=8, res2_out_channels=8),
            out_features=["res5"],
            freeze_at=1,
        ),
        in_features=["res5"],
        in_channels=64,
        position_embedding=PositionEmbeddingSine(16, temperature=20, normalize=True),
        transformer=DNDetrTransformer(
            encoder=DabDetrTransformerEncoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=2),
            decoder=DabDetrTransformerDecoder(32, 2, feedforward_dim=64, activation=nn.PReLU(), num_layers=dec_layers),
        ),
        embed_dim=32,
        num_classes=num_classes,
        num_queries=num_queries,
        criterion=DNCriterion(num_classes, HungarianMatcher(2.0, 5.0, 2.0), weight_dict),
        freeze_anchor_box_centers=False,
        denoising_groups=groups,
    )


def batch(with_instances=True, empty=False):
    g = torch.Generator().manual_seed(0)
    specs = [
        ((64, 80), [[10.0, 12.0, 40.0, 50.0], [45.0, 5.0, 78.0, 30.0]], [1, 3]),
        ((72, 64), [[5.0, 30.0, 60.0, 70.0]], [0]),
    ]
    items = []
    for (h, w), boxes, labels in specs:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": h, "width": w}
        if with_instances:
            if empty:
                boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
            x["instances"] = Instances(
                (h, w), gt_boxes=Boxes(torch.as_tensor(boxes)), gt_classes=torch.as_tensor(labels)
            )
        items.append(x)
    return items


def _keys(num_aux):
    suffixes = [""] + [f"_{i}" for i in range(num_aux)]
    return {f"loss_{k}{d}{s}" for k in ("class", "bbox", "giou") for d in ("", "_dn") for s in suffixes}


def test_training_step_has_denoising_losses_and_gradients():
    torch.manual_seed(0)
    model = tiny_model().train()
    losses = model(batch())
    assert set(losses) == _keys(2)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox_dn"] > 0 and losses["loss_class_dn_1"] > 0
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("denoising_generator.label_encoder.weight", "anchor_box_embed.weight", "class_embed.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


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
    model = tiny_model().train()
    losses = model(batch(empty=True))
    assert set(losses) == _keys(2)
    assert all(losses[k] == 0 for k in losses if "_dn" in k)
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_without_instances():
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.select_box_nums_for_evaluation = 7
    with torch.no_grad():
        out = model(batch(with_instances=False))
        raw = model.forward_raw(model.preprocess_image(batch(with_instances=False)))
    assert len(out) == 2 and len(out[0]["instances"]) <= 7
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
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(CONFIGS / "models" / "dn_detr_r50.py"))
    wd = cfg.model.criterion.weight_dict
    assert wd["loss_class_dn_4"] == 1.0 and wd["loss_bbox_dn"] == 5.0 and "loss_giou_dn_5" not in wd
    model = instantiate(cfg.model)
    assert isinstance(model, DNDETR) and isinstance(model.criterion, DNCriterion)
    gen = model.denoising_generator
    assert gen.label_encoder.weight.shape == (81, 255)
    assert (gen.denoising_groups, gen.label_noise_prob, gen.box_noise_scale, gen.with_indicator) == (5, 0.2, 0.4, True)
    assert model.position_embedding.temperature == 20
    model.train()
    losses = model(batch())
    assert set(losses) == _keys(5)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.denoising_generator.label_encoder.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(batch(with_instances=False))
    assert len(out) == 2 and len(out[1]["instances"]) == 300


@pytest.mark.parametrize(
    "name,depth,init",
    [
        ("dn_detr_r50_50ep", 50, "detectron2://ImageNetPretrained/torchvision/R-50.pkl"),
        ("dn_detr_r101_50ep", 101, "output/weights/R-101.pkl"),
    ],
)
def test_top_level_configs_hold_the_recipe(name, depth, init):
    from detrex.solver import backbone_lr_factor

    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert cfg.model.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == init
    assert cfg.train.max_iter == 375000 and cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
    assert cfg.train.output_dir == f"./output/{name}" == cfg.dataloader.evaluator.output_dir
    assert cfg.model.freeze_anchor_box_centers is False
