"""Parity with the KS-DETR authors' implementation on the released-checkpoint key layout.

The fixture (tests/fixtures/parity, see its README) holds the key list of the authors' KS-DAB-DETR-R50
checkpoint, a deterministic weight generator, two images and what the authors' model computed on them in
eval mode. A KS checkpoint becomes a baseline DAB-DETR one by dropping the teacher-only weights
(``ksgt.*`` and rows 768: of the last encoder layer's packed in-projection); the student path -- which
the fixture's outputs come from -- is then exactly this model.
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
LAST_IN_PROJ = "transformer.encoder.layers.5.attentions.0.attn.in_proj_"


def _weights_module():
    spec = importlib.util.spec_from_file_location("parity_weights", FIXTURES / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ks_to_baseline(state_dict):
    """Drop KS-DETR's teacher-only weights from a KS-DAB-DETR state dict."""
    out = {k: v for k, v in state_dict.items() if not k.startswith("ksgt.")}
    for suffix in ("weight", "bias"):
        out[LAST_IN_PROJ + suffix] = out[LAST_IN_PROJ + suffix][:768]  # student q/k/v rows
    return out


def _load_inputs():
    inputs = []
    for name in ("0.png", "1.png"):
        array = np.asarray(Image.open(FIXTURES / "inputs_a" / name).convert("RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # uint8 CHW, RGB
        inputs.append({"image": image, "height": image.shape[1], "width": image.shape[2]})
    return inputs


@pytest.fixture(scope="module")
def parity_model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LazyConfig.load(str(REPO / "projects/dab_detr/configs/models/dab_detr_r50.py"))
    model = instantiate(cfg.model)
    weights = _weights_module()
    ks_state = weights.make_state_dict(weights.load_keys(FIXTURES / "ks_dab_detr_r50.keys.json"))
    model.load_state_dict(ks_to_baseline(ks_state), strict=True)
    return model.eval()


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    keys = _weights_module().load_keys(FIXTURES / "ks_dab_detr_r50.keys.json")
    expected = [e["key"] for e in keys if not e["key"].startswith("ksgt.")]
    state = parity_model.state_dict()
    assert list(state) == expected
    assert len(state) == 602
    assert sum(p.numel() for p in parity_model.parameters()) == 43_668_690
    assert state[LAST_IN_PROJ + "weight"].shape == (768, 256)


def test_raw_outputs_match_the_authors_model(parity_model):
    reference = torch.load(FIXTURES / "ks_dab_detr_r50.a.eval.pt", weights_only=True)
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
    res5 = captured["res5"]
    results = parity_model.inference(raw["pred_logits"], raw["pred_boxes"], images.image_sizes)
    detections = parity_model.postprocess(results, inputs, images.image_sizes)
    # measured on CPU/float32: res5 1.2e-5, logits 3.3e-6, boxes 3.9e-7
    assert (res5 - reference["backbone"]["res5"]).abs().max() <= 1e-3
    assert (raw["pred_logits"] - reference["pred_logits"]).abs().max() <= 1e-3
    assert (raw["pred_boxes"] - reference["pred_boxes"]).abs().max() <= 1e-4
    # post-processed detections: random weights make many scores tie, so compare loosely
    for ours, theirs in zip(detections, reference["detections"]):
        ours = ours["instances"]
        k = min(len(ours), len(theirs["scores"]))
        assert torch.allclose(ours.scores[:k], theirs["scores"][:k], atol=1e-4)
        assert len(ours) == len(theirs["labels"]) == 300
        assert torch.equal(ours.pred_classes.sort().values, theirs["labels"].sort().values)
        # every box is (up to tie order among equal scores) one of theirs; boxes are in pixels
        assert torch.cdist(ours.pred_boxes.tensor, theirs["boxes"]).min(dim=1).values.max() < 1.0
