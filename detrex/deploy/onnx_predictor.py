"""`OnnxPredictor`: run an exported detector (``tools/export_onnx.py``) with onnxruntime on single images.

Needs numpy, onnxruntime and Pillow only: this module never imports torch (checked by the tests in a subprocess),
so a deployment environment can do without it.

Preprocessing repeats the config's test mapper, read from the ONNX file's ``metadata_props``
(`detrex.deploy.export.deploy_metadata`): channel order (``input_format``), ``ResizeShortestEdge`` (short side
``min_size``, long side at most ``max_size``, ``int(x + 0.5)`` rounding, Pillow bilinear on uint8 as
``detrex.data.transforms.ResizeTransform``), then padding at the bottom/right (to ``size_divisibility``, or to the
fixed size of a model exported without ``--dynamic``); the graph normalizes and zeroes the padding itself.
Postprocessing is detectron2's ``detector_postprocess``: boxes scaled from the resized to the original size, clipped
to it, empty boxes dropped.
"""
import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["OnnxPredictor", "read_metadata", "resized_shape"]


def read_metadata(session_or_path) -> Dict[str, object]:
    """The ``metadata_props`` of an exported model (values JSON-decoded), from a path or an
    ``onnxruntime.InferenceSession``."""
    if isinstance(session_or_path, str):
        import onnxruntime as ort

        session_or_path = ort.InferenceSession(session_or_path, providers=["CPUExecutionProvider"])
    raw = session_or_path.get_modelmeta().custom_metadata_map
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: (new_h, new_w) with the short side ``short_edge`` and the long side at
    most ``max_size`` (0: no cap), each rounded as ``int(x + 0.5)``."""
    size = float(short_edge)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max_size and max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class OnnxPredictor:
    """Detections of one image from an exported ``.onnx``.

    Args:
        path: the file written by ``tools/export_onnx.py`` (its metadata gives the preprocessing).
        input_format: channel order of the arrays passed to ``__call__`` ("RGB" or "BGR").
        providers: onnxruntime execution providers (default CPU).
        session_options: an ``onnxruntime.SessionOptions`` (e.g. thread counts).

    ``__call__(image)``: ``image`` (H, W, 3) uint8 -> ``{"boxes": (n, 4) float32 absolute (x0, y0, x1, y1) in the
    image's pixels, "scores": (n,) float32 decreasing, "classes": (n,) int64}``; n <= k (empty boxes dropped).
    ``class_names`` lists the names when the export knew them.
    """

    def __init__(self, path: str, input_format: str = "RGB", providers: Optional[Sequence[str]] = None,
                 session_options=None):
        import onnxruntime as ort

        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"OnnxPredictor: input_format must be 'RGB' or 'BGR', got {input_format!r}")
        self.session = ort.InferenceSession(path, sess_options=session_options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.metadata = read_metadata(self.session)
        meta = self.metadata
        missing = [k for k in ("min_size", "max_size", "input_format") if k not in meta]
        if missing:
            raise ValueError(f"OnnxPredictor: {path} has no {missing} in its metadata; export it with "
                             "tools/export_onnx.py")
        self.input_format = input_format
        self.model_format = str(meta["input_format"])
        self.min_size, self.max_size = int(meta["min_size"]), int(meta["max_size"])
        self.size_divisibility = int(meta.get("size_divisibility", 0) or 0)
        self.class_names: Optional[List[str]] = meta.get("class_names")
        inp = {i.name: i for i in self.session.get_inputs()}
        if "images" not in inp or "image_sizes" not in inp:
            raise ValueError(f"OnnxPredictor: {path} lacks the 'images'/'image_sizes' inputs of an exported detector")
        shape = inp["images"].shape  # [B, 3, H, W]; strings for dynamic axes
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_size = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.input_dtype = np.uint8 if inp["images"].type == "tensor(uint8)" else np.float32

    # ------------------------------------------------------------------ steps
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 in ``input_format`` -> (h, w, 3) uint8 resized, in the model's channel order."""
        from PIL import Image

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"OnnxPredictor: expected an (H, W, 3) uint8 array, got {getattr(image, 'shape', image)}")
        if image.dtype != np.uint8:
            raise ValueError(f"OnnxPredictor: expected uint8 pixels, got {image.dtype}")
        if self.input_format != self.model_format:
            image = image[:, :, ::-1]
        h, w = image.shape[:2]
        if self.min_size <= 0:
            return np.ascontiguousarray(image)
        newh, neww = resized_shape(h, w, self.min_size, self.max_size)
        pil = Image.fromarray(np.ascontiguousarray(image)).resize((neww, newh), Image.BILINEAR)
        return np.asarray(pil)

    def padded_size(self, h: int, w: int) -> Tuple[int, int]:
        """The graph input size for a resized (h, w) image: the fixed export size, or (h, w) rounded up to
        ``size_divisibility``."""
        if self.fixed_size is not None:
            fh, fw = self.fixed_size
            if h > fh or w > fw:
                raise ValueError(f"OnnxPredictor: the resized image is {h}x{w} but the model was exported for "
                                 f"{fh}x{fw} inputs; export with --dynamic or a larger --size")
            return fh, fw
        d = self.size_divisibility
        if d > 1:
            return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)
        return h, w

    def run(self, resized: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One resized (h, w, 3) image through the graph -> boxes (k, 4) absolute xyxy at (h, w), scores (k,),
        classes (k,)."""
        h, w = resized.shape[:2]
        ph, pw = self.padded_size(h, w)
        batch = self.fixed_batch or 1
        images = np.zeros((batch, 3, ph, pw), dtype=self.input_dtype)
        images[:, :, :h, :w] = resized.transpose(2, 0, 1)
        sizes = np.tile(np.array([[h, w]], dtype=np.int64), (batch, 1))
        boxes, scores, classes = self.session.run(None, {"images": images, "image_sizes": sizes})
        return boxes[0], scores[0], classes[0]

    @staticmethod
    def postprocess(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, input_hw: Tuple[int, int],
                    output_hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
        """``detector_postprocess``: boxes from the input size to ``output_hw`` (scale, clip), empty ones dropped."""
        (ih, iw), (oh, ow) = input_hw, output_hw
        boxes = boxes.astype(np.float32, copy=True)
        boxes[:, 0::2] *= np.float32(ow / iw)
        boxes[:, 1::2] *= np.float32(oh / ih)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, ow)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, oh)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        return {"boxes": boxes[keep], "scores": scores[keep].astype(np.float32),
                "classes": classes[keep].astype(np.int64)}

    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        resized = self.preprocess(image)
        boxes, scores, classes = self.run(resized)
        return self.postprocess(boxes, scores, classes, resized.shape[:2], image.shape[:2])
