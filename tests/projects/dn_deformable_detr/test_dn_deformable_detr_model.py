"""DN-Deformable-DETR: training step with denoising losses and eval (R50 from its config and a tiny model),
the denoising attention mask at work, head layout and initialisation, the decoder's positional queries, the
encode/decode split, configs."""

from pathlib import Path

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from detrex.layers import get_sine_pos_embed
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dn_deformable_detr.modeling import DNDeformableDETR, DNDeformableDetrTransformer
from projects.dn_deformable_detr.modeling import DNDeformableDetrTransformerDecoder, DNDeformableDetrTransformerEncoder
from tests.projects import model_helpers as mh

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "dn_deformable_detr" / "configs"


def loss_keys(num_aux):
    return mh.loss_keys(num_aux, denoising=True)


def tiny_model(num_classes=5, num_queries=10, dec_layers=3, groups=3):
    parts = mh.multi_scale_parts()  # built first: the seed gives the weights it always did
    transformer = DNDeformableDetrTransformer(
        encoder=DNDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, attn_dropout=0.0, ffn_dropout=0.0,
                                                   num_layers=2),
        decoder=DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, attn_dropout=0.0, ffn_dropout=0.0,
                                                   num_layers=dec_layers),
    )
    weights = mh.weight_dict(dict(mh.BASE_WEIGHTS, **mh.DN_WEIGHTS), dec_layers - 1)
    return mh.tiny_detector(DNDeformableDETR, parts, transformer, DNCriterion, weights, num_classes, num_queries,
                            denoising_groups=groups)


def batch(with_instances=True):
    """64x80 and 72x64 images, padded to 72x80."""
    return mh.two_image_batch(mh.SMALL, with_instances)


def test_r50_config_training_step_and_eval():
    model = mh.build_dn_r50(CONFIGS / "models" / "dn_deformable_detr_r50.py", DNDeformableDETR)
    assert model.tgt_embed.weight.shape == (300, 255) and model.refpoint_embed.weight.shape == (300, 4)
    layer = model.transformer.decoder.layers[0]
    assert layer.ffns[0].layers[0][0].out_features == 2048 and layer.attentions[1].dropout.p == 0.0
    mh.check_training_step(model, batch(), loss_keys(5))
    mh.check_grads(model, (
        "denoising_generator.label_encoder.weight", "tgt_embed.weight", "refpoint_embed.weight",
        "transformer.decoder.ref_point_head.layers.0.weight", "transformer.decoder.query_scale.layers.0.weight",
        "transformer.encoder.layers.0.attentions.0.value_proj.weight", "class_embed.5.weight"))
    # named "transformer.decoder.bbox_embed.5..." first; its earlier layers get no gradient while the last is zero
    assert model.bbox_embed[5].layers[-1].weight.grad.abs().sum() > 0
    out = mh.eval_without_instances(model, batch(with_instances=False))
    mh.check_detections(out[1], count=300)


