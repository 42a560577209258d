"""Fixtures for the evaluation tests: the default shapes set (generated once per session) and dataset names."""

import uuid

import pytest


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """Root holding the DEFAULT shapes set, generated once per test session into the session tmp dir."""
    from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes

    root = str(tmp_path_factory.getbasetemp() / "shapes_cache")
    ensure_shapes(ShapesConfig(), root)
    return root


@pytest.fixture
def unique_name():
    from detrex.data import DatasetCatalog, MetadataCatalog

    names = []

    def make(prefix="eval_ds"):
        n = f"{prefix}_{uuid.uuid4().hex[:8]}"
        names.append(n)
        return n

    yield make
    for n in names:
        DatasetCatalog.pop(n, None)
        MetadataCatalog.pop(n, None)
