"""A small inference API: LazyConfig + checkpoint -> boxes (in the spirit of detectron2's ``DefaultPredictor``).

    from demo.predictor import DefaultPredictor, load_config

    cfg = load_config("projects/ks_detr/configs/...py", ["train.init_checkpoint=output/model_final.pth"])
    predictor = DefaultPredictor(cfg)                 # eval mode: a KS model runs its student only
    out = predictor(image_rgb)                         # (H, W, 3) uint8 RGB numpy array
    out["instances"].pred_boxes, .scores, .pred_classes  # absolute XYXY in the input image's pixels

The test-time resize is the config's ``dataloader.test.mapper.augmentation`` (the same as evaluation), else
detectron2's default (short side 800, long side at most 1333). Class names come from the metadata of the
config's test dataset (``dataloader.test.dataset.names``), read from its COCO json when not loaded yet.

Also used by the tools (``tools/visualize_attention.py``, ``tools/analyze_model.py``) to load configs and models
the same way, with clear errors for missing files.
"""
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # `projects.<name>` modules import from a source checkout
    sys.path.insert(0, _REPO_ROOT)

from detrex.config import LazyConfig, instantiate, try_get_key  # noqa: E402

__all__ = ["USER_ERRORS", "UserInputError", "load_config", "default_device", "build_model", "test_augmentations", "dataset_metadata",
           "DefaultPredictor", "OnnxDemoPredictor", "VisualizationDemo"]

logger = logging.getLogger("detrex.demo")


class UserInputError(Exception):
    """A problem with the command line (missing file, unknown key ...): printed without a traceback."""


def _user_errors():
    from detrex.config import ConfigKeyError, OverrideError
    from detrex.data.detection_utils import BadImageError

    return (UserInputError, FileNotFoundError, IsADirectoryError, BadImageError, ConfigKeyError, OverrideError)


#: exceptions the command-line tools report as one ``error:`` line instead of a traceback
USER_ERRORS = _user_errors()


def load_config(config_file: str, opts: Optional[Sequence[str]] = None):
    """``LazyConfig.load(config_file)`` then ``LazyConfig.apply_overrides(cfg, opts)`` (``key=value`` strings)."""
    if not config_file:
        raise UserInputError("No config file given: pass --config-file path/to/config.py")
    if not os.path.isfile(config_file):
        raise UserInputError(f"Config file not found: {config_file!r} (absolute: {os.path.abspath(config_file)})")
    cfg = LazyConfig.load(config_file)
    opts = [o for o in (opts or []) if o != "--"]
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise UserInputError(f"Config overrides must look like key=value; got {bad}")
    return LazyConfig.apply_overrides(cfg, opts)


def default_device(requested: Optional[str] = None) -> str:
    """``requested`` if given (CUDA falls back to CPU with a warning when unavailable), else cuda if present."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"device {requested!r} requested but CUDA is not available: using cpu")
            return "cpu"
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(cfg, checkpoint: Optional[str] = None, device: str = "cpu", eval_mode: bool = True):
    """Instantiate ``cfg.model`` on ``device`` and load ``checkpoint`` (default ``cfg.train.init_checkpoint``).

    An empty checkpoint leaves the random initialisation (a warning says so). The model is returned in eval
    mode unless ``eval_mode=False``.
    """
    if try_get_key(cfg, "model") is None:
        raise UserInputError("The config has no `model` entry; is this a model config?")
    if isinstance(try_get_key(cfg, "model.device"), str):
        cfg.model.device = device
    model = instantiate(cfg.model)
    model.to(device)
    ckpt = checkpoint if checkpoint is not None else try_get_key(cfg, "train.init_checkpoint", default="")
    if ckpt:
        from detrex.checkpoint import DetectionCheckpointer

        if "://" not in ckpt and not os.path.isfile(ckpt):
            raise UserInputError(f"Checkpoint not found: {ckpt!r} (absolute: {os.path.abspath(ckpt)}); set "
                                 "train.init_checkpoint=path/to/model_final.pth")
        DetectionCheckpointer(model).load(ckpt)
    else:
        logger.warning("No checkpoint given (train.init_checkpoint is empty): the model has random weights.")
    model.train(not eval_mode)
    return model


def test_augmentations(cfg) -> List:
    """The test mapper's augmentation objects, or ``[ResizeShortestEdge(800, 1333)]`` when the config has none."""
    augs = try_get_key(cfg, "dataloader.test.mapper.augmentation")
    if augs is not None:
        return list(instantiate(augs))
    from detrex.data.transforms import ResizeShortestEdge

    return [ResizeShortestEdge(short_edge_length=800, max_size=1333)]


def dataset_metadata(cfg, dataset_name: Optional[str] = None):
    """Metadata of ``dataset_name`` or of the config's test dataset, with ``thing_classes`` read from the
    dataset's COCO json when the metadata lacks them (a registered dataset that was not loaded); None when
    there is no dataset. A json that cannot be read leaves the names out, with a warning (boxes are then
    labelled "class <id>")."""
    from detrex.data import MetadataCatalog, ensure_thing_classes

    name = dataset_name or try_get_key(cfg, "dataloader.test.dataset.names")
    if name is None:
        return None
    if not isinstance(name, str):
        name = list(name)[0]
    metadata = MetadataCatalog.get(name)
    try:
        ensure_thing_classes(metadata)
    except (OSError, ValueError, KeyError) as e:
        logger.warning(f"No class names for dataset {name!r}: {e}")
    return metadata


