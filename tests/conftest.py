"""Suite-wide fixtures.

``one_thread``: the test runs with one intra-op torch thread. Tiny CPU models gain nothing from more, and on a shared
(or ``pytest -n``) machine extra threads only contend. Directories of such tests request it for every test (their
``conftest.py``); single modules with ``pytestmark = pytest.mark.usefixtures("one_thread")``.

``setup_logger`` (called in-process by ``default_setup`` and the tools) turns propagation off on
the ``detrex``/``projects``/``fvcore`` loggers, as detectron2 does; pytest's ``caplog`` listens on
the root logger, so a later test would then see no records. Each test starts from, and leaves
behind, the logging state pytest set up.
"""
import logging

import pytest

try:
    from detrex.utils.logger import DEFAULT_EXTRA_NAMES
except ModuleNotFoundError as e:
    # a GPU machine with torch only (no iopath / termcolor) can still run tests/layers/test_msda_cuda.py, which
    # never calls setup_logger
    if e.name not in ("iopath", "termcolor", "portalocker"):
        raise
    DEFAULT_EXTRA_NAMES = ()

_CONFIGURED = ("detrex", *DEFAULT_EXTRA_NAMES)


@pytest.fixture(autouse=True)
def _restore_logging_state():
    saved = {}
    for name in _CONFIGURED:
        lg = logging.getLogger(name)
        saved[name] = (lg.propagate, lg.level, list(lg.handlers))
    yield
    for name, (propagate, level, handlers) in saved.items():
        lg = logging.getLogger(name)
        lg.propagate, lg.level, lg.handlers = propagate, level, handlers


@pytest.fixture
def one_thread():
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
