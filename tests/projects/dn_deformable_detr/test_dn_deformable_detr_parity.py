"""Parity of DN-Deformable-DETR with the KS-DETR authors' implementation on the released
KS-DN-Deformable-DETR-R50 key layout.

A KS checkpoint becomes a baseline DN-Deformable-DETR one by dropping the teacher-only weights (method spec
§9.2, last item): ``ksgt.*`` and the last encoder layer's ``attention_weights_teacher`` / ``value_proj_teacher``.
The student path -- which the fixture's outputs come from -- is then exactly this model. Shared body:
tests/projects/parity_helpers.py.
"""

from tests.projects.parity_helpers import ParityCase

CASE = ParityCase("ks_dn_deformable_detr_r50",
                  "projects/dn_deformable_detr/configs/models/dn_deformable_detr_r50.py",
                  multi_scale=True, num_threads=2)

parity_model = CASE.model_fixture(ks_len=611)


def test_state_dict_is_the_authors_baseline_layout(parity_model):
    state, entries = CASE.check_layout(parity_model, num_keys=605, num_params=47_409_387)
    # per-layer box heads, also registered as the decoder's refinement heads (the checkpoint's aliases)
    aliases = {e["key"]: e["canonical"] for e in entries if e["key"].startswith("transformer.decoder.bbox_embed.")}
    assert aliases["transformer.decoder.bbox_embed.3.layers.1.bias"] == "bbox_embed.3.layers.1.bias"
    assert parity_model.transformer.decoder.bbox_embed is parity_model.bbox_embed
    assert state["denoising_generator.label_encoder.weight"].shape == (81, 255)


def test_raw_outputs_match_the_authors_model(parity_model):
    # measured on CPU/float32: logits 4.2e-6, boxes 8.3e-7
    CASE.check_outputs(parity_model, compare_labels=True)
