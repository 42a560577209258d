"""Saving and resuming with checkpointables; files contain no OmegaConf objects."""
import torch
from torch import nn

from detrex.checkpoint import DetectionCheckpointer


class _State:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, sd):
        self.value = sd["value"]


def test_save_writes_last_checkpoint_and_resume_loads_checkpointables(tmp_path):
    model = nn.Linear(3, 2)
    state = _State()
    state.value = 11
    ck = DetectionCheckpointer(model, str(tmp_path), trainer=state)
    ck.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000009.pth"
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert set(data) == {"model", "trainer", "iteration"}

    model2, state2 = nn.Linear(3, 2), _State()
    ck2 = DetectionCheckpointer(model2, str(tmp_path), trainer=state2)
    assert ck2.has_checkpoint()
    # without resume: only the model weights of the given path
    ck2.resume_or_load(str(tmp_path / "model_0000009.pth"), resume=False)
    assert torch.equal(model2.weight, model.weight) and state2.value == 0
    # with resume: last_checkpoint, with checkpointables
    extra = ck2.resume_or_load("", resume=True)
    assert state2.value == 11 and extra["iteration"] == 9


def test_load_empty_path_means_from_scratch():
    model = nn.Linear(2, 2)
    before = model.weight.clone()
    assert DetectionCheckpointer(model).load("") == {}
    assert torch.equal(model.weight, before)
