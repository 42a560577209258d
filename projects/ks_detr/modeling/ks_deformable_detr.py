"""KS-Deformable-DETR: Deformable-DETR (Zhu et al. 2021) trained with knowledge-sharing teachers (KS-DETR,
Zhao & Ukita 2023; spec §2.3 step 4, §4.2, §4.4, §5).

Training: a GT foreground token mask is built for every feature level (each resized independently from the
same full-resolution box canvas, levels concatenated in token order); the sMLP fuses it into the input of the
last encoder layer (padding from the transformer's ``mask_flatten``); that layer's triple deformable attention
yields the student memory and two teacher memories, and the *same* decoder (same queries, reference points)
runs on each, as one pass over the three memories stacked along the batch. The heads are applied per pass (with
box refinement, a pass's references are its own), and the detector returns 8 prediction sets:
``aux_outputs[0..5]`` = student decoder layers, ``aux_outputs[6]`` = teacher 1 (share V) final layer,
``pred_logits``/``pred_boxes`` = teacher 2 (share A) final layer; each set is matched independently by the
criterion (24 loss keys; all sets in one batched computation).

Eval (or no ground truth): no mask, no teachers: the model is Deformable-DETR and returns the student's last
layer.
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import torch

from detrex.layers.batched_passes import repeat_batch, student_and_teacher_layers
from detrex.structures import ImageList
from projects.deformable_detr.modeling.deformable_detr import DeformableDETR

from .gt_mask import gt_token_mask_multi_level
from .smlp import KSGT

__all__ = ["KSMultiScaleMixin", "KSDeformableDETR"]


def _smlp_batch_first(x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, *, ksgt: KSGT,
                      fg_mask: torch.Tensor) -> torch.Tensor:
    """sMLP on batch-first tokens: x (B, N, C), padding_mask (B, N), fg_mask (N, B) -> (B, N, C)."""
    return ksgt(x.transpose(0, 1), fg_mask, padding_mask).transpose(0, 1)


class KSMultiScaleMixin:
    """The KS parts shared by the two multi-scale detectors: the ``ksgt`` module and the teacher-token function.

    Call `_install_ksgt` after the baseline ``__init__`` (``ksgt`` is registered last, as in the checkpoints).
    """

    def _install_ksgt(self, ksgt: KSGT) -> None:
        if not isinstance(ksgt, KSGT):
            raise TypeError(f"{type(self).__name__}: ksgt must be a KSGT module, got {type(ksgt).__name__}")
        if not self.aux_loss:
            raise ValueError(f"{type(self).__name__}: aux_loss=False would leave the student decoder layers and "
                             "teacher 1 unsupervised; KS-DETR needs aux_loss=True")
        if not hasattr(self.transformer, "encode_teachers"):
            raise TypeError(f"{type(self).__name__}: transformer {type(self.transformer).__name__} has no "
                            "encode_teachers; use KSDeformableDetrTransformer / KSDNDeformableDetrTransformer")
        self.ksgt = ksgt

    def gt_token_mask(self, images: ImageList, levels, targets: List[Dict]) -> torch.Tensor:
        """(N = sum_l H_l*W_l, B) float {0, 1} foreground mask over the flattened levels, from each target's
        ``boxes_xyxy`` (absolute xyxy pixels of the augmented image) on the padded canvas ``images.tensor``."""
        boxes = [t["boxes_xyxy"] for t in targets]
        image_sizes = [t["image_hw"] for t in targets]
        fg = gt_token_mask_multi_level(
            boxes, tuple(images.tensor.shape[-2:]), levels.level_sizes, rule=self.ksgt.mask_rule,
            image_sizes=image_sizes, pad_fg_pixel=self.ksgt.pad_fg_pixel,
        )
        return fg.to(device=levels.feat_flatten.device, dtype=levels.feat_flatten.dtype)

    def ks_teacher_tokens(self, images: ImageList, levels, targets: List[Dict]) -> Callable[..., torch.Tensor]:
        """``f(x (B, N, C), padding_mask=(B, N)) -> X^t``: the sMLP bound to this batch's GT token mask."""
        fg = self.gt_token_mask(images, levels, targets)
        n = levels.feat_flatten.shape[1]
        if fg.shape != (n, len(targets)):
            raise RuntimeError(f"{type(self).__name__}: GT token mask {tuple(fg.shape)} does not match the "
                               f"{n} flattened tokens of {len(targets)} images")

        def teacher_tokens(x, padding_mask=None):
            return _smlp_batch_first(x, padding_mask, ksgt=self.ksgt, fg_mask=fg)

        return teacher_tokens

    def decode_all(self, memories: List[torch.Tensor], levels, decode_inputs: Dict, init_reference: torch.Tensor):
        """Decode the student memory and each teacher memory with the same inputs, as one decoder pass over the
        batch-stacked memories (``n * B`` entries), and apply the heads once (with box refinement each entry
        refines its own references).

        Returns logits [L + T, B, Q, K] and boxes [L + T, B, Q, 4]: the student's L layers, then the final layer
        of each teacher pass.
        """
        n = len(memories)
        stacked_levels = dataclasses.replace(levels, mask_flatten=repeat_batch(levels.mask_flatten, n, 0),
                                             valid_ratios=repeat_batch(levels.valid_ratios, n, 0))
        inputs = {k: (v if k == "attn_masks" else repeat_batch(v, n, 0)) for k, v in decode_inputs.items()}
        states, references = self.transformer.decode(torch.cat(memories, 0), stacked_levels, **inputs)
        cls, box = self.predict(states, repeat_batch(init_reference, n, 0), references)
        return student_and_teacher_layers(cls, n), student_and_teacher_layers(box, n)


class KSDeformableDETR(KSMultiScaleMixin, DeformableDETR):
    """Deformable-DETR plus the ``ksgt`` module (GT-mask settings + sMLP).

    Args:
        ksgt: a `KSGT` (``ksgt.smlp_module.token_split_conv.linear.0.*``, the last keys of the state dict).
        **kwargs: `DeformableDETR`'s arguments; ``transformer`` must be a `KSDeformableDetrTransformer` with a
            `KSDeformableDetrTransformerEncoder`; ``aux_loss`` must be True.
    """

    def __init__(self, *, ksgt: KSGT, **kwargs):
        super().__init__(**kwargs)
        self._install_ksgt(ksgt)

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Training with ``targets``: the 8 prediction sets described in the module docstring (and
        ``enc_outputs`` from the student memory in two-stage mode). Otherwise exactly `DeformableDETR`."""
        if not self.training or targets is None:
            return super().forward_raw(images, targets)
        feats, masks, poses = self.multi_level_inputs(images)
        levels = self.transformer.flatten_inputs(feats, masks, poses)
        extra = self.transformer_inputs(images, masks, feats, levels, targets)
        memory, teacher_memories = self.transformer.encode_teachers(
            levels, self.ks_teacher_tokens(images, levels, targets), **extra)
        query_embeds = None if self.as_two_stage else self.query_embedding.weight
        q = self.transformer.prepare_queries(memory, levels, query_embeds)
        decode_inputs = {"query": q["query"], "query_pos": q["query_pos"], "reference_points": q["reference_points"]}
        outputs_class, outputs_coord = self.decode_all([memory] + teacher_memories, levels, decode_inputs,
                                                       q["reference_points"])
        output = self.pack_outputs(outputs_class, outputs_coord, aux=True)  # teacher sets live in aux
        if self.as_two_stage:
            output["enc_outputs"] = {"pred_logits": q["enc_outputs_class"],
                                     "pred_boxes": q["enc_outputs_coord_unact"].sigmoid()}
        return output
