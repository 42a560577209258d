"""KS-DN-DETR: DN-DETR trained with knowledge-sharing teachers (KS-DETR, Zhao & Ukita 2023).

Training: as KS-DAB-DETR, plus DN-DETR's denoising queries. The teacher decoder passes get the same noised
denoising queries, anchors and self-attention mask as the student's, and ``dn_post_process`` splits all 8
prediction sets (6 student layers, teacher 1, teacher 2), so `DNCriterion` supervises the denoising part of
every set too: 24 matching + 24 denoising loss keys. Eval: no denoising queries, no mask, no teachers, no
ground truth: the model is DN-DETR and returns the student's last layer.
"""
from projects.dn_detr.modeling import DNDETR

from .ks_dab_detr import KSDABDETR
from .smlp import KSGT

__all__ = ["KSDNDETR"]


class KSDNDETR(DNDETR):
    """DN-DETR plus the ``ksgt`` module (GT-mask settings + sMLP).

    Args:
        ksgt: a `KSGT` (``ksgt.smlp_module.token_split_conv.linear.0.*``, the last keys of the state dict as
            in the authors' checkpoints).
        **kwargs: `DNDETR`'s arguments; ``transformer`` must be a `KSDNDetrTransformer` with a
            `KSDNDetrTransformerEncoder`.
    """

    def __init__(self, *, ksgt: KSGT, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ksgt, KSGT):
            raise TypeError(f"KSDNDETR: ksgt must be a KSGT module, got {type(ksgt).__name__}.")
        self.ksgt = ksgt

    # the same hook as KS-DAB-DETR: in training {"ks_teacher_tokens": sMLP bound to the (N, B) GT token mask};
    # DNDETR.forward_raw passes it to the transformer next to the denoising queries and mask
    transformer_inputs = KSDABDETR.transformer_inputs
