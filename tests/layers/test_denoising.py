"""DN-DETR denoising queries: layout, attention mask, noise bounds, post-processing, devices."""

import pytest
import torch

from detrex.layers import inverse_sigmoid
from detrex.layers.denoising import GenerateDNQueries, apply_box_noise, apply_label_noise, dn_post_process

torch.set_num_threads(1)

LABELS = [torch.tensor([1, 4]), torch.tensor([0, 2, 3])]
BOXES = [
    torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.6, 0.5, 0.3, 0.4]]),
    torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.7, 0.1, 0.2], [0.8, 0.3, 0.2, 0.2]]),
]


def generator(groups=5, queries=7, dim=16, classes=6, with_indicator=True, **kw):
    torch.manual_seed(0)
    return GenerateDNQueries(queries, classes, dim, groups, with_indicator=with_indicator, **kw)


def test_shapes_and_layout_without_noise():
    gen = generator(groups=4, label_noise_prob=0.0, box_noise_scale=0.0)
    labels, boxes, mask, groups, m = gen(LABELS, BOXES)
    assert (groups, m) == (4, 3)
    assert labels.shape == (2, 12, 16) and boxes.shape == (2, 12, 4) and mask.shape == (19, 19)
    assert mask.dtype == torch.bool
    emb = gen.label_encoder.weight
    for g in range(4):
        for i, (lab, box) in enumerate(zip(LABELS, BOXES)):
            for j in range(len(lab)):
                slot = g * 3 + j
                assert torch.equal(labels[i, slot, :15], emb[lab[j]])
                assert labels[i, slot, 15] == 1  # indicator
                assert torch.allclose(boxes[i, slot], inverse_sigmoid(box[j]))
    # image 0 has 2 objects: its third slot of every group is zero padding
    for g in range(4):
        assert (labels[0, g * 3 + 2] == 0).all() and (boxes[0, g * 3 + 2] == 0).all()


def test_without_indicator_the_encoder_is_full_width():
    gen = generator(with_indicator=False, label_noise_prob=0.0, box_noise_scale=0.0)
    assert gen.label_encoder.weight.shape == (6, 16)
    labels, *_ = gen(LABELS, BOXES)
    assert torch.equal(labels[1, 0], gen.label_encoder.weight[0])
    assert gen.matching_label_queries(2).shape == (2, 7, 16)


def test_attention_mask_structure():
    groups, m, q = 3, 2, 4
    mask = generator(groups=groups, queries=q).generate_query_masks(m)
    n_dn = groups * m
    for r in range(n_dn + q):
        for c in range(n_dn + q):
            r_group = r // m if r < n_dn else None
            c_group = c // m if c < n_dn else None
            if r_group is None:  # matching query: sees only matching queries
                blocked = c_group is not None
            else:  # denoising query: sees its own group and the matching queries
                blocked = c_group is not None and c_group != r_group
            assert bool(mask[r, c]) == blocked, (r, c)


def test_matching_label_queries_are_the_no_object_embedding():
    gen = generator()
    q = gen.matching_label_queries(3)
    assert q.shape == (3, 7, 16)
    assert torch.equal(q[2, 5, :15], gen.label_encoder.weight[-1]) and (q[..., 15] == 0).all()


def test_box_noise_bounds():
    torch.manual_seed(0)
    boxes = torch.rand(5000, 4) * 0.5 + 0.25
    noised = apply_box_noise(boxes, 0.4)
    w, h = boxes[:, 2], boxes[:, 3]
    eps = 1e-6
    assert ((noised[:, 0] - boxes[:, 0]).abs() <= 0.4 * w / 2 + eps).all()
    assert ((noised[:, 1] - boxes[:, 1]).abs() <= 0.4 * h / 2 + eps).all()
    assert ((noised[:, 2] - w).abs() <= 0.4 * w + eps).all()
    assert ((noised[:, 3] - h).abs() <= 0.4 * h + eps).all()
    assert (noised >= 0).all() and (noised <= 1).all()
    # the noise fills its range (uniform): some centres move by more than 90 % of the bound
    assert ((noised[:, 0] - boxes[:, 0]).abs() > 0.9 * 0.4 * w / 2).any()
    assert not torch.equal(noised, boxes)
    # clamping at the image border
    edge = apply_box_noise(torch.tensor([[0.01, 0.99, 0.9, 0.9]] * 200), 1.0)
    assert (edge >= 0).all() and (edge <= 1).all() and (edge == 0).any() and (edge == 1).any()
    assert torch.equal(apply_box_noise(boxes, 0.0), boxes)


def test_label_noise_rate_and_range():
    torch.manual_seed(0)
    labels = torch.zeros(20000, dtype=torch.long)
    noised = apply_label_noise(labels, 0.2, num_classes=81)
    assert (labels == 0).all()  # input untouched
    assert noised.min() >= 0 and noised.max() <= 80
    changed = (noised != 0).float().mean().item()
    assert abs(changed - 0.2 * 80 / 81) < 0.02  # replaced w.p. 0.2 by a uniform id (may be the same)
    assert torch.equal(apply_label_noise(labels, 0.0, 81), labels)


def test_no_ground_truth_gives_no_denoising_queries():
    gen = generator()
    labels, boxes, mask, groups, m = gen([torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0, 4)] * 2)
    assert m == 0 and labels.shape == (2, 0, 16) and boxes.shape == (2, 0, 4)
    assert mask.shape == (7, 7) and not mask.any()


def test_bad_inputs_raise_clear_errors():
    gen = generator()
    with pytest.raises(ValueError, match="image 0 has 2 labels"):
        gen([torch.tensor([1, 2])], [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="one labels and one boxes"):
        gen([], [])


def test_device_agnostic_on_meta_device():
    gen = generator().to("meta")
    labels = [t.to("meta") for t in LABELS]
    boxes = [t.to("meta") for t in BOXES]
    q_labels, q_boxes, mask, _, m = gen(labels, boxes)
    assert m == 3
    assert q_labels.device.type == q_boxes.device.type == mask.device.type == "meta"
    assert gen.matching_label_queries(2).device.type == "meta"


def test_dn_post_process_splits_queries():
    L, B, G, M, Q, K = 3, 2, 4, 2, 5, 6
    cls = torch.randn(L, B, G * M + Q, K)
    box = torch.rand(L, B, G * M + Q, 4)
    m_cls, m_box, dn = dn_post_process(cls, box, G, M, aux_loss=True)
    assert torch.equal(m_cls, cls[:, :, G * M :]) and torch.equal(m_box, box[:, :, G * M :])
    assert torch.equal(dn["pred_logits"], cls[-1, :, : G * M]) and torch.equal(dn["pred_boxes"], box[-1, :, : G * M])
    assert len(dn["aux_outputs"]) == L - 1
    assert torch.equal(dn["aux_outputs"][0]["pred_boxes"], box[0, :, : G * M])
    assert "aux_outputs" not in dn_post_process(cls, box, G, M, aux_loss=False)[2]
    same_cls, same_box, none = dn_post_process(cls, box, G, 0)
    assert none is None and same_cls is cls and same_box is box
