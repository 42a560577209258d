"""``dataloader.train.skip_bad_images``: the real training loader (DetrDatasetMapper, DataLoader workers) replaces
an unreadable image by another sample, logs its path once, counts every skip (event storage + checkpointed
loader state) and stops past the threshold."""
import logging

import numpy as np
import pytest
from PIL import Image

import detrex.data.transforms as T
from detrex.data import DetrDatasetMapper, build_detection_train_loader
from detrex.data.bad_images import SKIPPED_KEY, BadImageTracker
from detrex.data.detection_utils import BadImageError
from detrex.utils.events import EventStorage


def _dicts(root, n=12, bad=(4,)):
    out = []
    for i in range(n):
        path = root / f"{i}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            Image.fromarray(np.full((24, 32, 3), i, np.uint8)).save(path)
        out.append({"file_name": str(path), "image_id": i, "height": 24, "width": 32,
                    "annotations": [{"bbox": [2, 3, 10, 8], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}]})
    return out


def _loader(dicts, **kwargs):
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(24)], None, is_train=True)
    return build_detection_train_loader(dicts, mapper=mapper, total_batch_size=4, aspect_ratio_grouping=False,
                                        seed=0, **kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_is_replaced_logged_once_and_counted(tmp_path, caplog, workers):
    dicts = _dicts(tmp_path)
    loader = _loader(dicts, skip_bad_images=True, max_bad_image_fraction=0.1, num_workers=workers)
    caplog.set_level(logging.WARNING, logger="detrex.data.bad_images")
    with EventStorage(0) as storage:
        batches = []
        for batch in loader:  # 9 batches of 4 = 3 epochs of the 12 images
            batches.append(batch)
            storage.step()
            if len(batches) == 9:
                break
    assert all(len(b) == 4 for b in batches)
    seen = [d["image_id"] for b in batches for d in b]
    assert 4 not in seen and all(SKIPPED_KEY not in d for b in batches for d in b)
    assert loader.bad_images.num_skips == 3 and loader.bad_images.files == {dicts[4]["file_name"]: 3}
    logged = [r.getMessage() for r in caplog.records if "Skipped a bad training image" in r.getMessage()]
    assert len(logged) == 1 and dicts[4]["file_name"] in logged[0]
    assert storage.history("bad_images_skipped").values()[-1][0] == 3
    state = loader.state_dict()
    assert state["bad_images"] == {"num_skips": 3, "files": {dicts[4]["file_name"]: 3}}
    resumed = _loader(dicts, skip_bad_images=True, max_bad_image_fraction=0.1)
    resumed.load_state_dict(state)
    assert resumed.bad_images.num_skips == 3  # the count continues after a resume


def test_without_skipping_the_first_bad_image_stops_with_its_name(tmp_path):
    dicts = _dicts(tmp_path)
    with pytest.raises(BadImageError, match="4.png"):
        for _ in zip(range(9), _loader(dicts)):
            pass
    assert "bad_images" not in _loader(dicts).state_dict()  # clean runs keep the old loader state


def test_threshold_counts_distinct_files():
    tracker = BadImageTracker(dataset_size=300, max_fraction=0.01)  # 3 files allowed
    for i in range(3):
        tracker.consume([{SKIPPED_KEY: [(f"f{i}.jpg", "bad")]}, {SKIPPED_KEY: [(f"f{i}.jpg", "bad")]}])
    assert tracker.num_skips == 6 and len(tracker.files) == 3
    with pytest.raises(BadImageError, match=r"4 distinct training images could not be used \(of 300\)"):
        tracker.consume([{SKIPPED_KEY: [("f9.jpg", "bad")]}])
    assert BadImageTracker(10, 0.01).allowed == 1  # at least one file is tolerated
    with pytest.raises(ValueError, match="max_bad_image_fraction"):
        BadImageTracker(10, 1.5)


def test_skip_needs_a_mapper_that_can_skip(tmp_path):
    with pytest.raises(ValueError, match="skip_bad_images=True needs a mapper"):
        build_detection_train_loader(_dicts(tmp_path), mapper=lambda d: d, total_batch_size=2, skip_bad_images=True)
