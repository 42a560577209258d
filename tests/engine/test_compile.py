"""train.compile: the compiled forward_raw gives the eager losses and gradients, for every image size and box count
of a run without recompiling (dynamic shapes), in training and in evaluation.

CPU test with the ``aot_eager`` backend: dynamo's tracing and AOT autograd (graph capture, dynamic shapes, guards)
without inductor's code generation, which takes minutes on a CPU. Tolerance: aot_eager replays the same aten
operators, so losses agree to float32 rounding (1e-6 relative); the GPU session runs inductor itself."""
import os
import sys

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from detrex.engine import compile_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from op_count import make_batch  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")

#: one dynamic-shape graph for every size and box count holds on the tested torch (constraints.txt: 2.14); torch 2.6
#: (the oldest supported, `.ci/check_older_torch`) recompiles for new sizes (README, train.compile)
ONE_GRAPH_FOR_ALL_SIZES = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 14)


def tiny_ks_dab():
    cfg = LazyConfig.load(os.path.join(ROOT, "tests/tools/configs/tiny_ks_dab_detr_shapes.py"))
    cfg.model.transformer.encoder.num_layers = 1  # the triple-attention layer only
    torch.manual_seed(0)
    return instantiate(cfg.model)


def losses_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(0)
    losses = model(batch)
    losses.total.backward()
    return losses.total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_forward_raw_equals_eager_without_recompiles():
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = tiny_ks_dab().train()
    batches = [make_batch(2, h, w, n, num_classes=3) for h, w, n in [(96, 128, 4), (128, 96, 2), (80, 112, 7)]]
    eager = [losses_and_grads(model, b) for b in batches]
    model.eval()
    with torch.no_grad():
        eager_eval = model(batches[0])
    torch._dynamo.reset()
    counters.clear()
    compile_model(model, backend="aot_eager")
    model.train()
    for (loss, grads), batch in zip(eager, batches):
        c_loss, c_grads = losses_and_grads(model, batch)
        assert torch.allclose(c_loss, loss, rtol=1e-6), (float(c_loss), float(loss))
        assert c_grads.keys() == grads.keys()
        for name in grads:
            assert torch.allclose(c_grads[name], grads[name], rtol=1e-5, atol=1e-7), name
    train_graphs = counters["stats"]["unique_graphs"]
    if ONE_GRAPH_FOR_ALL_SIZES:
        # every size and box count, a 4-box batch first (4 = the coordinate dim: no duck-shaping tie), one graph
        assert train_graphs == 1
    else:  # older dynamo: at most one graph per new size, reused when the size comes again
        assert 1 <= train_graphs <= len(batches)
    for batch in batches:  # a second epoch over the same sizes compiles nothing
        losses_and_grads(model, batch)
    assert counters["stats"]["unique_graphs"] == train_graphs
    model.eval()
    with torch.no_grad():
        compiled_eval = model(batches[0])
    for a, b in zip(compiled_eval, eager_eval):
        assert torch.allclose(a["instances"].scores, b["instances"].scores, rtol=1e-6)
        assert torch.allclose(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor, rtol=1e-6)
    assert counters["stats"]["unique_graphs"] == train_graphs + 1  # plus the evaluation graph
    assert "_orig_mod" not in "".join(model.state_dict())  # checkpoints keep their keys


def test_compile_needs_a_detector():
    with pytest.raises(ValueError, match="forward_raw"):
        compile_model(torch.nn.Linear(2, 2), backend="aot_eager")
