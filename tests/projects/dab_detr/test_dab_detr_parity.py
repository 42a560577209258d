"""Parity of DAB-DETR with the KS-DETR authors' implementation on the released-checkpoint key layout.

A KS-DAB-DETR-R50 checkpoint becomes a baseline DAB-DETR one by dropping the teacher-only weights (``ksgt.*``
and rows 768: of the last encoder layer's packed in-projection); the student path -- which the fixture's
outputs come from -- is then exactly this model. Shared body: tests/projects/parity_helpers.py.
"""

from tests.projects.parity_helpers import LAST_IN_PROJ, ParityCase

CASE = ParityCase("ks_dab_detr_r50", "projects/dab_detr/configs/models/dab_detr_r50.py", multi_scale=False,
                  num_threads=1)

parity_model = CASE.model_fixture()


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    state, _ = CASE.check_layout(parity_model, num_keys=602, num_params=43_668_690)
    assert state[LAST_IN_PROJ + "weight"].shape == (768, 256)


def test_raw_outputs_match_the_authors_model(parity_model):
    # measured on CPU/float32: res5 1.2e-5, logits 3.3e-6, boxes 3.9e-7
    CASE.check_outputs(parity_model, compare_labels=True)
