"""Checkpointing: save/resume and loading of pre-trained weights in detectron2/torchvision formats."""
from .c2_model_loading import (
    align_and_update_state_dicts,
    convert_c2_detectron_names,
    convert_torchvision_resnet_names,
)
from .detection_checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    DetectionCheckpointer,
    load_torch_file,
)

__all__ = [
    "DetectionCheckpointer",
    "CheckpointError",
    "CheckpointMismatchError",
    "load_torch_file",
    "align_and_update_state_dicts",
    "convert_c2_detectron_names",
    "convert_torchvision_resnet_names",
]
