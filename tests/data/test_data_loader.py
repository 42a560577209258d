"""Samplers, dataset wrappers and the train/test loaders (per-rank batches, aspect-ratio grouping)."""

import itertools

import numpy as np
import pytest
import torch

from detrex.data import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    InferenceSampler,
    MapDataset,
    TrainingSampler,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detrex.utils import comm


def _fake_world(monkeypatch, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_sampler_seeded_and_infinite():
    a = _take(TrainingSampler(10, seed=3), 35)
    assert a == _take(TrainingSampler(10, seed=3), 35)
    assert a != _take(TrainingSampler(10, seed=4), 35)
    for epoch in range(3):  # each epoch is a permutation
        assert sorted(a[epoch * 10 : epoch * 10 + 10]) == list(range(10))
    assert a[:10] != a[10:20]
    g = torch.Generator()
    g.manual_seed(3)
    assert a[:10] == torch.randperm(10, generator=g).tolist()  # detectron2's stream
    assert _take(TrainingSampler(4, shuffle=False, seed=0), 6) == [0, 1, 2, 3, 0, 1]


def test_training_sampler_sharding_disjoint(monkeypatch):
    full = _take(TrainingSampler(12, seed=1), 24)
    shards = []
    for r in range(3):
        _fake_world(monkeypatch, r, 3)
        shards.append(_take(TrainingSampler(12, seed=1), 8))
    assert [full[i] for i in range(24)] == [shards[i % 3][i // 3] for i in range(24)]
    first_epoch = [shards[r][i] for i in range(4) for r in range(3)]
    assert sorted(first_epoch) == list(range(12))  # disjoint within an epoch


def test_training_sampler_resume(monkeypatch):
    s = TrainingSampler(7, seed=5)
    it = iter(s)
    consumed = [next(it) for _ in range(9)]
    state = s.state_dict()
    assert state == {"seed": 5, "start_index": 9}
    rest = [next(it) for _ in range(10)]
    s2 = TrainingSampler(7, seed=0)
    s2.load_state_dict(state)
    assert _take(s2, 10) == rest
    assert _take(TrainingSampler(7, seed=5, start_index=9), 10) == rest
    assert consumed + rest == _take(TrainingSampler(7, seed=5), 19)
    # with 2 ranks, start_index counts global positions
    full = _take(TrainingSampler(7, seed=5), 40)
    _fake_world(monkeypatch, 1, 2)
    assert _take(TrainingSampler(7, seed=5, start_index=10), 4) == full[11:19:2]


@pytest.mark.parametrize("size, world", [(10, 3), (2, 4), (7, 1)])
def test_inference_sampler_contiguous_shards(monkeypatch, size, world):
    shards = []
    for r in range(world):
        _fake_world(monkeypatch, r, world)
        shards.append(list(InferenceSampler(size)))
    assert list(itertools.chain(*shards)) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dataset_from_list_serialized_roundtrip():
    items = [{"a": i, "b": [i] * i, "s": "x" * i} for i in range(5)]
    ds = DatasetFromList(items)
    assert len(ds) == 5 and [ds[i] for i in range(5)] == items
    assert isinstance(ds._lst, np.ndarray) and ds._lst.dtype == np.uint8  # one buffer, not python objects
    ds[2]["a"] = 100
    assert ds[2]["a"] == 2


def test_aspect_ratio_grouping():
    dicts = [
        {"width": w, "height": h, "i": i} for i, (w, h) in enumerate([(4, 2), (2, 4), (5, 3), (3, 3), (6, 1), (1, 6)])
    ]
    batches = list(AspectRatioGroupedDataset(dicts, 2))
    got = [[d["i"] for d in b] for b in batches]
    assert got == [[0, 2], [1, 3]]  # (6, 1) and (1, 6) still wait in their buckets


def _dicts(n=12):
    out = []
    for i in range(n):
        w, h = (30, 20) if i % 3 else (20, 30)
        out.append({"image_id": i, "width": w, "height": h, "annotations": [{"iscrowd": 0}] if i != 5 else []})
    return out


def _identity_mapper(d):
    return dict(d, mapped=True)


def test_train_loader_per_rank_batches(monkeypatch):
    _fake_world(monkeypatch, 1, 2)
    loader = build_detection_train_loader(_dicts(), mapper=_identity_mapper, total_batch_size=4, seed=0)
    batches = list(itertools.islice(iter(loader), 6))
    for b in batches:
        assert len(b) == 2 and all(d["mapped"] for d in b)
        assert len({d["width"] > d["height"] for d in b}) == 1  # same orientation within a batch
    with pytest.raises(ValueError, match="divisible"):
        build_detection_train_loader(_dicts(), mapper=_identity_mapper, total_batch_size=3, seed=0)


def test_train_loader_without_grouping_and_same_seed_same_order():
    mk = lambda: build_detection_train_loader(
        _dicts(), mapper=None, total_batch_size=3, aspect_ratio_grouping=False, seed=7
    )
    a = [[d["image_id"] for d in b] for b in itertools.islice(iter(mk()), 5)]
    b = [[d["image_id"] for d in b] for b in itertools.islice(iter(mk()), 5)]
    assert a == b and all(len(x) == 3 for x in a)


def test_train_loader_with_workers():
    loader = build_detection_train_loader(_dicts(), mapper=_identity_mapper, total_batch_size=2, num_workers=2, seed=0)
    batches = list(itertools.islice(iter(loader), 4))
    assert all(len(b) == 2 and b[0]["mapped"] for b in batches)


def test_test_loader_covers_all_in_order():
    loader = build_detection_test_loader(_dicts(), mapper=_identity_mapper)
    ids = [b[0]["image_id"] for b in loader]
    assert ids == list(range(12))  # batch size 1, including the image without annotations
    loader = build_detection_test_loader(_dicts(), mapper=None, batch_size=5)
    assert [len(b) for b in loader] == [5, 5, 2]


def test_map_dataset_passes_through():
    ds = MapDataset(DatasetFromList([1, 2, 3]), lambda x: x * 10)
    assert [ds[i] for i in range(3)] == [10, 20, 30]
