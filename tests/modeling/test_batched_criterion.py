"""The batched criterion equals the per-set criterion it replaced (kept in `reference_criterion.py`), key by key,
for any number of prediction sets, images without targets, denoising groups, two-stage proposals, CE loss and
loss subsets; and it reads the device once per call."""

import pytest
import torch

from detrex.modeling.criterion import DNCriterion, LossDict, SetCriterion
from detrex.modeling.matcher import HungarianMatcher
from detrex.utils.op_count import OpCounter
from projects.deformable_detr.modeling.deformable_criterion import DeformableCriterion

from tests.modeling.reference_criterion import RefDeformableCriterion, RefDNCriterion, RefHungarianMatcher, RefSetCriterion

torch.set_num_threads(1)
K = 5
WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def random_boxes(*shape, generator, dtype):
    center = torch.rand(*shape, 2, generator=generator, dtype=dtype) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=generator, dtype=dtype) * 0.3 + 0.02
    return torch.cat([center, size], -1)


def random_set(b, q, generator, dtype):
    return {"pred_logits": torch.randn(b, q, K, generator=generator, dtype=dtype, requires_grad=True),
            "pred_boxes": random_boxes(b, q, generator=generator, dtype=dtype).requires_grad_()}


def random_targets(counts, generator, dtype):
    return [{"labels": torch.randint(0, K, (n,), generator=generator),
             "boxes": random_boxes(n, generator=generator, dtype=dtype)} for n in counts]


def pair(cls, ref_cls, **kwargs):
    def build(matcher_cls, criterion_cls):
        matcher = matcher_cls(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                              cost_class_type=kwargs.pop("cost_class_type", "focal_loss_cost"))
        return criterion_cls(K, matcher, dict(WEIGHTS), **kwargs)

    cost_type = kwargs.get("cost_class_type", "focal_loss_cost")
    new = build(HungarianMatcher, cls)
    kwargs["cost_class_type"] = cost_type
    ref = build(RefHungarianMatcher, ref_cls)
    return new, ref


def assert_same(new, ref, atol):
    assert set(new) == set(ref)
    for k in ref:
        assert torch.allclose(new[k], ref[k], rtol=0, atol=atol), (k, float(new[k]), float(ref[k]))


def leaves(outputs):
    out = []
    for v in outputs.values():
        if isinstance(v, torch.Tensor) and v.requires_grad:
            out.append(v)
        elif isinstance(v, dict):
            out += leaves(v)
        elif isinstance(v, list):
            for d in v:
                out += leaves(d)
    return out


def check(new_crit, ref_crit, outputs, targets, atol=1e-6):
    new = new_crit(outputs, targets)
    ref = ref_crit(outputs, targets)
    assert_same(new, ref, atol)
    # gradients of the weighted total, the training loss
    params = leaves(outputs)
    weighted = new_crit.weighted_losses(outputs, targets)
    grads_new = torch.autograd.grad(weighted.total, params, allow_unused=True)
    ref_total = sum(v * ref_crit.weight_dict.get(k, 1.0) for k, v in ref.items())
    grads_ref = torch.autograd.grad(ref_total, params, allow_unused=True)
    for gn, gr in zip(grads_new, grads_ref):
        if gr is None:
            assert gn is None or gn.abs().max() == 0
        else:
            assert torch.allclose(gn, gr, rtol=0, atol=atol)
    return new


@pytest.mark.parametrize("num_sets", [1, 3, 8])
@pytest.mark.parametrize("counts", [(3, 0, 5), (0, 0), (1, 7)])
def test_set_criterion_equals_per_set_reference(num_sets, counts):
    g = torch.Generator().manual_seed(num_sets * 100 + sum(counts))
    b, q = len(counts), 9
    outputs = random_set(b, q, g, torch.float64)
    outputs["aux_outputs"] = [random_set(b, q, g, torch.float64) for _ in range(num_sets - 1)]
    targets = random_targets(counts, g, torch.float64)
    new, ref = pair(SetCriterion, RefSetCriterion)
    losses = check(new, ref, outputs, targets)
    assert isinstance(losses, LossDict) and len(losses) == 3 * num_sets


