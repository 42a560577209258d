"""Shared checks of the multi-scale KS detector tests (test_ks_{deformable,dn_deformable}_detr.py).

Teacher-only weights of a multi-scale KS detector (ks_detr_method.md §9.2): the sMLP (``ksgt``) and the last
encoder layer's ``attention_weights_teacher`` / ``value_proj_teacher``."""
import torch

from detrex.config import LazyConfig, instantiate
from projects.ks_detr.modeling.deformable_triple_attention import KSMultiScaleTripleAttention
from tests.projects import model_helpers as mh


def ks_layer_attention(model):
    """The last encoder layer's (triple) multi-scale attention."""
    return model.transformer.encoder.layers[-1].attentions[0]


def build_ks_r50(cfg_path, ks_cls):
    """The R50 model of a KS top-level config (seed 0): exactly a ``ks_cls`` whose 6th encoder layer has the
    triple multi-scale attention. Returns ``(cfg, model, that attention)``."""
    cfg = LazyConfig.load(cfg_path)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert type(model) is ks_cls
    layer = model.transformer.encoder.layers[5].attentions[0]
    assert isinstance(layer, KSMultiScaleTripleAttention)
    return cfg, model, layer


def training_step_with_config_optimizer(cfg, model, items, keys, **more_grads):
    """One step with the config's optimizer: the losses are exactly ``keys`` and finite, gradients reach the
    teachers (``check_teacher_gradients`` with ``more_grads``), then the optimizer steps."""
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    optimizer.zero_grad()
    mh.check_training_step(model, items, keys)
    check_teacher_gradients(model, **more_grads)
    optimizer.step()


def teacher_only_params(model):
    layer = ks_layer_attention(model)
    return [*model.ksgt.parameters(), *layer.attention_weights_teacher.parameters(),
            *layer.value_proj_teacher.parameters()]


def check_teacher_gradients(model, **more):
    """After a backward pass: the sMLP, the teacher projections and the ``more`` named parameters got nonzero
    gradients."""
    layer = ks_layer_attention(model)
    for name, p in [("sMLP", model.ksgt.smlp_module.token_split_conv.linear[0].weight),
                    ("attention_weights_teacher", layer.attention_weights_teacher.weight),
                    ("value_proj_teacher", layer.value_proj_teacher.weight), *more.items()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def eval_ignoring_teacher_weights(model, inputs):
    """Eval without annotations: detections at each input's size, then the raw outputs are unchanged when
    every teacher-only weight is perturbed. Returns the detections and the raw outputs."""
    model.eval()
    with torch.no_grad():
        results = model(inputs)
        raw = model.forward_raw(model.preprocess_image(inputs), None)
    assert [r["instances"].image_size for r in results] == [(x["height"], x["width"]) for x in inputs]
    with torch.no_grad():
        for p in teacher_only_params(model):
            p.add_(torch.randn_like(p))
        raw2 = model.forward_raw(model.preprocess_image(inputs), None)
    assert torch.equal(raw["pred_logits"], raw2["pred_logits"])
    assert torch.equal(raw["pred_boxes"], raw2["pred_boxes"])
    return results, raw
