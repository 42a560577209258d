"""Key renaming and matching for pre-trained backbone weights.

* :func:`convert_c2_detectron_names`: Caffe2/Detectron1 (MSRA) blob names -> detectron2 names
  (backbone subset), e.g. ``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``,
  ``res_conv1_bn_s`` -> ``stem.conv1.norm.weight``.
* :func:`convert_torchvision_resnet_names`: torchvision ResNet state dict -> detectron2 names, as
  detectron2's ``tools/convert-torchvision-to-d2.py`` does (``layer1`` -> ``res2``,
  ``bn1`` -> ``conv1.norm``, ``downsample.0`` -> ``shortcut``, stem keys get ``stem.``).
* :func:`align_and_update_state_dicts`: suffix matching of checkpoint keys to model keys
  (``res2.0.conv1.weight`` fills ``backbone.res2.0.conv1.weight``).
"""
import logging
import re
from collections import defaultdict
from typing import Dict, List

import numpy as np
import torch

__all__ = [
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
    "convert_torchvision_resnet_names",
    "is_torchvision_resnet_state_dict",
    "align_and_update_state_dicts",
]

logger = logging.getLogger(__name__)


def convert_basic_c2_names(original_keys: List[str]) -> List[str]:
    """Apply the basic Caffe2 -> detectron2 renames (backbone) to a list of names."""
    layer_keys = list(original_keys)
    layer_keys = [k.replace("_", ".") for k in layer_keys]
    layer_keys = [re.sub("\\.b$", ".bias", k) for k in layer_keys]
    layer_keys = [re.sub("\\.w$", ".weight", k) for k in layer_keys]
    # batch norm: scale, bias, running mean, running inverse variance
    layer_keys = [re.sub("bn\\.s$", "norm.weight", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.bias$", "norm.bias", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.rm", "norm.running_mean", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.running.mean$", "norm.running_mean", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.riv$", "norm.running_var", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.running.var$", "norm.running_var", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.gamma$", "norm.weight", k) for k in layer_keys]
    layer_keys = [re.sub("bn\\.beta$", "norm.bias", k) for k in layer_keys]
    layer_keys = [re.sub("gn\\.s$", "norm.weight", k) for k in layer_keys]
    layer_keys = [re.sub("gn\\.bias$", "norm.bias", k) for k in layer_keys]
    # stem
    layer_keys = [re.sub("^res\\.conv1\\.norm\\.", "conv1.norm.", k) for k in layer_keys]
    layer_keys = [re.sub("^conv1\\.", "stem.conv1.", k) for k in layer_keys]
    # blocks
    layer_keys = [k.replace(".branch1.", ".shortcut.") for k in layer_keys]
    layer_keys = [k.replace(".branch2a.", ".conv1.") for k in layer_keys]
    layer_keys = [k.replace(".branch2b.", ".conv2.") for k in layer_keys]
    layer_keys = [k.replace(".branch2c.", ".conv3.") for k in layer_keys]
    # DensePose substitutions
    layer_keys = [re.sub("^body.conv.fcn", "body_conv_fcn", k) for k in layer_keys]
    return layer_keys


def convert_c2_detectron_names(weights: Dict[str, object]):
    """Rename a Caffe2/Detectron1 blob dict to detectron2 names.

    Returns:
        (renamed dict, {new name: original name}) - the mapping is used for log messages.
    """
    logger.info("Renaming Caffe2 weights ......")
    original_keys = sorted(weights.keys())
    layer_keys = convert_basic_c2_names(original_keys)
    assert len(set(layer_keys)) == len(layer_keys), "Caffe2 renaming produced duplicate names"
    new_weights = {}
    new_keys_to_original_keys = {}
    for orig, renamed in zip(original_keys, layer_keys):
        new_keys_to_original_keys[renamed] = orig
        new_weights[renamed] = weights[orig]
    return new_weights, new_keys_to_original_keys


_TV_TOP = re.compile(r"^(conv1|bn1|fc|layer[1-4])\.")


def is_torchvision_resnet_state_dict(state_dict: Dict[str, object]) -> bool:
    """True for a raw torchvision ResNet state dict (``conv1.weight``, ``layer1.0...``)."""
    keys = list(state_dict.keys())
    return (
        len(keys) > 0
        and "conv1.weight" in state_dict
        and any(k.startswith("layer1.0.") for k in keys)
        and all(_TV_TOP.match(k) for k in keys)
    )


def convert_torchvision_resnet_names(state_dict: Dict[str, object]) -> Dict[str, object]:
    """Rename a torchvision ResNet state dict to detectron2 ResNet names.

    ``conv1.weight`` -> ``stem.conv1.weight``, ``bn1.*`` -> ``stem.conv1.norm.*``,
    ``fc.*`` -> ``stem.fc.*`` (kept for parity with detectron2's converter; unmatched),
    ``layer{1..4}`` -> ``res{2..5}``, ``bn{1,2,3}`` -> ``conv{1,2,3}.norm``,
    ``downsample.0`` -> ``shortcut``, ``downsample.1`` -> ``shortcut.norm``.
    ``num_batches_tracked`` buffers are dropped (FrozenBN has none).
    """
    out = {}
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        old_k = k
        if "layer" not in k:
            k = "stem." + k
        for t in [1, 2, 3, 4]:
            k = k.replace("layer{}".format(t), "res{}".format(t + 1))
        for t in [1, 2, 3]:
            k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
        k = k.replace("downsample.0", "shortcut")
        k = k.replace("downsample.1", "shortcut.norm")
        logger.debug("{} -> {}".format(old_k, k))
        out[k] = v
    return out


