"""Tiny variants of every detector class for the export tests: the model config of each (the shapes demo where the
tree has one, else the R50 config) with an 8-channel ResNet-18 (FrozenBN), 2 encoder and 2 decoder layers, FFN width
64, 10 queries, 5 classes and the top-20 (query, class) pairs; the heads are randomised (seeded) so that scores and
boxes differ between queries. Built on CPU from seed 0; nothing is downloaded or generated.
"""
import os

import torch

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from detrex.layers import ShapeSpec
from detrex.modeling.backbone import BasicStem, ResNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: detector class -> (config file, multi-scale?)
CONFIGS = {
    "dab": ("projects/dab_detr/configs/dab_detr_shapes_demo.py", False),
    "ks_dab": ("projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py", False),
    "conditional": ("projects/conditional_detr/configs/conditional_detr_r50_50ep.py", False),
    "dn_detr": ("projects/dn_detr/configs/dn_detr_r50_50ep.py", False),
    "deformable": ("projects/deformable_detr/configs/deformable_detr_r50_50ep.py", True),
    "deformable_two_stage": ("projects/deformable_detr/configs/deformable_detr_two_stage_r50_50ep.py", True),
    "ks_deformable": ("projects/ks_detr/configs/ks_deformable_detr/ks_deformable_detr_shapes_demo.py", True),
    "dn_deformable": ("projects/dn_deformable_detr/configs/dn_deformable_detr_r50_12ep.py", True),
}

NUM_CLASSES = 5
TOPK = 20


def config_path(name: str) -> str:
    return os.path.join(ROOT, CONFIGS[name][0])


def tiny_config(name: str):
    """The full LazyConfig of ``name`` with its model made tiny (see the module docstring)."""
    path, multi_scale = CONFIGS[name]
    cfg = LazyConfig.load(os.path.join(ROOT, path))
    model = cfg.model
    channels = {"res3": 16, "res4": 32, "res5": 64}  # of the tiny ResNet-18
    if multi_scale:  # the last min(3, L) stages feed the neck (the shapes demos use 2 levels: res4, res5)
        levels = model.transformer.num_feature_levels
        features = ["res3", "res4", "res5"][-min(3, levels):]
    else:
        features = ["res5"]
    model.backbone = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=8, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=18, stem_out_channels=8, res2_out_channels=8, norm="FrozenBN"),
        out_features=features,
        freeze_at=1,
    )
    if multi_scale:
        model.neck.input_shapes = {k: L(ShapeSpec)(channels=channels[k]) for k in features}
        model.neck.in_features = features
        model.neck.num_outs = levels
        if "two_stage_num_proposals" in model.transformer:
            # fewer than the encoder tokens at every test size (the cap is fixed at export; see detrex.deploy.export)
            model.transformer.two_stage_num_proposals = 10
    else:
        model.in_features = ["res5"]
        model.in_channels = 64
    for part in (model.transformer.encoder, model.transformer.decoder):
        part.num_layers = 2
        part.feedforward_dim = 64
    model.num_queries = 10
    model.num_classes = NUM_CLASSES
    model.criterion.num_classes = NUM_CLASSES
    model.select_box_nums_for_evaluation = TOPK
    return cfg


def randomize_heads(model: torch.nn.Module, seed: int = 1) -> None:
    """Seeded random class and box heads (the configs' init gives every query the same score and box: ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "class_embed" in name or "bbox_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("bias") else 0.1))


def tiny_model(name: str):
    """(model in eval mode, its config) for ``name`` in `CONFIGS`."""
    cfg = tiny_config(name)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    randomize_heads(model)
    return model.eval(), cfg
