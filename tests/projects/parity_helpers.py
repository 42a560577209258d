"""Shared body of the five baseline parity tests (``tests/projects/<detector>/test_*_parity.py``).

The fixture (tests/fixtures/parity, see its README) holds, per detector, the key list of the KS-DETR authors'
released KS-<detector>-R50 checkpoint, a deterministic weight generator (``weights.py``), two images and what the
authors' model computed on them in eval mode (the student branch, last decoder layer). Dropping the teacher-only
weights (ks_detr_method.md §9.2) turns a KS checkpoint into a baseline one; the student path -- which the
reference outputs come from -- is then exactly the baseline model, so the baseline must load it strictly and
reproduce the outputs.

Teacher-only weights: ``ksgt.*`` always; in the single-scale detectors (DAB, Conditional, DN-DETR) also rows
768: of the last encoder layer's packed q/k/v in-projection; in the multi-scale ones (Deformable,
DN-Deformable) the last encoder layer's ``attention_weights_teacher`` / ``value_proj_teacher``.

The KS parity tests (``tests/projects/ks_detr/test_ks_*parity.py``) use the same cases with ``ks_config`` set:
there the authors' checkpoint loads unchanged into our KS model, which must reproduce the same outputs.
"""
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrex.config import LazyConfig, instantiate

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "parity"
LAST_IN_PROJ = "transformer.encoder.layers.5.attentions.0.attn.in_proj_"
MULTI_SCALE_TEACHER_PREFIXES = (
    "ksgt.",
    "transformer.encoder.layers.5.attentions.0.attention_weights_teacher.",
    "transformer.encoder.layers.5.attentions.0.value_proj_teacher.",
)


