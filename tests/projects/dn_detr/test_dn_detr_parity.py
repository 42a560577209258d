"""Parity of DN-DETR with the KS-DETR authors' implementation on the released-checkpoint layout.

Dropping the teacher-only weights (``ksgt.*`` and rows 768: of the last encoder layer's packed in-projection)
turns the authors' KS-DN-DETR-R50 checkpoint into a baseline DN-DETR one; at eval there are no denoising
queries, and the student path is then exactly this model. Shared body: tests/projects/parity_helpers.py.
"""
import torch

from tests.projects.parity_helpers import ParityCase

CASE = ParityCase("ks_dn_detr_r50", "projects/dn_detr/configs/models/dn_detr_r50.py", multi_scale=False,
                  num_threads=1)

parity_model = CASE.model_fixture(ks_len=605, baseline_len=603)


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    state, _ = CASE.check_layout(parity_model)
    assert state["denoising_generator.label_encoder.weight"].shape == (81, 255)
    assert state["anchor_box_embed.weight"].shape == (300, 4)
    assert torch.equal(state["bbox_embed.layers.0.weight"], state["transformer.decoder.bbox_embed.layers.0.weight"])


def test_raw_outputs_match_the_authors_model(parity_model):
    # measured on CPU/float32: see projects/dn_detr/README.md
    raw = CASE.check_outputs(parity_model, compare_labels=False)
    # eval: no denoising queries
    assert raw["denoising_output"] is None and raw["pred_logits"].shape == (2, 300, 80)
