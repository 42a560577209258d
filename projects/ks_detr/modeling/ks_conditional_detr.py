"""KS-Conditional-DETR: Conditional-DETR trained with knowledge-sharing teachers (KS-DETR, Zhao & Ukita 2023).

Training: the GT token mask (from ``targets[i]["boxes_xyxy"]``) and the sMLP give the teachers' tokens; the
transformer returns 6 student decoder layers + teacher 1's and teacher 2's final layers, all with the same
reference points, and the criterion matches each of the 8 sets independently (``pred_logits``/``pred_boxes``
= teacher 2, ``aux_outputs[0..5]`` = student layers, ``aux_outputs[6]`` = teacher 1; 24 loss keys, class
weight 2.0 as Conditional-DETR). Eval: no mask, no teachers, no ground truth: the model is Conditional-DETR
and returns the student's last layer.
"""
from projects.conditional_detr.modeling import ConditionalDETR

from .ks_dab_detr import KSDABDETR
from .smlp import KSGT

__all__ = ["KSConditionalDETR"]


class KSConditionalDETR(ConditionalDETR):
    """Conditional-DETR plus the ``ksgt`` module (GT-mask settings + sMLP).

    Args:
        ksgt: a `KSGT` (``ksgt.smlp_module.token_split_conv.linear.0.*`` in the state dict, after all
            baseline keys as in the authors' checkpoints).
        **kwargs: `ConditionalDETR`'s arguments; ``transformer`` must be a `KSConditionalDetrTransformer`
            with a `KSConditionalDetrTransformerEncoder`.
    """

    def __init__(self, *, ksgt: KSGT, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ksgt, KSGT):
            raise TypeError(f"KSConditionalDETR: ksgt must be a KSGT module, got {type(ksgt).__name__}.")
        self.ksgt = ksgt

    # the same hook as KS-DAB-DETR: in training {"ks_teacher_tokens": sMLP bound to the (N, B) GT token mask}
    transformer_inputs = KSDABDETR.transformer_inputs
