"""DN-DETR detector (Li et al. 2022, "DN-DETR: Accelerate DETR Training by Introducing Query DeNoising"),
following detrex's ``projects/dn_detr``: DAB-DETR plus denoising queries in training.

Training: the ground truth, noised in ``denoising_groups`` groups (`detrex.layers.denoising`), is put in
front of the 300 learned anchors; their content queries are label embeddings (``label_encoder``, last
channel an indicator = 1), the matching queries' content is the "no object" embedding (indicator 0). A mask
keeps the groups and the matching queries apart in self-attention. The outputs are split again
(`dn_post_process`); `DNCriterion` supervises both parts. Eval: no denoising queries, no ground truth.
"""

from typing import Dict, List, Optional

import torch

from detrex.layers.denoising import GenerateDNQueries
from detrex.structures import ImageList
from projects.dab_detr.modeling import DABDETR

__all__ = ["DNDETR"]


class DNDETR(DABDETR):
    """DN-DETR.

    Args:
        denoising_groups: number of noised copies of the ground truth (5).
        label_noise_prob: probability of replacing a denoising label (0.2; drawn among the 80 classes and
            "no object", as upstream).
        box_noise_scale: relative box jitter (0.4).
        with_indicator: last channel of the content queries flags denoising (1) vs matching (0) queries.
        **kwargs: `DABDETR`'s arguments. The DN-DETR config sets ``freeze_anchor_box_centers=False``: the
            anchors keep `nn.Embedding`'s N(0, 1) init.

    State dict: `DABDETR`'s plus ``denoising_generator.label_encoder.weight`` [num_classes + 1, C - 1]
    (with indicator), listed right after ``input_proj`` as in detrex checkpoints.
    """

    def __init__(
        self,
        *,
        denoising_groups: int = 5,
        label_noise_prob: float = 0.2,
        box_noise_scale: float = 0.4,
        with_indicator: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        embed_dim = self.class_embed.in_features
        self.denoising_generator = GenerateDNQueries(
            num_queries=self.num_queries,
            num_classes=self.num_classes + 1,  # + "no object"
            label_embed_dim=embed_dim,
            denoising_groups=denoising_groups,
            label_noise_prob=label_noise_prob,
            box_noise_scale=box_noise_scale,
            with_indicator=with_indicator,
        )
        # detrex registers the generator right after input_proj: keep that state-dict order
        order = [n for n in self._modules if n != "denoising_generator"]
        order.insert(order.index("input_proj") + 1, "denoising_generator")
        for name in order:  # re-insert in that order (in place)
            self._modules[name] = self._modules.pop(name)
        self.denoising_groups = denoising_groups
        self.label_noise_prob = label_noise_prob
        self.box_noise_scale = box_noise_scale
        self.with_indicator = with_indicator

    def build_queries(self, targets: Optional[List[Dict]], batch_size: int) -> Dict:
        """Decoder inputs.

        Returns:
            ``target`` (Q', B, C) content queries, ``anchor_box_embed`` (Q', B, 4) anchors before sigmoid,
            ``attn_mask`` (Q', Q') bool or None, ``denoising_groups`` G and ``max_gt_num_per_image`` M, with
            Q' = G*M + Q in training (M = 0, Q' = Q, no mask in eval or without ``targets``).
        """
        gen = self.denoising_generator
        anchors = self.anchor_box_embed.weight
        matching_label = gen.matching_label_queries(batch_size, device=anchors.device, dtype=anchors.dtype)
        matching_box = anchors.unsqueeze(0).expand(batch_size, -1, -1)
        if targets is None:
            return {
                "target": matching_label.transpose(0, 1),
                "anchor_box_embed": matching_box.transpose(0, 1),
                "attn_mask": None,
                "denoising_groups": self.denoising_groups,
                "max_gt_num_per_image": 0,
            }
        label_queries, box_queries, attn_mask, groups, max_gt = gen(
            [t["labels"] for t in targets], [t["boxes"] for t in targets]
        )
        return {
            "target": torch.cat([label_queries.to(matching_label), matching_label], 1).transpose(0, 1),
            "anchor_box_embed": torch.cat([box_queries.to(matching_box), matching_box], 1).transpose(0, 1),
            "attn_mask": attn_mask,
            "denoising_groups": groups,
            "max_gt_num_per_image": max_gt,
        }

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs of the matching queries -- ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4)
        normalized cxcywh, ``aux_outputs`` -- and, in training, ``denoising_output`` (same layout over the
        G*M denoising queries), ``denoising_groups`` and ``max_gt_num_per_image``."""
        features, img_masks, pos_embed = self.image_features(images)
        queries = self.build_queries(targets, features.shape[0])
        extra = self.transformer_inputs(images, img_masks, features, targets)
        hidden_states, reference_boxes = self.transformer(
            features,
            img_masks,
            queries["anchor_box_embed"],
            pos_embed,
            target=queries["target"],
            attn_mask=queries["attn_mask"],
            **extra,
        )
        outputs_class, outputs_coord = self.predict(hidden_states, reference_boxes)
        return self.pack_dn_outputs(outputs_class, outputs_coord, queries["denoising_groups"],
                                    queries["max_gt_num_per_image"])