def test_stacked_outputs_give_the_same_losses_as_the_dicts():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, 6, K, generator=g, dtype=torch.float64)
    boxes = random_boxes(4, 2, 6, generator=g, dtype=torch.float64)
    dicts = {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
             "aux_outputs": [{"pred_logits": a, "pred_boxes": c} for a, c in zip(logits[:-1], boxes[:-1])]}
    targets = random_targets((2, 3), g, torch.float64)
    new, ref = pair(SetCriterion, RefSetCriterion)
    stacked = dict(dicts, stacked_outputs={"pred_logits": logits, "pred_boxes": boxes})
    assert_same(new(stacked, targets), ref(dicts, targets), 1e-6)


@pytest.mark.parametrize("losses", [("class",), ("boxes",)])
def test_loss_subsets(losses):
    g = torch.Generator().manual_seed(2)
    outputs = random_set(2, 5, g, torch.float64)
    outputs["aux_outputs"] = [random_set(2, 5, g, torch.float64)]
    new, ref = pair(SetCriterion, RefSetCriterion, losses=losses)
    check(new, ref, outputs, random_targets((2, 1), g, torch.float64))


def test_ce_loss_and_ce_cost():
    g = torch.Generator().manual_seed(3)
    outputs = {"pred_logits": torch.randn(2, 6, K + 1, generator=g, dtype=torch.float64, requires_grad=True),
               "pred_boxes": random_boxes(2, 6, generator=g, dtype=torch.float64).requires_grad_()}
    outputs["aux_outputs"] = [{"pred_logits": torch.randn(2, 6, K + 1, generator=g, dtype=torch.float64),
                               "pred_boxes": random_boxes(2, 6, generator=g, dtype=torch.float64)}]
    new, ref = pair(SetCriterion, RefSetCriterion, loss_class_type="ce_loss", cost_class_type="ce_cost")
    check(new, ref, outputs, random_targets((3, 0), g, torch.float64))


@pytest.mark.parametrize("num_sets,groups,counts", [(1, 1, (2, 1)), (3, 5, (3, 0, 2)), (8, 2, (4, 1))])
def test_dn_criterion_equals_per_set_reference(num_sets, groups, counts):
    g = torch.Generator().manual_seed(num_sets + groups)
    b, q, m = len(counts), 7, max(counts)
    outputs = random_set(b, q, g, torch.float64)
    outputs["aux_outputs"] = [random_set(b, q, g, torch.float64) for _ in range(num_sets - 1)]
    dn = random_set(b, groups * m, g, torch.float64)
    dn["aux_outputs"] = [random_set(b, groups * m, g, torch.float64) for _ in range(num_sets - 1)]
    outputs.update(denoising_output=dn, denoising_groups=groups, max_gt_num_per_image=m)
    targets = random_targets(counts, g, torch.float64)
    new, ref = pair(DNCriterion, RefDNCriterion)
    losses = check(new, ref, outputs, targets)
    assert len(losses) == 6 * num_sets
    # the same sets as one stacked tensor, denoising queries first (what DN-DETR's pack_dn_outputs passes)
    sets = outputs["aux_outputs"] + [outputs]
    dn_sets = dn["aux_outputs"] + [dn]
    stacked = {"pred_logits": torch.stack([torch.cat([d["pred_logits"], s["pred_logits"]], 1)
                                           for d, s in zip(dn_sets, sets)]),
               "pred_boxes": torch.stack([torch.cat([d["pred_boxes"], s["pred_boxes"]], 1)
                                          for d, s in zip(dn_sets, sets)]),
               "num_denoising_queries": groups * m}
    assert_same(new(dict(outputs, stacked_outputs=stacked), targets), ref(outputs, targets), 1e-6)


def test_dn_criterion_without_denoising_queries_gives_zero_dn_losses():
    g = torch.Generator().manual_seed(4)
    outputs = random_set(2, 5, g, torch.float64)
    outputs["aux_outputs"] = [random_set(2, 5, g, torch.float64)]
    outputs.update(denoising_output=None, denoising_groups=5, max_gt_num_per_image=0)
    new, ref = pair(DNCriterion, RefDNCriterion)
    check(new, ref, outputs, random_targets((1, 2), g, torch.float64))


