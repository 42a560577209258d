# A tiny, randomly initialised KS-DAB-DETR on the built-in shapes dataset, for CPU-fast tests of the demo and
# the tools (demo/demo.py, tools/visualize_*.py, tools/analyze_model.py). Not meant to be trained.
from detrex.config import get_config

from ....projects.ks_detr.configs.ks_dab_detr.models.ks_dab_detr_r50_smlp_qkv_triple_attn import model

C = 32  # embed dim
model.backbone.stem.out_channels = 16
model.backbone.stages.depth = 18
model.backbone.stages.stem_out_channels = 16
model.backbone.stages.res2_out_channels = 16
model.in_channels = 128  # res5 of the narrow ResNet-18
model.embed_dim = C
model.position_embedding.num_pos_feats = C // 2
for part in (model.transformer.encoder, model.transformer.decoder):
    part.embed_dim = C
    part.num_heads = 4
    part.feedforward_dim = 64
    part.num_layers = 2
model.ksgt.embed_dim = C
model.num_classes = 3
model.criterion.num_classes = 3
model.num_queries = 12
model.select_box_nums_for_evaluation = 20
model.device = "cpu"

dataloader = get_config("common/data/shapes_detr.py").dataloader
train = get_config("common/train.py").train
train.device = "cpu"
train.output_dir = "./output/tiny_ks_dab_detr_shapes"
