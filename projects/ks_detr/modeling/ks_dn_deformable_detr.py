"""KS-DN-Deformable-DETR: DN-Deformable-DETR (Li et al. 2022) trained with knowledge-sharing teachers (KS-DETR,
Zhao & Ukita 2023; spec §4.2, §4.4, §5).

Training: as KS-Deformable-DETR (multi-level GT token mask, sMLP, deformable triple attention in the last
encoder layer), plus DN-DETR's denoising queries. The teacher decoder passes get exactly the student's
decoder inputs -- the same noised denoising queries, anchors and denoising attention mask -- and use their
memory as the cross-attention key and value. Heads are applied per pass (box refinement: each pass refines
its own references). ``dn_post_process`` splits all 8 prediction sets (6 student layers, teacher 1 final,
teacher 2 final), so `DNCriterion` supervises the denoising part of every set too: 24 matching + 24
denoising loss keys.

Eval (or no ground truth): no denoising queries, no mask, no teachers: the model is DN-Deformable-DETR and
returns the student's last layer.
"""
from typing import Dict, List, Optional

from detrex.structures import ImageList
from projects.dn_deformable_detr.modeling.dn_deformable_detr import DNDeformableDETR

from .ks_deformable_detr import KSMultiScaleMixin
from .smlp import KSGT

__all__ = ["KSDNDeformableDETR"]


class KSDNDeformableDETR(KSMultiScaleMixin, DNDeformableDETR):
    """DN-Deformable-DETR plus the ``ksgt`` module (GT-mask settings + sMLP).

    Args:
        ksgt: a `KSGT` (``ksgt.smlp_module.token_split_conv.linear.0.*``, the last keys of the state dict).
        **kwargs: `DNDeformableDETR`'s arguments; ``transformer`` must be a `KSDNDeformableDetrTransformer`
            with a `KSDNDeformableDetrTransformerEncoder`; ``aux_loss`` must be True.
    """

    def __init__(self, *, ksgt: KSGT, **kwargs):
        super().__init__(**kwargs)
        self._install_ksgt(ksgt)

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Training with ``targets``: matching part of the 8 prediction sets (``pred_*`` = teacher 2 final,
        ``aux_outputs[0..5]`` student layers, ``aux_outputs[6]`` teacher 1 final), ``denoising_output`` with the
        same layout over the denoising queries, ``denoising_groups``, ``max_gt_num_per_image``. Otherwise
        exactly `DNDeformableDETR`."""
        if not self.training or targets is None:
            return super().forward_raw(images, targets)
        feats, masks, poses = self.multi_level_inputs(images)
        levels = self.transformer.flatten_inputs(feats, masks, poses)
        extra = self.transformer_inputs(images, masks, feats, levels, targets)
        memory, teacher_memories = self.transformer.encode_teachers(
            levels, self.ks_teacher_tokens(images, levels, targets), **extra)
        queries = self.build_queries(images.tensor.shape[0], targets)  # a traced size when exporting
        q = self.transformer.prepare_queries(memory, levels, queries["label_query"], queries["box_query"])
        decode_inputs = {"query": q["query"], "query_pos": q["query_pos"], "reference_points": q["reference_points"],
                         "attn_masks": [queries["attn_mask"], None]}
        # DNDeformableDetrTransformer.decode passes each memory as both key and value
        outputs_class, outputs_coord = self.decode_all([memory] + teacher_memories, levels, decode_inputs,
                                                       q["reference_points"])
        return self.pack_dn_outputs(outputs_class, outputs_coord, queries["denoising_groups"],
                                    queries["max_gt_num_per_image"], aux=True)  # teacher sets live in aux