def _longest_common_prefix(names: List[str]) -> str:
    names = [n.split(".") for n in names]
    m1, m2 = min(names), max(names)
    ret = []
    for a, b in zip(m1, m2):
        if a != b:
            break
        ret.append(a)
    return ".".join(ret) + "." if ret else ""


def align_and_update_state_dicts(model_state_dict: Dict[str, torch.Tensor],
                                 ckpt_state_dict: Dict[str, object],
                                 c2_conversion: bool = False) -> Dict[str, object]:
    """Map checkpoint keys onto model keys by dot-suffix matching.

    For each model key, the candidates are checkpoint keys equal to it or equal to a dot-suffix
    of it (``res2.0.conv1.weight`` for ``backbone.res2.0.conv1.weight``); the longest candidate
    wins. A candidate whose shape differs from the model's is skipped with a warning. A
    checkpoint key matched by two model keys raises ``ValueError`` (ambiguous). Unmatched
    checkpoint keys are kept under their names (reported later as unexpected).

    Returns:
        a new state dict keyed by model names (plus the unmatched checkpoint keys).
    """
    model_keys = sorted(model_state_dict.keys())
    original_keys = {x: x for x in ckpt_state_dict.keys()}
    if c2_conversion:
        ckpt_state_dict, original_keys = convert_c2_detectron_names(ckpt_state_dict)
    ckpt_keys = sorted(ckpt_state_dict.keys())

    def match(a, b):
        return a == b or a.endswith("." + b)

    # (num_model_keys, num_ckpt_keys) matrix of candidate lengths; 0 = no match
    match_matrix = [len(j) if match(i, j) else 0 for i in model_keys for j in ckpt_keys]
    match_matrix = torch.as_tensor(match_matrix).view(len(model_keys), len(ckpt_keys))
    if len(ckpt_keys) == 0 or len(model_keys) == 0:
        return dict(ckpt_state_dict)
    max_match_size, idxs = match_matrix.max(1)
    idxs[max_match_size == 0] = -1

    matched_keys = {}  # ckpt key -> model key
    result_state_dict = {}
    for idx_model, idx_ckpt in enumerate(idxs.tolist()):
        if idx_ckpt == -1:
            continue
        key_model = model_keys[idx_model]
        key_ckpt = ckpt_keys[idx_ckpt]
        value_ckpt = ckpt_state_dict[key_ckpt]
        if isinstance(value_ckpt, np.ndarray):
            value_ckpt = torch.from_numpy(np.ascontiguousarray(value_ckpt))
        shape_in_model = model_state_dict[key_model].shape
        if shape_in_model != tuple(value_ckpt.shape):
            logger.warning(
                "Shape of {} in checkpoint is {}, while shape of {} in model is {}.".format(
                    key_ckpt, tuple(value_ckpt.shape), key_model, tuple(shape_in_model)
                )
            )
            logger.warning(
                "{} will not be loaded. Please double check and see if this is desired.".format(
                    key_ckpt
                )
            )
            continue
        assert key_model not in result_state_dict
        if key_ckpt in matched_keys:
            logger.error(
                "Ambiguity found for {} in checkpoint! It matches at least two keys in the "
                "model ({} and {}).".format(key_ckpt, key_model, matched_keys[key_ckpt])
            )
            raise ValueError(
                f"Cannot match one checkpoint key ({key_ckpt!r}) to multiple keys in the model "
                f"({matched_keys[key_ckpt]!r} and {key_model!r})."
            )
        result_state_dict[key_model] = value_ckpt
        matched_keys[key_ckpt] = key_model

    # grouped summary: model prefix <- checkpoint prefix, count
    matched_model_keys = sorted(matched_keys.values())
    if len(matched_model_keys):
        groups = defaultdict(list)
        for ck, mk in matched_keys.items():
            prefix_model = mk[: len(mk) - len(ck)] if mk.endswith(ck) else ""
            groups[prefix_model].append(ck)
        lines = []
        for prefix_model, cks in sorted(groups.items()):
            names = [original_keys[k] for k in cks]
            common = _longest_common_prefix(names) if len(names) > 1 else names[0]
            lines.append(f"  {prefix_model or '<root>'}* <- {common}* ({len(cks)} tensors)")
        logger.info(
            f"Matched {len(matched_model_keys)} of {len(model_keys)} model keys from the "
            "checkpoint (model prefix <- checkpoint prefix):\n" + "\n".join(lines)
        )
    unmatched_ckpt_keys = [k for k in ckpt_keys if k not in matched_keys]
    for k in unmatched_ckpt_keys:
        result_state_dict[original_keys[k]] = ckpt_state_dict[k]
    return result_state_dict
