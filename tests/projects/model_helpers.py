"""Shared builders and checks of the detector tests under ``tests/projects/``.

- ``two_image_batch``: a fixed two-image batch (uint8 (3, H, W) RGB images drawn with seed 0, ground truth in
  absolute xyxy pixels) in one of the layouts below, with or without instances.
- ``loss_keys`` / ``weight_dict``: the loss-key sets and criterion weight dicts of a DETR-family detector.
- ``tiny_resnet`` / ``single_scale_parts`` / ``multi_scale_parts`` / ``tiny_detector``: the tiny (8-channel
  ResNet-18, 32-channel transformer) models the tests build by hand; parts are built in a fixed order, so one
  seed gives the same weights.
- ``check_training_step`` / ``eval_without_instances`` / ``check_detections``: the generic "one training step
  gives finite losses with these keys" and "eval without annotations returns Instances at the requested size"
  checks.
- ``check_recipe``: the R50 training recipe every top-level config of the DETR family keeps.
- ``build_dn_r50``: a DN detector from its R50 model config, its denoising settings checked.
"""
import torch
import torch.nn as nn

from detrex.config import LazyConfig, instantiate
from detrex.layers import PositionEmbeddingSine
from detrex.modeling import HungarianMatcher, ResNet
from detrex.modeling.backbone import BasicStem
from detrex.modeling.criterion.dn_criterion import DNCriterion
from detrex.modeling.neck import ChannelMapper
from detrex.structures import Boxes, Instances

R50_INIT = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
R101_INIT = "output/weights/R-101.pkl"

# Two-image layouts: per image ((H, W), boxes in absolute xyxy pixels, classes).
WIDE_FIRST = (  # 64x96 and 80x64: padded to 80x96
    ((64, 96), [[10.0, 12.0, 40.0, 50.0], [50.0, 5.0, 90.0, 30.0]], [1, 3]),
    ((80, 64), [[5.0, 30.0, 60.0, 75.0]], [0]),
)
SMALL = (  # 64x80 and 72x64: padded to 72x80
    ((64, 80), [[10.0, 12.0, 40.0, 50.0], [45.0, 5.0, 78.0, 30.0]], [1, 3]),
    ((72, 64), [[5.0, 30.0, 60.0, 70.0]], [0]),
)
KS_SINGLE_SCALE = (  # 64x96 with two boxes, 80x64 with one
    ((64, 96), [[4.0, 6.0, 60.0, 50.0], [70.0, 10.0, 94.0, 40.0]], [1, 3]),
    ((80, 64), [[10.0, 20.0, 60.0, 78.0]], [2]),
)
ONE_BOX_EACH = (  # the KS single-scale sizes, one box of class 1 per image
    ((64, 96), [[4.0, 6.0, 60.0, 50.0]], [1]),
    ((80, 64), [[10.0, 20.0, 60.0, 78.0]], [1]),
)

BASE_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
DN_WEIGHTS = {"loss_class_dn": 1.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0}


def two_image_batch(layout, with_instances=True, scale=1, empty=False):
    """Detector inputs for the two images of ``layout``, fixed by seed 0.

    scale: the requested output size ("height", "width") is ``scale`` times the image size.
    empty: give each image an Instances with no boxes.
    """
    g = torch.Generator().manual_seed(0)
    items = []
    for (h, w), boxes, classes in layout:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "height": scale * h, "width": scale * w}
        if with_instances:
            if empty:
                boxes, classes = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.as_tensor(boxes, dtype=torch.float32)),
                                       gt_classes=torch.as_tensor(classes, dtype=torch.long))
        items.append(x)
    return items


def loss_keys(num_aux, denoising=False, enc=False):
    """Loss keys for the final set and ``num_aux`` aux sets (``_0`` ...), the ``_dn`` parts with ``denoising``,
    the two-stage ``_enc`` set with ``enc``."""
    suffixes = [""] + [f"_{i}" for i in range(num_aux)] + (["_enc"] if enc else [])
    parts = ("", "_dn") if denoising else ("",)
    return {f"loss_{k}{d}{s}" for k in ("class", "bbox", "giou") for d in parts for s in suffixes}


def weight_dict(base, num_aux, enc=False):
    """``base`` weights repeated for ``num_aux`` aux sets (and the ``_enc`` set with ``enc``)."""
    out = dict(base)
    for s in [f"_{i}" for i in range(num_aux)] + (["_enc"] if enc else []):
        out.update({k + s: v for k, v in base.items()})
    return out


def tiny_resnet(out_features):
    """ResNet-18 layout with 8 stem/res2 channels (res3/res4/res5: 16/32/64 channels), stem frozen."""
    return ResNet(
        stem=BasicStem(3, 8, norm="FrozenBN"),
        stages=ResNet.make_default_stages(18, norm="FrozenBN", stem_out_channels=8, res2_out_channels=8),
        out_features=list(out_features),
        freeze_at=1,
    )


