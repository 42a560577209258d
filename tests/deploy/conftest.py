import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny CPU models: one intra-op thread avoids contention on a shared machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
