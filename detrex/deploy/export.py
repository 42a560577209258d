"""ONNX export of the eval-mode DETR-family detectors (DAB, Conditional, DN, Deformable incl. two-stage, DN-Deformable
and their KS-DETR variants, whose eval graph is the student's).

The exported graph (`ExportableDetector`) does, in one ONNX model, what ``model.eval()(batched_inputs)`` does after the
test mapper's resize:

inputs
    ``images``: (B, 3, H, W) ``uint8`` (default) or ``float32``, 0-255 scale, channels in the config's input format
    (``dataloader.test.mapper.img_format``, RGB for every config in the tree), already resized as the test mapper
    does and padded at the bottom/right to (H, W) (any pad value: padded pixels are zeroed after normalization, as
    ``ImageList.from_tensors`` pads).

    ``image_sizes``: (B, 2) ``int64`` unpadded ``(h, w)`` of each image inside (H, W); ``(H, W)`` for an unpadded
    batch. It gives the padding mask (True outside ``[0, h) x [0, w)``) and the box scale.

outputs (what `DETRBase.inference` gives, k = ``select_box_nums_for_evaluation`` capped at Q * K)
    ``boxes``: (B, k, 4) ``float32`` absolute ``(x0, y0, x1, y1)`` in pixels of the (unpadded) input image;
    ``scores``: (B, k) ``float32`` sigmoid scores, decreasing; ``classes``: (B, k) ``int64`` class ids.

Rescaling to the original image size (`detector_postprocess`) is left to the caller (`OnnxPredictor`).

The TorchScript exporter is used (``torch.onnx.export(..., dynamo=False)``); while it traces, the multi-scale
deformable attention runs its pure-PyTorch ``grid_sample`` path whatever op is built
(`detrex.layers.multi_scale_deform_attn`), and feature-map sizes stay traced values, so a ``dynamic`` model takes any
batch size and image size.

Limitation: two-stage Deformable-DETR keeps ``min(two_stage_num_proposals, tokens at the export size)`` proposals; an
image with fewer encoder tokens than that number fails in onnxruntime (not an issue at COCO sizes: 300 proposals,
thousands of tokens).
"""
import json
import logging
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from detrex.layers.box_ops import box_cxcywh_to_xyxy
from detrex.structures import ImageList

__all__ = ["ExportableDetector", "export_onnx", "deploy_metadata", "example_inputs", "INPUT_NAMES", "OUTPUT_NAMES",
           "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "classes")
DEFAULT_OPSET = 17


class _MaskedImageList(ImageList):
    """An `ImageList` whose padding mask is a given (B, H, W) bool tensor (traced from ``image_sizes``) instead of
    one built from Python ints. ``image_sizes`` holds placeholders (the full padded size) for code that only
    counts images."""

    def __init__(self, tensor: torch.Tensor, mask: torch.Tensor):
        b, _, h, w = (int(v) for v in tensor.shape)
        super().__init__(tensor, [(h, w)] * b)
        self._mask = mask

    def padding_mask(self) -> torch.Tensor:
        return self._mask


class ExportableDetector(nn.Module):
    """The eval-mode detector as a tensor-in / tensor-out module (what is exported).

    Args:
        model: a `DETRBase` detector (its eval graph: ``forward_raw(images, None)`` then ``select_topk``). Put in
            eval mode here; a KS model then runs its student only.

    ``forward(images, image_sizes)``: see the module docstring for layouts; returns ``(boxes, scores, classes)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name in ("forward_raw", "select_topk", "pixel_mean", "pixel_std"):
            if not hasattr(model, name):
                raise TypeError(f"ExportableDetector: {type(model).__name__} has no {name!r}; expected a DETRBase "
                                "detector (detrex.modeling.detr_base)")
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: eval, so the detector stays in eval

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
        """
        Args:
            images: (B, 3, H, W) uint8 or float, 0-255, the model's channel order, padded bottom/right.
            image_sizes: (B, 2) int64 unpadded (h, w) of each image.

        Returns:
            boxes (B, k, 4) absolute xyxy in input pixels, scores (B, k), classes (B, k) int64.
        """
        model = self.model
        x = (images.to(torch.float32) - model.pixel_mean) / model.pixel_std
        h_idx = torch.arange(x.shape[2], device=x.device)
        w_idx = torch.arange(x.shape[3], device=x.device)
        sizes = image_sizes.to(device=x.device, dtype=torch.int64)
        mask = (h_idx[None, :, None] >= sizes[:, 0, None, None]) | (w_idx[None, None, :] >= sizes[:, 1, None, None])
        x = x.masked_fill(mask[:, None], 0.0)  # as ImageList.from_tensors pads: 0 after normalization
        outputs = model.forward_raw(_MaskedImageList(x, mask), None)
        scores, classes, boxes = model.select_topk(outputs["pred_logits"], outputs["pred_boxes"])
        sizes_f = sizes.to(boxes.dtype)
        scale = torch.stack([sizes_f[:, 1], sizes_f[:, 0], sizes_f[:, 1], sizes_f[:, 0]], -1)  # (B, 4): w, h, w, h
        boxes = box_cxcywh_to_xyxy(boxes) * scale[:, None, :]
        return boxes, scores, classes


def example_inputs(batch: int, height: int, width: int, dtype: str = "uint8", seed: int = 0,
                   image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, 3, H, W) (``dtype`` "uint8" or "float32", values 0-255 integers, seeded) and their
    ``image_sizes`` (B, 2) int64 (default: every image unpadded, (H, W))."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)
    if dtype == "float32":
        images = images.float()
    elif dtype != "uint8":
        raise ValueError(f"input dtype must be 'uint8' or 'float32', got {dtype!r}")
    if image_sizes is None:
        image_sizes = [(height, width)] * batch
    return images, torch.tensor([list(s) for s in image_sizes], dtype=torch.int64)


def _resize_settings(cfg) -> Dict:
    """``min_size``/``max_size`` of the config's test-time ``ResizeShortestEdge`` (detectron2's 800/1333 when the
    config has no test mapper)."""
    from detrex.config import try_get_key

    augs = try_get_key(cfg, "dataloader.test.mapper.augmentation") if cfg is not None else None
    if augs is None:
        return {"min_size": 800, "max_size": 1333}
    augs = list(augs)
    if len(augs) != 1:
        raise ValueError(f"the test mapper has {len(augs)} augmentations; the deployed preprocessing supports exactly "
                         "one ResizeShortestEdge")
    aug = augs[0]
    target = aug.get("_target_") if hasattr(aug, "get") else type(aug)
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if not str(name).endswith("ResizeShortestEdge"):
        raise ValueError(f"the test mapper's augmentation is {name}; the deployed preprocessing supports "
                         "ResizeShortestEdge only")
    short = aug.get("short_edge_length") if hasattr(aug, "get") else aug.short_edge_length
    if not isinstance(short, (int, float)):
        short = list(short)
        if len(set(short)) != 1:
            raise ValueError(f"test-time short_edge_length {short} is not one size")
        short = short[0]
    max_size = aug.get("max_size", None) if hasattr(aug, "get") else aug.max_size
    return {"min_size": int(short), "max_size": int(max_size) if max_size is not None else 0}


def _class_names(cfg) -> Optional[List[str]]:
    """The test dataset's class names when known without generating or downloading anything."""
    from detrex.config import try_get_key

    name = try_get_key(cfg, "dataloader.test.dataset.names") if cfg is not None else None
    if name is None:
        return None
    if not isinstance(name, str):
        name = list(name)[0]
    try:
        from detrex.data import MetadataCatalog
        from detrex.data.datasets.coco import ensure_thing_classes

        md = MetadataCatalog.get(name)
        if md.get("thing_classes") is None and not os.path.isfile(md.get("json_file", "") or ""):
            return None
        names = ensure_thing_classes(md)
        return list(names) if names is not None else None
    except (OSError, ValueError, KeyError) as e:
        logger.warning(f"no class names for dataset {name!r}: {e}")
        return None


