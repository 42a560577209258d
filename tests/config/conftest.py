"""Shared helpers for the LazyConfig tests."""

import logging
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parent / "configs"


@pytest.fixture
def configs_dir() -> Path:
    """The small config tree under tests/config/configs (read-only)."""
    return CONFIGS


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.WARNING):
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def config_log():
    """Records of the detrex.config loggers, captured directly (independent of propagation settings)."""
    handler = _ListHandler()
    loggers = [logging.getLogger("detrex.config.lazy"), logging.getLogger("detrex.config.instantiate")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, old_levels):
        lg.removeHandler(handler)
        lg.setLevel(level)