def single_scale_parts(temperature):
    """Backbone (res5, 64 channels) and sine position embedding of the tiny single-scale detectors."""
    return dict(backbone=tiny_resnet(["res5"]), in_features=["res5"], in_channels=64,
                position_embedding=PositionEmbeddingSine(16, temperature=temperature, normalize=True))


def multi_scale_parts():
    """Backbone (res3-res5), position embedding and 4-level 32-channel neck of the tiny Deformable detectors."""
    return dict(
        backbone=tiny_resnet(["res3", "res4", "res5"]),
        position_embedding=PositionEmbeddingSine(16, temperature=10000, normalize=True, offset=-0.5),
        neck=ChannelMapper({"res3": 16, "res4": 32, "res5": 64}, ["res3", "res4", "res5"], 32, kernel_size=1,
                           norm_layer=nn.GroupNorm(8, 32), num_outs=4),
    )


def tiny_detector(model_cls, parts, transformer, criterion_cls, weights, num_classes=5, num_queries=10, **kwargs):
    """``model_cls`` with 32-channel embeddings, the given parts and transformer and a Hungarian-matched
    ``criterion_cls`` (cost class 2, bbox 5, giou 2) with ``weights``."""
    return model_cls(**parts, transformer=transformer, embed_dim=32, num_classes=num_classes,
                     num_queries=num_queries,
                     criterion=criterion_cls(num_classes, HungarianMatcher(2.0, 5.0, 2.0), weights), **kwargs)


def check_training_step(model, items, keys, backward=True):
    """One training-mode forward: the losses have exactly ``keys`` and are finite; then (``backward``)
    their sum is backpropagated. Returns the loss dict."""
    model.train()
    losses = model(items)
    assert set(losses) == keys
    assert all(torch.isfinite(v) for v in losses.values())
    if backward:
        sum(losses.values()).backward()
    return losses


def check_grads(model, names):
    """Every named parameter got a nonzero gradient."""
    params = dict(model.named_parameters())
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def eval_without_instances(model, items):
    """Eval-mode forward on inputs without annotations: one result per input; returns their Instances."""
    model.eval()
    with torch.no_grad():
        out = model(items)
    assert len(out) == len(items)
    return [o["instances"] for o in out]


def check_detections(inst, size=None, count=None, at_most=None, inside=False):
    """Detections of one image: at the requested ``size`` (H, W), ``count`` of them (or ``at_most``), with
    the detectron2 fields; ``inside``: absolute xyxy boxes end within the requested size."""
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    if size is not None:
        assert inst.image_size == size
    if count is not None:
        assert len(inst) == count
    if at_most is not None:
        assert len(inst) <= at_most
    if inside:
        h, w = inst.image_size
        assert (inst.pred_boxes.tensor[:, 2] <= w).all() and (inst.pred_boxes.tensor[:, 3] <= h).all()


def check_recipe(cfg, name, depth, init, max_iter=375000, output_name=None):
    """The DETR-family R50/R101 recipe: backbone depth and init weights, ``max_iter``, grad clipping at 0.1,
    no AMP, AdamW lr 1e-4 / weight decay 1e-4 with the backbone lr factor, output under ./output/<name>."""
    from detrex.solver import backbone_lr_factor

    assert cfg.model.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == init
    assert cfg.train.max_iter == max_iter
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert not cfg.train.amp.enabled
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
    assert cfg.train.output_dir == f"./output/{output_name or name}" == cfg.dataloader.evaluator.output_dir


def build_dn_r50(config_path, model_cls):
    """The DN model of a DN R50 model config (seed 0), after checking the denoising settings the config and
    the model share: DN losses weighted like the matching ones for 6 decoder layers (class 1, bbox 5), a
    DNCriterion, 5 denoising groups with label noise 0.2, box noise 0.4 and an indicator channel, 81 label
    embeddings of 255 channels."""
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(config_path))
    wd = cfg.model.criterion.weight_dict
    assert wd["loss_class_dn_4"] == 1.0 and wd["loss_bbox_dn"] == 5.0 and "loss_giou_dn_5" not in wd
    model = instantiate(cfg.model)
    assert isinstance(model, model_cls) and isinstance(model.criterion, DNCriterion)
    gen = model.denoising_generator
    assert gen.label_encoder.weight.shape == (81, 255)
    assert (gen.denoising_groups, gen.label_noise_prob, gen.box_noise_scale, gen.with_indicator) == (5, 0.2, 0.4, True)
    return model


def encode_then_decode_twice(transformer, x, mask, queries, pos_embed, **kwargs):
    """Body of the extension-point tests' single-scale transformer subclasses: record the extra inputs on
    ``type(transformer).seen``, encode with them, then decode the memory and twice the memory (as a KS
    subclass decodes its teachers' memories). Returns ``(hs, ref), (hs2, ref2)``."""
    type(transformer).seen = dict(kwargs)
    x, mask, queries, pos = transformer.flatten_inputs(x, mask, queries, pos_embed)
    memory = transformer.encode(x, mask, pos, **kwargs)
    return transformer.decode(memory, mask, pos, queries), transformer.decode(memory * 2, mask, pos, queries)
