"""detrex.structures: Instances (incl. pickling, needed by DataLoader workers), Boxes, BoxMode, ImageList."""
import pickle

import numpy as np
import pytest
import torch

from detrex.structures import Boxes, BoxMode, ImageList, Instances, pairwise_iou


def _instances():
    return Instances(
        (4, 5),
        gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]])),
        gt_classes=torch.tensor([1, 2]),
    )


def test_instances_pickle_round_trip():
    inst = pickle.loads(pickle.dumps(_instances()))
    assert inst.image_size == (4, 5)
    assert torch.equal(inst.gt_classes, torch.tensor([1, 2]))
    assert torch.equal(inst.gt_boxes.tensor, _instances().gt_boxes.tensor)


def test_instances_through_dataloader_workers():
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"instances": _instances(), "i": i}

    loader = torch.utils.data.DataLoader(DS(), batch_size=None, num_workers=1)
    got = [d["instances"] for d in loader]
    assert [len(x) for x in got] == [2, 2]


def test_instances_fields_indexing_and_errors():
    inst = _instances()
    kept = inst[inst.gt_boxes.nonempty()]
    assert len(kept) == 1 and kept.gt_classes.tolist() == [1]
    assert inst.has("gt_boxes") and not inst.has("scores")
    with pytest.raises(AttributeError, match="scores"):
        inst.scores
    with pytest.raises(ValueError, match="length"):
        inst.scores = torch.ones(3)
    both = Instances.cat([inst, inst])
    assert len(both) == 4


def test_boxes_clip_scale_area_and_iou():
    b = Boxes(torch.tensor([[-1.0, 2.0, 12.0, 8.0]]))
    b.clip((6, 10))
    assert b.tensor.tolist() == [[0.0, 2.0, 10.0, 6.0]]
    assert b.area().tolist() == [40.0]
    b.scale(0.5, 2.0)
    assert b.tensor.tolist() == [[0.0, 4.0, 5.0, 12.0]]
    iou = pairwise_iou(Boxes(torch.tensor([[0.0, 0, 2, 2]])), Boxes(torch.tensor([[1.0, 1, 3, 3], [5.0, 5, 6, 6]])))
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0]]))


def test_boxmode_convert_keeps_type():
    assert BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [1.0, 2.0, 4.0, 6.0]
    arr = BoxMode.convert(np.array([[1.0, 2, 4, 6]]), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert isinstance(arr, np.ndarray) and arr.tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_image_list_pads_bottom_right_with_divisibility_and_mask():
    il = ImageList.from_tensors([torch.ones(3, 4, 5), torch.ones(3, 2, 3)], size_divisibility=4)
    assert il.tensor.shape == (2, 3, 4, 8)
    assert il.image_sizes == [(4, 5), (2, 3)]
    assert il.tensor[1, :, 2:, :].abs().sum() == 0 and il.tensor[1, :, :, 3:].abs().sum() == 0
    mask = il.padding_mask()
    assert mask[1].sum() == 4 * 8 - 2 * 3 and not mask[0, :, :5].any() and mask[0, :, 5:].all()
    assert il[1].shape == (3, 2, 3)