class DefaultPredictor:
    """Run a detector on single images.

    Args:
        cfg: a LazyConfig with ``model`` (and, optionally, ``dataloader.test`` for the resize and class names).
        checkpoint: weights file; default ``cfg.train.init_checkpoint``.
        device: default cuda when available, else cpu.
        input_format: channel order of the arrays given to ``__call__`` ("RGB" or "BGR").

    ``__call__(image)`` takes an (H, W, 3) uint8 array and returns ``{"instances": Instances}`` with
    ``pred_boxes`` (absolute XYXY in the input image's pixels), ``scores`` and ``pred_classes``.
    """

    def __init__(self, cfg, checkpoint: Optional[str] = None, device: Optional[str] = None,
                 input_format: str = "RGB"):
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"DefaultPredictor: input_format must be 'RGB' or 'BGR', got {input_format!r}")
        self.cfg = cfg
        self.device = default_device(device)
        self.model = build_model(cfg, checkpoint, self.device)
        self.augmentations = test_augmentations(cfg)
        self.input_format = input_format
        self.model_format = try_get_key(cfg, "dataloader.test.mapper.img_format", default="RGB") or "RGB"
        self.metadata = dataset_metadata(cfg)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Dict:
        from detrex.data.transforms import apply_transform_gens

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"DefaultPredictor: expected an (H, W, 3) uint8 array, got {getattr(image, 'shape', image)}")
        if self.input_format != self.model_format:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized, _ = apply_transform_gens(self.augmentations, np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


class OnnxDemoPredictor:
    """`DefaultPredictor`'s interface on an exported ``.onnx`` (``tools/export_onnx.py``), run by
    `detrex.deploy.OnnxPredictor` (onnxruntime; no checkpoint needed).

    The test-time resize comes from the config (``dataloader.test.mapper.augmentation``, a `ResizeShortestEdge`), as
    for `DefaultPredictor`; a different resize stored in the file is reported with a warning and the config's is used.
    Class names: the config's test dataset, else the names stored in the file.

    ``__call__(image)`` takes an (H, W, 3) uint8 array (``input_format``) and returns ``{"instances": Instances}``
    (CPU tensors: ``pred_boxes`` absolute XYXY in the image's pixels, ``scores``, ``pred_classes``).
    """

    def __init__(self, cfg, onnx_path: str, input_format: str = "RGB"):
        if not os.path.isfile(onnx_path):
            raise UserInputError(f"ONNX file not found: {onnx_path!r} (absolute: {os.path.abspath(onnx_path)})")
        try:
            from detrex.deploy import OnnxPredictor
            self.onnx = OnnxPredictor(onnx_path, input_format=input_format)
        except ImportError as e:
            raise UserInputError(f"--onnx needs onnxruntime: pip install -e \".[export]\" ({e})") from e
        from detrex.data.transforms import ResizeShortestEdge

        augs = test_augmentations(cfg)
        if len(augs) != 1 or not isinstance(augs[0], ResizeShortestEdge) or len(set(augs[0].short_edge_length)) != 1:
            raise UserInputError("--onnx: the config's test mapper must resize with one ResizeShortestEdge size")
        short, max_size = augs[0].short_edge_length[0], augs[0].max_size
        max_size = 0 if max_size >= sys.maxsize else int(max_size)
        if (short, max_size) != (self.onnx.min_size, self.onnx.max_size):
            warnings.warn(f"{onnx_path} was exported with test resize {self.onnx.min_size}/{self.onnx.max_size}; "
                          f"using the config's {short}/{max_size}")
        self.onnx.min_size, self.onnx.max_size = int(short), max_size
        self.cfg = cfg
        self.metadata = dataset_metadata(cfg)
        if self.metadata is None and self.onnx.class_names:
            from types import SimpleNamespace

            self.metadata = SimpleNamespace(thing_classes=list(self.onnx.class_names))

    def __call__(self, image: np.ndarray) -> Dict:
        from detrex.structures import Boxes, Instances

        out = self.onnx(image)
        inst = Instances(tuple(image.shape[:2]))
        inst.pred_boxes = Boxes(torch.from_numpy(out["boxes"]))
        inst.scores = torch.from_numpy(out["scores"])
        inst.pred_classes = torch.from_numpy(out["classes"])
        return {"instances": inst}


class VisualizationDemo:
    """``run_on_image(image_rgb) -> (predictions, vis_image)``: a predictor plus drawing."""

    def __init__(self, predictor: DefaultPredictor, confidence_threshold: float = 0.5):
        self.predictor = predictor
        self.confidence_threshold = float(confidence_threshold)

    def run_on_image(self, image_rgb: np.ndarray):
        from detrex.utils.visualizer import Visualizer, auto_scale

        predictions = self.predictor(image_rgb)
        instances = predictions["instances"].to("cpu")
        vis = Visualizer(image_rgb, self.predictor.metadata, scale=auto_scale(*image_rgb.shape[:2]))
        out = vis.draw_instance_predictions(instances, score_threshold=self.confidence_threshold)
        return predictions, out.get_image()
