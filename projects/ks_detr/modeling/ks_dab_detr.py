"""KS-DAB-DETR: DAB-DETR trained with knowledge-sharing teachers (KS-DETR, Zhao & Ukita 2023).

Training: the GT token mask (from ``targets[i]["boxes_xyxy"]``) and the sMLP give the teachers' tokens; the
transformer returns 6 student decoder layers + teacher 1's and teacher 2's final layers, and the criterion
matches each of the 8 sets independently (``pred_logits``/``pred_boxes`` = teacher 2, ``aux_outputs[0..5]`` =
student layers, ``aux_outputs[6]`` = teacher 1; 24 loss keys). Eval: no mask, no teachers, no ground
truth: the model is DAB-DETR and returns the student's last layer.
"""
import functools
from typing import Dict, List, Optional

import torch

from detrex.structures import ImageList
from projects.dab_detr.modeling import DABDETR

from .smlp import KSGT

__all__ = ["KSDABDETR"]


class KSDABDETR(DABDETR):
    """DAB-DETR plus the ``ksgt`` module (GT-mask settings + sMLP).

    Args:
        ksgt: a `KSGT` (``ksgt.smlp_module.token_split_conv.linear.0.*`` in the state dict).
        **kwargs: `DABDETR`'s arguments; ``transformer`` must be a `KSDabDetrTransformer` with a
            `KSDabDetrTransformerEncoder`.
    """

    def __init__(self, *, ksgt: KSGT, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ksgt, KSGT):
            raise TypeError(f"KSDABDETR: ksgt must be a KSGT module, got {type(ksgt).__name__}.")
        self.ksgt = ksgt

    def transformer_inputs(self, images: ImageList, img_masks: torch.Tensor, features: torch.Tensor,
                           targets: Optional[List[Dict]]) -> Dict:
        """In training, ``{"ks_teacher_tokens": sMLP bound to this batch's (N, B) GT token mask}``; else ``{}``."""
        if not self.training or targets is None:
            return {}
        boxes = [t["boxes_xyxy"] for t in targets]
        padded_size = tuple(images.tensor.shape[-2:])
        image_sizes = [t["image_hw"] for t in targets]
        fg = self.ksgt.token_mask(boxes, padded_size, tuple(features.shape[-2:]), image_sizes)
        fg = fg.to(device=features.device, dtype=features.dtype)
        return {"ks_teacher_tokens": functools.partial(self.ksgt, fg_mask=fg)}
