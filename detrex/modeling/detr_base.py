"""`DETRBase`: what every DETR-family detector does around its transformer, written once.

Input contract (detectron2/detrex): a list of dicts with ``"image"`` (uint8 or float (3, H, W) tensor in
the model's pixel format, already augmented/resized), optional ``"height"``/``"width"`` (the size to
report detections at, usually the original image size) and, in training, ``"instances"``
(`Instances` with ``gt_boxes`` absolute XYXY in augmented-image pixels and ``gt_classes``).

Output: in training, the criterion's loss dict with the ``criterion.weight_dict`` weights applied; in
eval, ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` at the requested size.

A subclass sets ``self.criterion`` and implements ``forward_raw(images, targets)`` returning
``{"pred_logits": (B, Q, K), "pred_boxes": (B, Q, 4) normalized cxcywh, "aux_outputs": [...]}``.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from detrex.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from detrex.layers.denoising import dn_post_process
from detrex.structures import Boxes, ImageList, Instances

__all__ = ["DETRBase", "detector_postprocess"]

IMAGENET_PIXEL_MEAN = (123.675, 116.280, 103.530)
IMAGENET_PIXEL_STD = (58.395, 57.120, 57.375)


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """Rescale detections from the network input size to (output_height, output_width), clip them to
    that size and drop empty boxes (detectron2 semantics).

    Args:
        results: `Instances` whose ``image_size`` is the network input size and ``pred_boxes`` absolute
            XYXY in that size.
    """
    scale_x = output_width / results.image_size[1]
    scale_y = output_height / results.image_size[0]
    results = Instances((output_height, output_width), **results.get_fields())
    boxes = results.pred_boxes
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    return results[boxes.nonempty()]


def _nearest_source_index(in_size, out_size, device) -> torch.Tensor:
    """(out_size,) int64 source indices of PyTorch's ``nearest`` interpolation (no scale factor given):
    ``min(floor(i * (in / out)), in - 1)`` with the ratio and the product in float32, as its CPU kernel computes
    them. Sizes may be Python ints or traced 0-dim tensors."""
    in_f = torch.as_tensor(in_size, dtype=torch.float32, device=device)
    out_f = torch.as_tensor(out_size, dtype=torch.float32, device=device)
    scale = in_f / out_f
    idx = torch.floor(torch.arange(out_size, device=device).to(torch.float32) * scale).to(torch.int64)
    return torch.minimum(idx, torch.as_tensor(in_size, device=device).to(torch.int64) - 1)


class DETRBase(nn.Module):
    """Base class of DETR-family detectors (image normalization, padding masks, targets, aux outputs,
    top-k inference, post-processing, weighted losses).

    Args:
        pixel_mean, pixel_std: per-channel normalization (0-255 scale), stored as non-persistent buffers
            so they follow ``model.to(device)`` and are not in the state dict.
        select_box_nums_for_evaluation: k of the top-k selection over queries x classes at inference.
        size_divisibility: pad the batch to a multiple of this (0: to the largest image only).
        device: accepted for compatibility with detrex configs and ignored; move the model with
            ``model.to(device)`` (the trainer does this).
    """

    def __init__(
        self,
        pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
        pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
        select_box_nums_for_evaluation: int = 300,
        size_divisibility: int = 0,
        device: Optional[str] = None,
    ):
        super().__init__()
        mean = torch.tensor([float(x) for x in pixel_mean]).view(-1, 1, 1)
        std = torch.tensor([float(x) for x in pixel_std]).view(-1, 1, 1)
        if mean.numel() != std.numel():
            raise ValueError(f"pixel_mean ({mean.numel()} values) and pixel_std ({std.numel()}) differ in length")
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.size_divisibility = size_divisibility

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ inputs
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize each ``x["image"]`` ((C, H, W), any dtype) and pad the batch at the bottom/right with
        0 (after normalization). ``image_sizes`` keeps each unpadded (h, w).

        Inputs are moved with ``non_blocking=True``: from pinned memory (the CUDA training loader pins its
        batches) the copy overlaps earlier GPU work instead of waiting for it."""
        images = []
        for i, x in enumerate(batched_inputs):
            if "image" not in x:
                raise KeyError(f"batched_inputs[{i}] has no 'image' (keys: {sorted(x)}); expected a (C, H, W) tensor")
            img = x["image"].to(self.device, non_blocking=True)
            images.append((img - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, size_divisibility=self.size_divisibility, pad_value=0.0)

    @staticmethod
    def padding_mask(images: ImageList) -> torch.Tensor:
        """(B, H, W) bool, True on padded pixels, from ``images.image_sizes`` (train and eval alike)."""
        return images.padding_mask()

    @staticmethod
    def downsample_mask(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Nearest-neighbour resize of a (B, H, W) bool mask to (B, h, w) bool (detrex convention).

        While tracing (ONNX export) the same source rows/columns are gathered explicitly: PyTorch picks
        ``min(floor(i * float32(H / h)), H - 1)``, and an exported ``Resize`` computes ``i / float32(h / H)``
        instead, which can round to the neighbouring source pixel (e.g. 240 -> 8 columns: 7 / (8 / 240) < 210)
        and flip padding cells."""
        if torch.jit.is_tracing():
            rows = _nearest_source_index(mask.shape[1], size[0], mask.device)
            cols = _nearest_source_index(mask.shape[2], size[1], mask.device)
            return mask.index_select(1, rows).index_select(2, cols)
        return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]

    def prepare_targets(self, batched_inputs: Union[List[Dict], List[Instances]]) -> List[Dict[str, torch.Tensor]]:
        """Ground truth per image, on the model's device, built without reading the device on the host.

        Args:
            batched_inputs: the model inputs (dicts with ``"instances"``) or a list of `Instances`.

        Returns:
            per image: ``labels`` int64 (n,); ``boxes`` (n, 4) normalized cxcywh (by the augmented image
            size); ``boxes_xyxy`` (n, 4) absolute xyxy in augmented-image pixels; ``image_hw`` the augmented,
            unpadded image's (h, w) as Python ints, and ``image_size`` the same as an int64 CPU tensor.
        """
        targets = []
        for i, x in enumerate(batched_inputs):
            inst = x
            if isinstance(x, dict):
                if "instances" not in x:
                    raise KeyError(
                        f"batched_inputs[{i}] has no 'instances': training needs ground truth "
                        "(use a dataset mapper with is_train=True)"
                    )
                inst = x["instances"]
            inst = inst.to(self.device, non_blocking=True)
            h, w = (int(v) for v in inst.image_size)
            boxes_xyxy = inst.gt_boxes.tensor.float()
            # x / w and y / h with Python scalars: no (w, h) tensor to copy to the device
            normalized = torch.stack([boxes_xyxy[:, 0::2] / w, boxes_xyxy[:, 1::2] / h], -1).flatten(1)
            targets.append(
                {
                    "labels": inst.gt_classes.long(),
                    "boxes": box_xyxy_to_cxcywh(normalized),
                    "boxes_xyxy": boxes_xyxy,
                    "image_hw": (h, w),
                    "image_size": torch.tensor([h, w], dtype=torch.int64),
                }
            )
        return targets

    # ----------------------------------------------------------------- outputs
    @staticmethod
    def _set_aux_loss(outputs_class: torch.Tensor, outputs_coord: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """[L, B, Q, K] logits and [L, B, Q, 4] boxes -> dicts for layers 0 .. L-2 (the last layer is the
        main output)."""
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]

    def pack_outputs(
        self, outputs_class: torch.Tensor, outputs_coord: torch.Tensor, aux: Optional[bool] = None,
        num_denoising_queries: int = 0,
    ) -> Dict:
        """[L, B, Q, K] logits and [L, B, Q, 4] boxes -> ``{"pred_logits", "pred_boxes"}`` of the last entry, plus
        ``aux_outputs`` for the earlier ones when ``aux`` (default: ``self.aux_loss``).

        In training, also ``stacked_outputs``: the same sets as one (S, B, Q, ...) pair (S = L, or 1 without aux),
        which the criterion scores in one batched computation. With ``num_denoising_queries`` = G*M, the inputs
        hold DN-DETR's denoising queries first ([L, B, G*M + Q, ...]): the dict keys then show the matching part
        only (``dn_post_process`` gives the denoising part) and ``stacked_outputs`` keeps both.
        """
        aux = self.aux_loss if aux is None else aux
        stacked = None
        if self.training:
            sets = slice(None) if aux else slice(-1, None)
            stacked = {"pred_logits": outputs_class[sets], "pred_boxes": outputs_coord[sets],
                       "num_denoising_queries": num_denoising_queries}
        if num_denoising_queries:
            outputs_class = outputs_class[:, :, num_denoising_queries:]
            outputs_coord = outputs_coord[:, :, num_denoising_queries:]
        output = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if aux:
            output["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        if stacked is not None:
            output["stacked_outputs"] = stacked
        return output

    def pack_dn_outputs(self, outputs_class: torch.Tensor, outputs_coord: torch.Tensor, denoising_groups: int,
                        max_gt_num_per_image: int, aux: Optional[bool] = None) -> Dict:
        """`pack_outputs` for DN-DETR's decoder outputs ([L, B, G*M + Q, ...], the G*M denoising queries first):
        the matching part as `pack_outputs` gives it, plus ``denoising_output`` (see `dn_post_process`; None
        without denoising queries), ``denoising_groups`` (G) and ``max_gt_num_per_image`` (M)."""
        aux = self.aux_loss if aux is None else aux
        _, _, dn_output = dn_post_process(outputs_class, outputs_coord, denoising_groups, max_gt_num_per_image,
                                          aux_loss=aux)
        num_dn = int(denoising_groups) * int(max_gt_num_per_image) if dn_output is not None else 0
        output = self.pack_outputs(outputs_class, outputs_coord, aux=aux, num_denoising_queries=num_dn)
        output.update(denoising_output=dn_output, denoising_groups=denoising_groups,
                      max_gt_num_per_image=max_gt_num_per_image)
        return output

    def select_topk(self, box_cls: torch.Tensor, box_pred: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-k (query, class) pairs of every image, as `inference` and the ONNX exporter
        (`detrex.deploy.export`) select them.

        Args:
            box_cls: (B, Q, K) logits (before sigmoid).
            box_pred: (B, Q, 4) normalized cxcywh boxes.

        Returns:
            ``scores`` (B, k) sigmoid scores in decreasing order, ``labels`` (B, k) int64 class ids and
            ``boxes`` (B, k, 4) the normalized cxcywh box of each pair's query, with
            k = min(``select_box_nums_for_evaluation``, Q * K). Only tensor operations (it traces for export).
        """
        _, q, k = box_cls.shape
        prob = box_cls.sigmoid().flatten(1)  # (B, Q * K), query-major
        topk = min(self.select_box_nums_for_evaluation, int(q) * int(k))
        scores, indexes = torch.topk(prob, topk, dim=1)
        query_idx = torch.div(indexes, k, rounding_mode="floor")
        labels = indexes % k
        boxes = torch.gather(box_pred, 1, query_idx.unsqueeze(-1).expand(-1, -1, 4))
        return scores, labels, boxes

    def inference(
        self, box_cls: torch.Tensor, box_pred: torch.Tensor, image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """Top-k detections per image from the final decoder layer.

        Args:
            box_cls: (B, Q, K) logits (before sigmoid).
            box_pred: (B, Q, 4) normalized cxcywh boxes.
            image_sizes: the network input (h, w) of each image (unpadded).

        Returns:
            per image `Instances(image_size)` with ``pred_boxes`` (absolute XYXY in the input size),
            ``scores`` and ``pred_classes``: the k = ``select_box_nums_for_evaluation`` highest sigmoid
            scores over all (query, class) pairs, in decreasing order.
        """
        if len(box_cls) != len(image_sizes):
            raise ValueError(f"inference: {len(box_cls)} predictions for {len(image_sizes)} images")
        scores, labels, boxes = self.select_topk(box_cls, box_pred)
        results = []
        for scores_i, labels_i, boxes_i, (h, w) in zip(scores, labels, boxes, image_sizes):
            result = Instances((h, w))
            result.pred_boxes = Boxes(box_cxcywh_to_xyxy(boxes_i))
            result.pred_boxes.scale(scale_x=w, scale_y=h)
            result.scores = scores_i
            result.pred_classes = labels_i
            results.append(result)
        return results

    def postprocess(
        self, results: List[Instances], batched_inputs: List[Dict], image_sizes
    ) -> List[Dict[str, Instances]]:
        """Rescale every image's results to its requested ``height``/``width`` (default: input size)."""
        processed = []
        for result, x, (h, w) in zip(results, batched_inputs, image_sizes):
            height = x.get("height", h)
            width = x.get("width", w)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def compute_losses(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """The criterion's losses, each multiplied by its ``criterion.weight_dict`` entry when present.

        With a batched criterion (``weighted_losses``: `SetCriterion` and its subclasses) the result is a
        `LossDict`, whose ``total`` the trainer uses instead of summing the keys one by one."""
        weighted = getattr(self.criterion, "weighted_losses", None)
        if weighted is not None:
            return weighted(outputs, targets)
        loss_dict = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        return {k: (v * weight_dict[k] if k in weight_dict else v) for k, v in loss_dict.items()}

    # ----------------------------------------------------------------- forward
    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw predictions: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalized cxcywh, and
        ``aux_outputs``. ``targets`` is None in eval. Implemented by each detector."""
        raise NotImplementedError

    def forward(self, batched_inputs: List[Dict]):
        """Training: weighted loss dict. Eval: ``[{"instances": Instances}]`` (needs no ground truth)."""
        images = self.preprocess_image(batched_inputs)
        if self.training:
            targets = self.prepare_targets(batched_inputs)
            outputs = self.forward_raw(images, targets)
            return self.compute_losses(outputs, targets)
        outputs = self.forward_raw(images, None)
        results = self.inference(outputs["pred_logits"], outputs["pred_boxes"], images.image_sizes)
        return self.postprocess(results, batched_inputs, images.image_sizes)
