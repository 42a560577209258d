"""Fixtures for the reliability tests (helpers live in reliability_utils.py): one uninterrupted baseline
run of ``tiny_regressor_loader.py`` (real TrainingSampler loader, 24 iterations) per session."""
import pytest

from reliability_utils import LOADER_CONFIG, run


@pytest.fixture(scope="session")
def loader_baseline(tmp_path_factory):
    """One uninterrupted run of tiny_regressor_loader.py (24 iterations, deterministic)."""
    root = tmp_path_factory.mktemp("loader_baseline")
    out = root / "out"
    run(LOADER_CONFIG, f"train.output_dir={out}", cwd=root)
    return out
