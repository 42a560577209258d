"""Parity of DN-DETR with the KS-DETR authors' implementation on the released-checkpoint layout.

The fixture (tests/fixtures/parity, see its README) holds the key list of the authors' KS-DN-DETR-R50
checkpoint, a deterministic weight generator, two images and what the authors' model computed on them in
eval mode (the student's last decoder layer). Dropping the teacher-only weights (``ksgt.*`` and rows 768: of
the last encoder layer's packed in-projection) turns it into a baseline DN-DETR checkpoint; at eval there are
no denoising queries, and the student path is then exactly this model.
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
KEYS = FIXTURES / "ks_dn_detr_r50.keys.json"


def _weights_module():
    spec = importlib.util.spec_from_file_location("parity_weights", FIXTURES / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ks_to_baseline(state_dict):
    """Drop KS-DETR's teacher-only weights from a KS single-scale state dict."""
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
    cfg = LazyConfig.load(str(REPO / "projects/dn_detr/configs/models/dn_detr_r50.py"))
    model = instantiate(cfg.model)
    weights = _weights_module()
    ks_state = weights.make_state_dict(weights.load_keys(KEYS))
    assert len(ks_state) == 605
    baseline = ks_to_baseline(ks_state)
    assert len(baseline) == 603
    model.load_state_dict(baseline, strict=True)
    return model.eval()


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    keys = _weights_module().load_keys(KEYS)
    expected = [e["key"] for e in keys if not e["key"].startswith("ksgt.")]
    state = parity_model.state_dict()
    assert list(state) == expected
    assert state["denoising_generator.label_encoder.weight"].shape == (81, 255)
    assert state["anchor_box_embed.weight"].shape == (300, 4)
    assert torch.equal(state["bbox_embed.layers.0.weight"], state["transformer.decoder.bbox_embed.layers.0.weight"])


def test_raw_outputs_match_the_authors_model(parity_model):
    reference = torch.load(FIXTURES / "ks_dn_detr_r50.a.eval.pt", weights_only=True)
    inputs = _load_inputs()
    captured = {}
    hook = parity_model.backbone.register_forward_hook(lambda m, args, out: captured.update(out))
    try:
        with torch.no_grad():
            images = parity_model.preprocess_image(inputs)
            raw = parity_model.forward_raw(images)  # eval: no denoising queries
    finally:
        hook.remove()
    assert raw["denoising_output"] is None and raw["pred_logits"].shape == (2, 300, 80)
    assert tuple(images.tensor.shape[-2:]) == (320, 416)  # image 1 (288x352) is padded
    results = parity_model.inference(raw["pred_logits"], raw["pred_boxes"], images.image_sizes)
    detections = parity_model.postprocess(results, inputs, images.image_sizes)
    diffs = {
        "res5": (captured["res5"] - reference["backbone"]["res5"]).abs().max().item(),
        "logits": (raw["pred_logits"] - reference["pred_logits"]).abs().max().item(),
        "boxes": (raw["pred_boxes"] - reference["pred_boxes"]).abs().max().item(),
    }
    print("max abs diffs:", diffs)
    # measured on CPU/float32: see projects/dn_detr/README.md
    assert diffs["res5"] <= 1e-3
    assert diffs["logits"] <= 1e-3
    assert diffs["boxes"] <= 1e-4
    # post-processed detections: random weights make many scores tie, so compare loosely
    for ours, theirs in zip(detections, reference["detections"]):
        ours = ours["instances"]
        k = min(len(ours), len(theirs["scores"]))
        assert torch.allclose(ours.scores[:k], theirs["scores"][:k], atol=1e-4)
        assert torch.cdist(ours.pred_boxes.tensor[:k], theirs["boxes"]).min(dim=1).values.max() < 1.0