def deploy_metadata(model: nn.Module, cfg=None) -> Dict[str, object]:
    """What `OnnxPredictor` needs besides the graph, stored in the ONNX file's ``metadata_props``: the test-time
    resize (``min_size``, ``max_size``; ``max_size`` 0 = no cap), ``input_format`` (channel order of ``images``),
    ``pixel_mean``/``pixel_std`` (0-255; informative, the graph normalizes), ``size_divisibility`` (pad the batch
    to a multiple of it), ``class_names`` (None when unknown) and ``num_classes``."""
    from detrex.config import try_get_key

    meta = _resize_settings(cfg)
    meta["input_format"] = (try_get_key(cfg, "dataloader.test.mapper.img_format", default="RGB") if cfg is not None
                            else "RGB") or "RGB"
    meta["pixel_mean"] = [float(v) for v in model.pixel_mean.flatten()]
    meta["pixel_std"] = [float(v) for v in model.pixel_std.flatten()]
    meta["size_divisibility"] = int(getattr(model, "size_divisibility", 0) or 0)
    meta["class_names"] = _class_names(cfg)
    meta["num_classes"] = int(getattr(model, "num_classes", 0) or 0)
    return meta


def export_onnx(model: nn.Module, path: str, height: int, width: int, batch: int = 1, dynamic: bool = False,
                opset: int = DEFAULT_OPSET, input_dtype: str = "uint8", metadata: Optional[Dict] = None,
                cfg=None) -> str:
    """Export ``model`` (a `DETRBase` detector) to ``path``.

    Args:
        height, width, batch: the export input size (fixed unless ``dynamic``).
        dynamic: batch, height and width of ``images`` (and the batch of every other tensor) are dynamic axes.
        opset: ONNX opset (default 17; grid_sample needs >= 16).
        input_dtype: "uint8" or "float32" ``images``.
        metadata: extra ``metadata_props`` (JSON-encoded values); the defaults come from `deploy_metadata` (with
            ``cfg``), plus ``input_height``/``input_width``/``batch`` (-1 when dynamic), ``input_dtype``, ``dynamic``.

    Returns ``path``. Needs the ``onnx`` package (``pip install -e ".[export]"``).
    """
    import onnx

    if opset < 16:
        raise ValueError(f"opset {opset} < 16: GridSample (deformable attention) needs opset 16 or later")
    was_training = model.training
    wrapper = ExportableDetector(model)
    images, sizes = example_inputs(batch, height, width, input_dtype)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"},
                        "boxes": {0: "batch"}, "scores": {0: "batch"}, "classes": {0: "batch"}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        # tracer warnings about Python values (class count, number of levels) fixed in the graph: expected
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated (not removed)
        with torch.no_grad():
            torch.onnx.export(wrapper, (images, sizes), path, dynamo=False, input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True)
    model.train(was_training)
    meta = deploy_metadata(model, cfg)
    meta.update(input_height=-1 if dynamic else height, input_width=-1 if dynamic else width,
                batch=-1 if dynamic else batch, input_dtype=input_dtype, dynamic=bool(dynamic),
                topk=int(getattr(model, "select_box_nums_for_evaluation", 0)))
    meta.update(metadata or {})
    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), json.dumps(value)
    onnx.save(proto, path)
    return path
