import pytest


@pytest.fixture(autouse=True)
def _every_test_one_thread(one_thread):
    """Tiny CPU models: every test here runs with one intra-op thread (``one_thread``, tests/conftest.py)."""
