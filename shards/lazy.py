"""A module that is imported on the first use of one of its names.

``pyarrow.compute`` builds some 300 Python wrappers when it is imported (60-100 ms here, a
tenth of ``shards build`` on 100 MB of txt, which never calls it).  The modules that call it
only on some inputs hold this stand-in instead: ``from shards.lazy import compute as pc``.
"""
from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module ``name``; the first attribute looked up imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


compute = LazyModule("pyarrow.compute")