@pytest.mark.parametrize("counts", [(3, 2), (0, 4)])
def test_two_stage_proposals_equal_per_set_reference(counts):
    g = torch.Generator().manual_seed(5)
    outputs = random_set(2, 6, g, torch.float64)
    outputs["aux_outputs"] = [random_set(2, 6, g, torch.float64) for _ in range(2)]
    outputs["enc_outputs"] = random_set(2, 20, g, torch.float64)
    new, ref = pair(DeformableCriterion, RefDeformableCriterion)
    losses = check(new, ref, outputs, random_targets(counts, g, torch.float64))
    assert {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)


def test_float32_within_documented_tolerance():
    """float32: the batched sums add in another order; values agree to 1e-5 relative."""
    g = torch.Generator().manual_seed(6)
    outputs = random_set(2, 300, g, torch.float32)
    outputs["aux_outputs"] = [random_set(2, 300, g, torch.float32) for _ in range(7)]
    targets = random_targets((7, 7), g, torch.float32)
    new, ref = pair(SetCriterion, RefSetCriterion)
    a, b = new(outputs, targets), ref(outputs, targets)
    for k in b:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_weighted_losses_and_total():
    g = torch.Generator().manual_seed(7)
    outputs = random_set(2, 5, g, torch.float64)
    outputs["aux_outputs"] = [random_set(2, 5, g, torch.float64)]
    targets = random_targets((2, 2), g, torch.float64)
    crit = SetCriterion(K, HungarianMatcher(2.0, 5.0, 2.0), {"loss_class": 2.0, "loss_bbox_0": 0.5})
    plain, weighted = crit(outputs, targets), crit.weighted_losses(outputs, targets)
    for k, v in plain.items():
        factor = {"loss_class": 2.0, "loss_bbox_0": 0.5}.get(k, 1.0)  # keys without a weight count once
        assert torch.allclose(weighted[k], v * factor)
    assert torch.allclose(weighted.total, sum(weighted.values()))


def test_one_host_transfer_for_all_sets_and_groups():
    """8 sets x 2 images with denoising, plus two-stage proposals: one device-to-host read in all."""
    g = torch.Generator().manual_seed(8)
    outputs = random_set(2, 10, g, torch.float32)
    outputs["aux_outputs"] = [random_set(2, 10, g, torch.float32) for _ in range(7)]
    outputs["enc_outputs"] = random_set(2, 30, g, torch.float32)
    targets = random_targets((3, 4), g, torch.float32)
    with OpCounter() as counter:
        losses = DeformableCriterion(K, HungarianMatcher(2.0, 5.0, 2.0), WEIGHTS).weighted_losses(outputs, targets)
        losses.total.backward()
    assert counter.total("syncs") == 1
    assert len(losses) == 27


def test_keys_are_listed_in_detrex_log_order_and_the_vector_keeps_its_own():
    """Final-set keys first, then the auxiliary sets, denoising after matching; ``vector_keys`` pairs the vector."""
    g = torch.Generator().manual_seed(11)
    b, q, groups, m = 2, 5, 2, 2
    outputs = random_set(b, q, g, torch.float64)
    outputs["aux_outputs"] = [random_set(b, q, g, torch.float64) for _ in range(2)]
    dn = random_set(b, groups * m, g, torch.float64)
    dn["aux_outputs"] = [random_set(b, groups * m, g, torch.float64) for _ in range(2)]
    outputs.update(denoising_output=dn, denoising_groups=groups, max_gt_num_per_image=m)
    new, _ = pair(DNCriterion, RefDNCriterion)
    losses = new.weighted_losses(outputs, random_targets((2, 1), g, torch.float64))
    names = ["loss_class", "loss_bbox", "loss_giou"]
    expected = names + [n + s for s in ("_0", "_1") for n in names]
    expected += [n + "_dn" for n in names] + [n + s for s in ("_dn_0", "_dn_1") for n in names]
    assert list(losses) == expected
    assert losses.vector_keys != tuple(expected)  # the vector is in set order, so the pairing below is tested
    by_vector = dict(zip(losses.vector_keys, losses.vector.unbind()))
    for key, value in losses.items():
        assert torch.equal(value, by_vector[key])
