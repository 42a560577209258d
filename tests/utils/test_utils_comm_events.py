"""comm without a process group; EventStorage and the writers."""
import json
import logging

import pytest
import torch

from detrex.utils import comm
from detrex.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)


def test_comm_single_process():
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0 and comm.get_local_rank() == 0 and comm.get_local_size() == 1
    assert comm.is_main_process()
    comm.synchronize()  # no-op
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather(3) == [3]
    seed = comm.shared_random_seed()
    assert isinstance(int(seed), int) and 0 <= seed < 2**31
    d = {"x": torch.tensor(2.0)}
    assert comm.reduce_dict(d) is d


def test_event_storage_smoothing_and_scopes():
    with EventStorage(start_iter=5) as storage:
        assert get_event_storage() is storage
        for i, v in enumerate([1.0, 100.0, 3.0]):
            storage.iter = 5 + i
            storage.put_scalar("loss", v)
            storage.put_scalar("lr", v * 10, smoothing_hint=False)
        with storage.name_scope("val"):
            storage.put_scalar("acc", torch.tensor(0.5), smoothing_hint=False)
        latest = storage.latest_with_smoothing_hint(window_size=3)
        assert latest["loss"] == (3.0, 7)  # median of 1, 100, 3
        assert latest["lr"] == (30.0, 7)  # not smoothed
        assert latest["val/acc"] == (0.5, 7)
        with pytest.raises(AssertionError, match="smoothing_hint"):
            storage.put_scalar("lr", 1.0, smoothing_hint=True)
    with pytest.raises(AssertionError):
        get_event_storage()


def test_json_writer_appends_one_line_per_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    with EventStorage(0) as storage:
        writer = JSONWriter(str(path), window_size=1)
        for it in range(3):
            storage.iter = it
            storage.put_scalars(loss_a=float(it), lr=0.1)
            if it != 1:  # iteration 1 is never written: only the latest values are kept
                writer.write()
        writer.write()  # nothing new: no duplicate line
        writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [0, 2]
    assert [d["loss_a"] for d in lines] == [0.0, 2.0]
    # appends (resume continues the same file)
    with EventStorage(3) as storage:
        w = JSONWriter(str(path))
        storage.put_scalar("loss_a", 9.0)
        w.write()
        w.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"iteration": 3, "loss_a": 9.0}


def test_tensorboard_writer_writes_event_file(tmp_path):
    with EventStorage(0) as storage:
        w = TensorboardXWriter(str(tmp_path))
        storage.put_scalar("total_loss", 1.5)
        w.write()
        w.close()
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_common_metric_printer_line(caplog):
    printer = CommonMetricPrinter(max_iter=100)
    with EventStorage(0) as storage:
        for it in range(4):
            storage.iter = it
            storage.put_scalars(total_loss=2.0, loss_ce=1.5, time=0.5, data_time=0.1)
            storage.put_scalar("lr", 1e-4, smoothing_hint=False)
        logger = logging.getLogger("detrex.utils.events")
        old, logger.propagate = logger.propagate, False  # records reach caplog once, directly
        logger.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="detrex.utils.events"):
                printer.write()
        finally:
            logger.removeHandler(caplog.handler)
        logger.propagate = old
    msg = caplog.records[-1].getMessage()
    for part in ("eta: 0:00:48", "iter: 3", "total_loss: 2", "loss_ce: 1.5", "time: 0.5000",
                 "data_time: 0.1000", "lr: 0.0001", "max_mem: "):
        assert part in msg, (part, msg)


def test_tensorboard_missing_warns_once_and_skips(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logger = logging.getLogger("detrex.utils.events")
    old, logger.propagate = logger.propagate, False  # records reach caplog once, directly
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="detrex.utils.events"):
            w = TensorboardXWriter(str(tmp_path / "tb"))
            with EventStorage(0) as storage:
                storage.put_scalar("loss", 1.0)
                w.write()
            w.close()
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = old
    warnings = [r for r in caplog.records if "tensorboard" in r.getMessage().lower()]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0].getMessage()
    assert not list(tmp_path.glob("**/events.out.tfevents.*"))
