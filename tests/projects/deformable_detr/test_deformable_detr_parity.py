"""Parity of Deformable-DETR with the KS-DETR authors' implementation on the released KS-Deformable-DETR-R50
key layout.

A KS checkpoint becomes a baseline Deformable-DETR one by dropping the teacher-only weights (method spec §9.2):
``ksgt.*`` and the last encoder layer's ``attention_weights_teacher`` / ``value_proj_teacher``. The student
path -- which the fixture's outputs come from -- is then exactly this model. Shared body:
tests/projects/parity_helpers.py.
"""

from tests.projects.parity_helpers import ParityCase

CASE = ParityCase("ks_deformable_detr_r50", "projects/deformable_detr/configs/models/deformable_detr_r50.py",
                  multi_scale=True, num_threads=2)

parity_model = CASE.model_fixture(ks_len=567)


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    state, entries = CASE.check_layout(parity_model, num_keys=561, num_params=40_066_838)
    # one shared head registered six times, as in the checkpoint's "canonical" column
    shared = {e["key"]: e["canonical"] for e in entries if e["key"].startswith("class_embed.")}
    assert set(shared.values()) == {"class_embed.0.weight", "class_embed.0.bias"}
    assert all(m is parity_model.class_embed[0] for m in parity_model.class_embed)


def test_raw_outputs_match_the_authors_model(parity_model):
    # measured on CPU/float32: logits 3.3e-6, boxes 4.2e-7
    CASE.check_outputs(parity_model, compare_labels=True)