def test_heads_aliases_and_initialisation():
    torch.manual_seed(0)
    model = tiny_model()
    assert len({id(m) for m in model.bbox_embed}) == 3 and len({id(m) for m in model.class_embed}) == 3
    assert model.transformer.decoder.bbox_embed is model.bbox_embed
    sd = model.state_dict()
    assert torch.equal(sd["bbox_embed.1.layers.0.weight"], sd["transformer.decoder.bbox_embed.1.layers.0.weight"])
    keys = list(sd)
    assert keys.index("refpoint_embed.weight") < keys.index("transformer.level_embeds") < keys.index(
        "class_embed.0.weight") < keys.index("denoising_generator.label_encoder.weight")
    assert torch.equal(model.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert (model.bbox_embed[2].layers[-1].bias == 0).all() and (model.bbox_embed[2].layers[-1].weight == 0).all()
    assert (model.tgt_embed.weight == 0).all()
    anchors = model.refpoint_embed.weight
    assert anchors.abs().max() <= 3.0 and anchors.std() > 0.5  # inverse-sigmoid of uniform, clamped
    assert not hasattr(model.transformer, "reference_points")


def test_queries_put_denoising_first_and_mask_hides_them():
    torch.manual_seed(0)
    model = tiny_model(groups=3)
    targets = model.prepare_targets(batch())
    q = model.build_queries(2, targets)
    assert (q["denoising_groups"], q["max_gt_num_per_image"]) == (3, 2)
    assert q["label_query"].shape == (2, 6 + 10, 32) and q["box_query"].shape == (2, 16, 4)
    assert (q["label_query"][:, 6:, -1] == 0).all()  # matching queries: indicator 0
    assert q["label_query"][0, :6, -1].tolist() == [1.0] * 6  # image 0 has 2 boxes in every group
    assert q["label_query"][1, :6, -1].tolist() == [1.0, 0.0] * 3  # image 1 has 1 box: one padding slot per group
    assert q["attn_mask"].shape == (16, 16) and q["attn_mask"][6:, :6].all()
    eval_q = model.build_queries(2, None)
    assert eval_q["attn_mask"] is None and eval_q["label_query"].shape == (2, 10, 32)


def test_matching_outputs_do_not_depend_on_denoising_queries():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images = model.preprocess_image(batch())
    targets = model.prepare_targets(batch())
    with torch.no_grad():
        plain = model.forward_raw(images, None)
        torch.manual_seed(1)
        with_dn = model.forward_raw(images, targets)
        torch.manual_seed(2)
        with_other_dn = model.forward_raw(images, targets)
    assert plain["denoising_output"] is None
    assert with_dn["denoising_output"]["pred_logits"].shape == (2, 3 * 2, 5)
    assert not torch.allclose(with_dn["denoising_output"]["pred_boxes"], with_other_dn["denoising_output"]["pred_boxes"])
    # the attention mask keeps the matching queries blind to the denoising ones
    assert torch.allclose(with_dn["pred_logits"], plain["pred_logits"], atol=1e-5)
    assert torch.allclose(with_dn["pred_boxes"], plain["pred_boxes"], atol=1e-6)


def test_decoder_positional_query_follows_the_reference_box():
    torch.manual_seed(0)
    dec = DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, num_layers=2)
    ref = torch.rand(2, 5, 4, 4)  # (B, Q, L, 4) valid-ratio-scaled boxes
    output = torch.randn(2, 5, 32)
    pos0 = dec.layer_query_pos(0, output, ref, None)
    assert torch.allclose(pos0, dec.ref_point_head(get_sine_pos_embed(ref[:, :, 0], num_pos_feats=16)))
    pos1 = dec.layer_query_pos(1, output, ref, None)
    assert torch.allclose(pos1, dec.query_scale(output) * pos0)


def test_decode_is_repeatable_and_depends_on_the_memory_given():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images = model.preprocess_image(batch(with_instances=False))
    tr = model.transformer
    q = model.build_queries(2, None)
    with torch.no_grad():
        levels = tr.flatten_inputs(*model.multi_level_inputs(images))
        memory = tr.encode(levels)
        dq = tr.prepare_queries(memory, levels, q["label_query"], q["box_query"])
        hs1, ref1 = tr.decode(memory, levels, dq["query"], dq["query_pos"], dq["reference_points"])
        hs2, ref2 = tr.decode(memory, levels, dq["query"], dq["query_pos"], dq["reference_points"])
        hs3, _ = tr.decode(memory + 1, levels, dq["query"], dq["query_pos"], dq["reference_points"])
    assert torch.equal(hs1, hs2) and torch.equal(ref1, ref2) and not torch.allclose(hs1, hs3)
    assert levels.mask_flatten.shape == (2, levels.spatial_shapes.prod(1).sum().item())


def test_two_stage_is_rejected_clearly():
    with pytest.raises(NotImplementedError, match="as_two_stage"):
        DNDeformableDetrTransformer(
            encoder=DNDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, num_layers=1),
            decoder=DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, num_layers=1),
            as_two_stage=True,
        )


@pytest.mark.parametrize("name,max_iter,drop", [("dn_deformable_detr_r50_50ep", 375000, 300000),
                                                ("dn_deformable_detr_r50_12ep", 90000, 82500)])
def test_top_level_configs_hold_the_recipe(name, max_iter, drop):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    mh.check_recipe(cfg, name, 50, mh.R50_INIT, max_iter=max_iter)
    multiplier = instantiate(cfg.lr_multiplier)
    assert multiplier((drop - 1) / max_iter) == 1.0 and multiplier((drop + 1) / max_iter) == pytest.approx(0.1)
