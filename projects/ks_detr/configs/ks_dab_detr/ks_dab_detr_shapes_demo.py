# KS-DAB-DETR on the built-in shapes dataset, from random init, on a 2-core CPU in 10-15 minutes:
# the README's main job.
#
#   python tools/train_net.py --config-file projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py
#   python tools/train_net.py --config-file projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py \
#       --eval-only train.init_checkpoint=output/ks_dab_detr_shapes_demo/model_final.pth
#
# The model is the KS-DAB-DETR of ks_dab_detr_r50_50ep_smlp_qkv_triple_attn.py (triple-attention last encoder
# layer, sMLP on the GT token mask, three decoder passes in training, student-only GT-free eval), shrunk to the
# settings of its baseline twin projects/dab_detr/configs/dab_detr_shapes_demo.py (narrow ResNet-18 with
# trainable BN, stride-16 features, 128-wide transformer with 2 encoder + 3 decoder layers, 10 queries); data,
# optimizer, schedule and training settings are the twin's too (see that file for the reasons), so the two
# configs differ only in knowledge sharing (the twin, same conditions: AP 67.3 / AP50 99.2 / AP75 88.3).
#
# Measured (2-core Xeon shared with other jobs, OMP_NUM_THREADS=1, fresh $DETREX_CACHE): 14 min 42 s in all
# (dataset generation 11 s, 2000 iterations at 0.43 s, two evaluations of 4 s), total loss 26.0 -> 2.2-2.5.
# From-scratch training is chaotic, so the final AP depends on the seed and on the CPU's float kernels:
# shapes_val box AP 72.0 +- 1.5 over train.seed=0,1,2 (73.1 / 70.3 / 72.6); the default seed 42 gave 71.0 here
# and 67.0 on another machine of the same kind (README, "Main job"). --eval-only on model_final.pth gives the
# run's AP back. With both cores idle an iteration takes 0.24 s (about 9 minutes in all).
# On a busy machine, OMP_NUM_THREADS=1 avoids the thread oversubscription that can slow 2 threads 10x or more.
from detrex.config.recipes import with_aux_loss_weights

from ....dab_detr.configs.dab_detr_shapes_demo import dataloader, lr_multiplier, optimizer, train
from ....dab_detr.configs.dab_detr_shapes_demo import model as _twin

from .models.ks_dab_detr_r50_smlp_qkv_triple_attn import model

# the twin's sizes, everywhere but the KS parts (class names stay KS: KSDABDETR, KSDabDetrTransformer, ...)
for _key in ("backbone", "in_features", "in_channels", "position_embedding", "embed_dim", "num_queries",
             "num_classes", "select_box_nums_for_evaluation"):
    model[_key] = _twin[_key]
for _part in ("encoder", "decoder"):
    for _key, _value in _twin.transformer[_part].items():
        if _key != "_target_":
            model.transformer[_part][_key] = _value
model.criterion.num_classes = _twin.criterion.num_classes
model.ksgt.embed_dim = model.embed_dim  # the sMLP works on the encoder's tokens

# 3 decoder layers: pred = teacher 2 (share A) final layer, _0.._2 = student layers, _3 = teacher 1 (share V)
# final layer; every set gets the twin's base weights (class 1.0, bbox 5.0, giou 2.0)
model.criterion.weight_dict = with_aux_loss_weights(
    _twin.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers + 1
)

train.output_dir = "./output/ks_dab_detr_shapes_demo"
