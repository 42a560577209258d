"""Atomic checkpoint writes, resume fallback past missing/corrupt files, metrics.json trimming and
the event-storage state (unit level, fast)."""
import json
import logging

import pytest
import torch
from torch import nn

from detrex.checkpoint import CheckpointError, DetectionCheckpointer
from detrex.utils.events import EventStorage, truncate_metrics_json


class _State:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, sd):
        self.value = sd["value"]


def _ck(tmp_path, value=0):
    model = nn.Linear(3, 2)
    state = _State(value)
    return model, state, DetectionCheckpointer(model, str(tmp_path), trainer=state)


def test_crash_during_write_keeps_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model, state, ck = _ck(tmp_path, value=1)
    ck.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    real_save = torch.save

    def crash_midway(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000003", iteration=3)
    monkeypatch.setattr(torch, "save", real_save)
    # neither a partial model_0000003.pth nor a temp file; the tag still names the good file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before


def test_resume_falls_back_past_missing_and_truncated_files(tmp_path, caplog):
    model, state, ck = _ck(tmp_path)
    for it in (1, 3, 5):
        state.value = it
        ck.save(f"model_{it:07d}", iteration=it)
    # newest file truncated (e.g. copied or written by another tool), tag pointing to a missing file
    data = (tmp_path / "model_0000005.pth").read_bytes()
    (tmp_path / "model_0000005.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    # a temp file left by a killed writer is removed on resume
    (tmp_path / ".model_0000007.pth.tmp.123").write_bytes(b"junk")

    model2, state2, ck2 = _ck(tmp_path)
    with caplog.at_level(logging.WARNING):
        extra = ck2.resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and state2.value == 3
    assert ck2.resumed_from == str(tmp_path / "model_0000003.pth")
    assert torch.equal(model2.weight, model.weight)
    text = caplog.text
    assert "model_0000009.pth, which does not exist" in text
    assert "model_0000005.pth" in text and "trying an older checkpoint" in text
    assert not (tmp_path / ".model_0000007.pth.tmp.123").exists()


def test_resume_without_tag_uses_newest_file(tmp_path):
    # killed after the checkpoint file was renamed into place but before the tag was written
    model, state, ck = _ck(tmp_path, value=4)
    ck.save("model_0000004", iteration=4)
    (tmp_path / "last_checkpoint").unlink()
    _, state2, ck2 = _ck(tmp_path)
    assert ck2.has_checkpoint()
    assert ck2.resume_or_load("", resume=True)["iteration"] == 4 and state2.value == 4


def test_resume_with_only_corrupt_files_names_them(tmp_path):
    (tmp_path / "model_0000001.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    _, _, ck = _ck(tmp_path)
    with pytest.raises(CheckpointError, match="model_0000001.pth"):
        ck.resume_or_load("", resume=True)


def test_resume_in_empty_dir_loads_init_weights(tmp_path):
    src = nn.Linear(3, 2)
    torch.save(src.state_dict(), tmp_path / "init.pth")
    model, _, ck = _ck(tmp_path / "run")
    ck.resume_or_load(str(tmp_path / "init.pth"), resume=True)
    assert ck.resumed_from is None and torch.equal(model.weight, src.weight)


def test_truncate_metrics_json_drops_later_and_partial_lines(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i, "loss": float(i)}) for i in range(6)]
    path.write_text("\n".join(lines) + "\n" + '{"iteration": 6, "lo')  # cut off by a kill
    assert truncate_metrics_json(str(path), 3) == 3
    assert [json.loads(x)["iteration"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]
    assert truncate_metrics_json(str(path), 3) == 0
    assert truncate_metrics_json(str(tmp_path / "missing.json"), 3) == 0


def test_event_storage_state_restores_windowed_medians():
    with EventStorage(0) as a:
        for i in range(30):
            a.iter = i
            a.put_scalar("loss", float(i * i))
            a.put_scalar("lr", 0.1, smoothing_hint=False)
        state = a.state_dict()
    with EventStorage(30) as b:
        b.load_state_dict(state)
        assert b.latest() == {}  # restored iterations are not written again
        for s in (a, b):
            s.iter = 30
            s.put_scalar("loss", 5.0)
        assert b.latest_with_smoothing_hint(20)["loss"] == a.latest_with_smoothing_hint(20)["loss"]
        assert b.history("loss").global_avg() == pytest.approx(a.history("loss").global_avg())
        assert b.smoothing_hints()["lr"] is False
