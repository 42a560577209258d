"""Utilities: distributed helpers (``comm``), metrics storage (``events``), logging, file I/O.

Submodules are imported on demand (``from detrex.utils import comm``) to keep ``import detrex``
cheap.
"""
