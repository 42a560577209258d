"""Parity of Conditional-DETR with the KS-DETR authors' implementation on the released-checkpoint layout.

Dropping the teacher-only weights (``ksgt.*`` and rows 768: of the last encoder layer's packed in-projection)
turns the authors' KS-Conditional-DETR-R50 checkpoint into a baseline Conditional-DETR one, and the student
path is then exactly this model. Shared body: tests/projects/parity_helpers.py.
"""

from tests.projects.parity_helpers import ParityCase

CASE = ParityCase("ks_conditional_detr_r50", "projects/conditional_detr/configs/models/conditional_detr_r50.py",
                  multi_scale=False, num_threads=1)

parity_model = CASE.model_fixture(ks_len=566, baseline_len=564)


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    state, _ = CASE.check_layout(parity_model)
    assert state["query_embed.weight"].shape == (300, 256)
    assert state["transformer.decoder.ref_point_head.layers.1.weight"].shape == (2, 256)
    assert not any(k.startswith("transformer.decoder.bbox_embed") for k in state)
    assert not any("query_scale" in k for k in state if k.startswith("transformer.encoder"))


def test_raw_outputs_match_the_authors_model(parity_model):
    # measured on CPU/float32: see projects/conditional_detr/README.md
    CASE.check_outputs(parity_model, compare_labels=False)
