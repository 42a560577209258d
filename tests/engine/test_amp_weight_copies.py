"""bfloat16 weight copies (train.amp.weight_copies) compute exactly what plain bfloat16 autocast computes, with
fewer operators: no per-iteration cast of each weight and of its gradient."""
import itertools
import os
import sys

import torch

from detrex.engine import Trainer
from detrex.engine.amp import autocast_weights
from detrex.utils.events import EventStorage
from detrex.utils.op_count import OpCounter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_ks_dab():
    from detrex.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "tests/tools/configs/tiny_ks_dab_detr_shapes.py"))
    torch.manual_seed(0)
    return instantiate(cfg.model).train()


def run(copies: bool, steps: int = 3):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from op_count import make_batch

    model = tiny_ks_dab()
    batch = make_batch(2, 64, 96, 4, num_classes=3)
    t = Trainer(model, itertools.repeat(batch), torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True),
                amp=True, amp_dtype="bfloat16", amp_weight_copies=copies,
                clip_grad_params={"max_norm": 0.1, "norm_type": 2})
    counts = []
    with EventStorage(0) as t.storage:
        for it in range(steps):
            t.iter = t.storage.iter = it
            with OpCounter() as counter:
                t.run_step()
            counts.append(counter.by_op)
    losses = [v for v, _ in t.storage.history("total_loss").values()]
    return model, losses, counts[-1]


def test_weight_copies_equal_plain_autocast_with_fewer_casts():
    plain_model, plain_losses, plain_ops = run(copies=False)
    copy_model, copy_losses, copy_ops = run(copies=True)
    assert copy_losses == plain_losses  # bit for bit: the same roundings in the same places
    for (name, a), b in zip(plain_model.state_dict().items(), copy_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.dtype == torch.float32 for p in copy_model.parameters())  # the float32 weights stay the model's
    casts = lambda ops: sum(n for (_, op), n in ops.items() if op == "_to_copy")  # noqa: E731
    n_weights = len(autocast_weights(copy_model))
    assert casts(plain_ops) - casts(copy_ops) >= n_weights  # at least one cast per weight and step gone


def test_autocast_weights_are_linear_conv_and_packed_projections():
    names = set(autocast_weights(tiny_ks_dab()))
    assert "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight" in names
    assert "class_embed.weight" in names and "backbone.stem.conv1.weight" in names
    assert not any("norm" in n for n in names) and "query_embed.weight" not in names
