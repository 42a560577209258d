import pytest
import torch

from detrex.modeling import DETRBase, detector_postprocess
from detrex.structures import Boxes, Instances


def test_pixel_stats_are_non_persistent_buffers_that_follow_to():
    m = DETRBase(pixel_mean=[1.0, 2.0, 3.0], pixel_std=[2.0, 2.0, 2.0])
    assert m.state_dict() == {}
    m = m.to(torch.float64)
    assert m.pixel_mean.dtype == torch.float64 and m.device == torch.device("cpu")


def test_preprocess_normalizes_then_pads_with_zero_and_mask():
    m = DETRBase(pixel_mean=[10.0, 20.0, 30.0], pixel_std=[2.0, 4.0, 5.0])
    a = torch.full((3, 4, 6), 50, dtype=torch.uint8)
    b = torch.full((3, 5, 3), 50, dtype=torch.uint8)
    images = m.preprocess_image([{"image": a}, {"image": b}])
    assert images.tensor.shape == (2, 3, 5, 6)
    assert images.image_sizes == [(4, 6), (5, 3)]
    assert torch.allclose(images.tensor[0, :, :4, :], torch.tensor([20.0, 7.5, 4.0]).view(3, 1, 1).expand(3, 4, 6))
    assert (images.tensor[0, :, 4:, :] == 0).all() and (images.tensor[1, :, :, 3:] == 0).all()
    mask = m.padding_mask(images)
    assert mask.dtype == torch.bool and mask.shape == (2, 5, 6)
    assert mask[0, 4].all() and not mask[0, :4].any()
    assert mask[1, :, 3:].all() and not mask[1, :, :3].any()
    small = m.downsample_mask(mask, (1, 2))
    assert small.dtype == torch.bool and small.tolist() == [[[False, False]], [[False, True]]]


def test_prepare_targets():
    m = DETRBase()
    inst = Instances((100, 200), gt_boxes=Boxes(torch.tensor([[20.0, 10.0, 60.0, 50.0]])), gt_classes=torch.tensor([7]))
    (t,) = m.prepare_targets([{"instances": inst}])
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [7]
    assert torch.allclose(t["boxes"], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    assert torch.equal(t["boxes_xyxy"], torch.tensor([[20.0, 10.0, 60.0, 50.0]]))
    assert t["image_size"].tolist() == [100, 200]
    with pytest.raises(KeyError, match="instances"):
        m.prepare_targets([{"image": torch.zeros(3, 2, 2)}])


def test_aux_packing():
    cls, box = torch.randn(4, 2, 3, 5), torch.rand(4, 2, 3, 4)
    aux = DETRBase._set_aux_loss(cls, box)
    assert len(aux) == 3
    assert torch.equal(aux[2]["pred_logits"], cls[2]) and torch.equal(aux[0]["pred_boxes"], box[0])


def test_inference_topk_and_postprocess():
    m = DETRBase(select_box_nums_for_evaluation=3)
    logits = torch.full((1, 4, 2), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 0] = 2.0  # second: query 0, class 0
    logits[0, 3, 0] = 1.0  # third
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    (r,) = m.inference(logits, boxes, [(100, 200)])
    assert r.image_size == (100, 200) and len(r) == 3
    assert r.pred_classes.tolist() == [1, 0, 0]
    assert torch.allclose(r.scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert torch.allclose(r.pred_boxes.tensor[0], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    assert torch.allclose(r.pred_boxes.tensor[1], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    out = m.postprocess([r], [{"height": 50, "width": 400}], [(100, 200)])[0]["instances"]
    assert out.image_size == (50, 400)
    assert torch.allclose(out.pred_boxes.tensor[1], torch.tensor([160.0, 15.0, 240.0, 35.0]))
    # requested size defaults to the input size
    same = m.postprocess([r], [{}], [(100, 200)])[0]["instances"]
    assert same.image_size == (100, 200)


def test_detector_postprocess_clips_and_drops_empty():
    r = Instances((10, 10))
    r.pred_boxes = Boxes(torch.tensor([[-5.0, 2.0, 20.0, 8.0], [12.0, 1.0, 15.0, 4.0]]))
    r.scores = torch.tensor([0.9, 0.8])
    r.pred_classes = torch.tensor([1, 2])
    out = detector_postprocess(r, 20, 20)
    assert len(out) == 1  # the second box lies outside the image -> empty after clipping
    assert torch.allclose(out.pred_boxes.tensor, torch.tensor([[0.0, 4.0, 20.0, 16.0]]))
