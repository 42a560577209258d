"""The real training loader (build_detection_train_loader) resumes exactly at any batch, and its
batches do not depend on DataLoader workers or on the number of processes."""
import itertools

import pytest
import torch

from detrex.data.build import build_detection_train_loader
from detrex.utils import comm
from detrex.utils.testing import TinyRegressionMapper, tiny_regression_dicts


def _loader(grouping=True, workers=0, total=8):
    return build_detection_train_loader(
        tiny_regression_dicts(20, seed=3), mapper=TinyRegressionMapper(noise=0.5), total_batch_size=total,
        aspect_ratio_grouping=grouping, num_workers=workers, seed=11)


def _take(loader, n):
    return [[(d["image_id"], d["x"]) for d in b] for b in itertools.islice(iter(loader), n)]


def _same(a, b):
    assert [[i for i, _ in batch] for batch in a] == [[i for i, _ in batch] for batch in b]
    for ba, bb in zip(a, b):
        for (_, xa), (_, xb) in zip(ba, bb):
            assert torch.equal(xa, xb)  # the random "augmentation" too


@pytest.mark.parametrize("grouping", [True, False])
def test_resumed_loader_continues_exactly(grouping):
    full = _take(_loader(grouping), 9)
    first = _loader(grouping)
    _take(first, 4)
    state = first.state_dict()
    assert state == {"num_batches": 4, "seed": 11}
    resumed = _loader(grouping)
    resumed.load_state_dict(state)
    _same(_take(resumed, 5), full[4:])
    assert resumed.state_dict()["num_batches"] == 9
    if grouping:  # one orientation per batch
        dicts = tiny_regression_dicts(20, seed=3)
        for b in full:
            assert len({dicts[i]["width"] > dicts[i]["height"] for i, _ in b}) == 1


def test_workers_do_not_change_batches_or_augmentation():
    ref = _take(_loader(workers=0), 6)
    resumed = _loader(workers=2)
    resumed.load_state_dict({"num_batches": 2, "seed": 11})
    _same(_take(resumed, 4), ref[2:])


def test_two_ranks_together_see_the_global_batches_of_one(monkeypatch):
    one = _take(_loader(), 5)
    parts = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        parts.append(_take(_loader(), 5))
    _same([a + b for a, b in zip(*parts)], one)
