"""DAB-DETR Swin configs: recipe values, and a detector built from the Swin-T config (with a tiny Swin
through command-line style overrides) running eval on an image without annotations."""

from pathlib import Path

import torch

from detrex.config import LazyConfig, instantiate
from detrex.modeling.backbone.swin import SwinTransformer

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects/dab_detr/configs"


def test_swin_configs_hold_the_ks_detr_authors_settings():
    tiny = LazyConfig.load(str(CONFIGS / "dab_detr_swin_tiny_50ep.py"))
    small = LazyConfig.load(str(CONFIGS / "dab_detr_swin_small_50ep.py"))
    for cfg, depths, dpr, weights in [
        (tiny, [2, 2, 6, 2], 0.1, "swin_tiny_patch4_window7_224_22kto1k_finetune.pth"),
        (small, [2, 2, 18, 2], 0.2, "swin_small_patch4_window7_224_22kto1k_finetune.pth"),
    ]:
        bb = cfg.model.backbone
        assert bb._target_ is SwinTransformer
        assert bb.embed_dim == 96 and list(bb.depths) == depths and list(bb.num_heads) == [3, 6, 12, 24]
        assert bb.drop_path_rate == dpr and list(bb.out_indices) == [3]
        assert list(cfg.model.in_features) == ["p3"] and cfg.model.in_channels == 768
        assert cfg.train.init_checkpoint == "output/weights/" + weights
        # the R50 recipe is kept
        assert cfg.train.max_iter == 375000 and cfg.optimizer.lr == 1e-4
        assert cfg.dataloader.evaluator.output_dir == cfg.train.output_dir
    assert tiny.train.output_dir != small.train.output_dir


def test_dab_detr_with_tiny_swin_runs_eval_without_annotations():
    cfg = LazyConfig.load(str(CONFIGS / "dab_detr_swin_tiny_50ep.py"))
    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            "model.backbone.embed_dim=24",
            "model.backbone.depths=[1,2,1,1]",
            "model.backbone.num_heads=[1,2,2,4]",
            "model.in_channels=192",
            "model.num_queries=20",
            "model.select_box_nums_for_evaluation=20",
            "model.transformer.encoder.num_layers=1",
            "model.transformer.decoder.num_layers=2",
        ],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone, SwinTransformer)
    assert model.backbone.output_shape()["p3"].channels == 192
    image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8)
    with torch.no_grad():
        (result,) = model([{"image": image, "height": 140, "width": 200}])
    instances = result["instances"]
    assert instances.image_size == (140, 200)
    assert len(instances) == 20
    assert torch.isfinite(instances.pred_boxes.tensor).all() and torch.isfinite(instances.scores).all()
