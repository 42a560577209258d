"""Parity with the KS-DETR authors' implementation on the released KS-Deformable-DETR-R50 key layout.

The fixture (tests/fixtures/parity, see its README) holds the key list of the authors' KS-Deformable-DETR-R50
checkpoint, a deterministic weight generator, two images and what the authors' model computed on them in eval
mode (student branch). A KS checkpoint becomes a baseline Deformable-DETR one by dropping the teacher-only
weights (method spec §9.2): ``ksgt.*`` and the last encoder layer's ``attention_weights_teacher`` /
``value_proj_teacher``. The student path -- which the fixture's outputs come from -- is then exactly this model.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrex.config import LazyConfig, instantiate

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "parity"
TEACHER_PREFIXES = (
    "ksgt.",
    "transformer.encoder.layers.5.attentions.0.attention_weights_teacher.",
    "transformer.encoder.layers.5.attentions.0.value_proj_teacher.",
)


def _weights_module():
    spec = importlib.util.spec_from_file_location("parity_weights", FIXTURES / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ks_to_baseline(state_dict):
    """Drop KS-DETR's teacher-only weights from a KS-Deformable-DETR state dict."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TEACHER_PREFIXES)}


def _load_inputs():
    inputs = []
    for name in ("0.png", "1.png"):
        array = np.asarray(Image.open(FIXTURES / "inputs_a" / name).convert("RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # uint8 CHW, RGB
        inputs.append({"image": image, "height": image.shape[1], "width": image.shape[2]})
    return inputs


@pytest.fixture(scope="module")
def parity_model():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(REPO / "projects/deformable_detr/configs/models/deformable_detr_r50.py"))
    model = instantiate(cfg.model)
    weights = _weights_module()
    ks_state = weights.make_state_dict(weights.load_keys(FIXTURES / "ks_deformable_detr_r50.keys.json"))
    assert len(ks_state) == 567
    model.load_state_dict(ks_to_baseline(ks_state), strict=True)
    return model.eval()


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    entries = _weights_module().load_keys(FIXTURES / "ks_deformable_detr_r50.keys.json")
    expected = [e["key"] for e in entries if not e["key"].startswith(TEACHER_PREFIXES)]
    state = parity_model.state_dict()
    assert list(state) == expected
    assert len(state) == 561
    assert sum(p.numel() for p in parity_model.parameters()) == 40_066_838
    # one shared head registered six times, as in the checkpoint's "canonical" column
    shared = {e["key"]: e["canonical"] for e in entries if e["key"].startswith("class_embed.")}
    assert set(shared.values()) == {"class_embed.0.weight", "class_embed.0.bias"}
    assert all(m is parity_model.class_embed[0] for m in parity_model.class_embed)


def test_raw_outputs_match_the_authors_model(parity_model):
    reference = torch.load(FIXTURES / "ks_deformable_detr_r50.a.eval.pt", weights_only=True)
    inputs = _load_inputs()
    captured = {}
    hook = parity_model.backbone.register_forward_hook(lambda m, args, out: captured.update(out))
    try:
        with torch.no_grad():
            images = parity_model.preprocess_image(inputs)
            raw = parity_model.forward_raw(images)
    finally:
        hook.remove()
    assert tuple(images.tensor.shape[-2:]) == (320, 416)  # image 1 (288x352) is padded
    results = parity_model.inference(raw["pred_logits"], raw["pred_boxes"], images.image_sizes)
    detections = parity_model.postprocess(results, inputs, images.image_sizes)
    # measured on CPU/float32: logits 3.3e-6, boxes 4.2e-7
    assert (captured["res5"] - reference["backbone"]["res5"]).abs().max() <= 1e-3
    assert (raw["pred_logits"] - reference["pred_logits"]).abs().max() <= 1e-3
    assert (raw["pred_boxes"] - reference["pred_boxes"]).abs().max() <= 1e-4
    for ours, theirs in zip(detections, reference["detections"]):
        ours = ours["instances"]
        k = min(len(ours), len(theirs["scores"]))
        assert torch.allclose(ours.scores[:k], theirs["scores"][:k], atol=1e-4)
        assert len(ours) == len(theirs["labels"]) == 300
        assert torch.equal(ours.pred_classes.sort().values, theirs["labels"].sort().values)
        # every one of our top boxes is (up to tie order among equal scores) one of theirs; boxes in pixels
        assert torch.cdist(ours.pred_boxes.tensor[:k], theirs["boxes"]).min(dim=1).values.max() < 1.0