def weights_module():
    """``tests/fixtures/parity/weights.py`` (``make_state_dict``, ``load_keys``), loaded by path."""
    spec = importlib.util.spec_from_file_location("parity_weights", FIXTURES / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(config):
    """The model of a model config (path relative to the repository), seed 0, in eval mode."""
    torch.manual_seed(0)
    return instantiate(LazyConfig.load(str(REPO / config)).model).eval()


def load_inputs():
    """The two fixture images as detector inputs: uint8 (3, H, W) RGB tensors with their sizes."""
    inputs = []
    for name in ("0.png", "1.png"):
        array = np.asarray(Image.open(FIXTURES / "inputs_a" / name).convert("RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # uint8 CHW, RGB
        inputs.append({"image": image, "height": image.shape[1], "width": image.shape[2]})
    return inputs


@dataclass(frozen=True)
class ParityCase:
    """One baseline detector against the authors' KS checkpoint of the same family.

    name: fixture stem (``ks_dab_detr_r50``); config: the baseline model config, relative to the repository;
    multi_scale: which teacher-only weights the KS checkpoint has (see the module docstring);
    num_threads: intra-op threads ``build_model`` sets (as the per-detector tests always did);
    ks_config: the KS model config the checkpoint belongs to (KS parity tests only).
    """

    name: str
    config: str
    multi_scale: bool
    num_threads: int
    ks_config: str = None

    @property
    def teacher_prefixes(self):
        return MULTI_SCALE_TEACHER_PREFIXES if self.multi_scale else ("ksgt.",)

    def entries(self):
        """The checkpoint's key list: ``[{"key", "shape", "dtype", "canonical"}, ...]``."""
        return weights_module().load_keys(FIXTURES / f"{self.name}.keys.json")

    def released_state_dict(self):
        """The authors' KS checkpoint (deterministic weights in its key layout), ``{key: tensor}`` in order."""
        return weights_module().make_state_dict(self.entries())

    def build_ks_model(self, state_dict):
        """The KS model of ``ks_config`` (eval mode) with ``state_dict`` loaded strictly: no missing or
        unexpected keys."""
        model = build(self.ks_config)
        incompatible = model.load_state_dict(state_dict, strict=True)
        assert not incompatible.missing_keys and not incompatible.unexpected_keys
        return model

    def released_ks_model(self, num_keys, ks_cls):
        """``(released state dict, KS model with it loaded strictly)``, after checking that the checkpoint
        has ``num_keys`` keys and the model is exactly a ``ks_cls``."""
        released = self.released_state_dict()
        assert len(released) == num_keys
        model = self.build_ks_model(released)
        assert type(model) is ks_cls
        return released, model

    def to_baseline(self, state_dict):
        """Drop KS-DETR's teacher-only weights from a KS state dict of this family."""
        out = {k: v for k, v in state_dict.items() if not k.startswith(self.teacher_prefixes)}
        if not self.multi_scale:
            for suffix in ("weight", "bias"):
                out[LAST_IN_PROJ + suffix] = out[LAST_IN_PROJ + suffix][:768]  # student q/k/v rows
        return out

    def build_model(self, ks_len=None, baseline_len=None):
        """The baseline model (eval mode) with the KS checkpoint's student weights loaded strictly.

        ks_len / baseline_len: when given, the number of keys the KS / converted state dict must have.
        """
        torch.set_num_threads(self.num_threads)
        model = build(self.config)
        ks_state = self.released_state_dict()
        if ks_len is not None:
            assert len(ks_state) == ks_len
        baseline = self.to_baseline(ks_state)
        if baseline_len is not None:
            assert len(baseline) == baseline_len
        model.load_state_dict(baseline, strict=True)
        return model.eval()

    def check_layout(self, model, num_keys=None, num_params=None):
        """Assert the model's state-dict keys are the checkpoint's, teacher-only ones dropped, in order
        (``num_keys`` of them, and ``num_params`` parameters, when given).

        Returns ``(state_dict, entries)`` for the caller's detector-specific checks.
        """
        entries = self.entries()
        expected = [e["key"] for e in entries if not e["key"].startswith(self.teacher_prefixes)]
        state = model.state_dict()
        assert list(state) == expected
        if num_keys is not None:
            assert len(state) == num_keys
        if num_params is not None:
            assert sum(p.numel() for p in model.parameters()) == num_params
        return state, entries

    def model_fixture(self, **build_kwargs):
        """A module-scoped pytest fixture named ``parity_model``: ``build_model(**build_kwargs)``."""

        @pytest.fixture(scope="module", name="parity_model")
        def _parity_model():
            return self.build_model(**build_kwargs)

        return _parity_model

    def run(self, model):
        """Eval-mode raw outputs of ``model`` on the fixture images (no gradients).

        Returns ``(images, raw, res5)``: the preprocessed ImageList, ``forward_raw``'s outputs, the backbone's
        res5 feature map.
        """
        inputs = load_inputs()
        captured = {}
        hook = model.backbone.register_forward_hook(lambda m, args, out: captured.update(out))
        try:
            with torch.no_grad():
                images = model.preprocess_image(inputs)
                raw = model.forward_raw(images)
        finally:
            hook.remove()
        return images, raw, captured["res5"]

    def check_outputs(self, model, compare_labels, ran=None):
        """Run the fixture images through ``model`` (or take ``ran``, ``run``'s result) and compare with the
        authors' outputs.

        Tolerances (fixture README; measured on CPU/float32 well below them, see each project's README):
        backbone res5 and logits within 1e-3, normalized cxcywh boxes within 1e-4. Post-processed
        detections are compared loosely, since random weights make many scores tie: top scores within
        1e-4, and every one of our top boxes (absolute xyxy pixels) within 1 px of one of theirs.
        compare_labels: also require 300 detections per image with the same multiset of labels.
        Returns the raw outputs (``forward_raw``) for the caller's detector-specific checks.
        """
        reference = torch.load(FIXTURES / f"{self.name}.a.eval.pt", weights_only=True)
        inputs = load_inputs()
        images, raw, res5 = ran or self.run(model)
        assert tuple(images.tensor.shape[-2:]) == (320, 416)  # image 1 (288x352) is padded
        assert raw["pred_boxes"].shape == reference["pred_boxes"].shape
        assert raw["pred_logits"].shape == reference["pred_logits"].shape
        results = model.inference(raw["pred_logits"], raw["pred_boxes"], images.image_sizes)
        detections = model.postprocess(results, inputs, images.image_sizes)
        assert [d["instances"].image_size for d in detections] == [(x["height"], x["width"]) for x in inputs]
        diffs = {
            "res5": (res5 - reference["backbone"]["res5"]).abs().max().item(),
            "logits": (raw["pred_logits"] - reference["pred_logits"]).abs().max().item(),
            "boxes": (raw["pred_boxes"] - reference["pred_boxes"]).abs().max().item(),
        }
        print("max abs diffs:", diffs)
        assert diffs["res5"] <= 1e-3
        assert diffs["logits"] <= 1e-3
        assert diffs["boxes"] <= 1e-4
        for ours, theirs in zip(detections, reference["detections"]):
            ours = ours["instances"]
            k = min(len(ours), len(theirs["scores"]))
            assert torch.allclose(ours.scores[:k], theirs["scores"][:k], atol=1e-4)
            if compare_labels:
                assert len(ours) == len(theirs["labels"]) == 300
                assert torch.equal(ours.pred_classes.sort().values, theirs["labels"].sort().values)
            # up to tie order among equal scores; boxes are in pixels
            assert torch.cdist(ours.pred_boxes.tensor[:k], theirs["boxes"]).min(dim=1).values.max() < 1.0
        return raw
