# DAB-DETR with a Swin-T backbone (detrex `projects/dab_detr/configs/models/dab_detr_swin_tiny.py`,
# out_indices as the KS-DETR authors' `ks_dab_detr_swin_tiny.py`): only the stride-32 stage is output.
from detrex.config import LazyCall as L
from detrex.modeling.backbone.swin import SwinTransformer

from .dab_detr_r50 import model

model.backbone = L(SwinTransformer)(
    embed_dim=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    drop_path_rate=0.1,
    out_indices=(3,),  # "p3": 768 channels, stride 32; owns the LayerNorm `norm3`
)
model.in_features = ["p3"]
model.in_channels = 768
