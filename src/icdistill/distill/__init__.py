"""Distillation: the method slot, the methods, the Distiller.

This package is also callable: ``icdistill.distill(config, out=None, overrides=(), resume=False,
progress=True)`` is the Python API's :func:`icdistill.api.distill`. Both must answer to the one
name ``icdistill.distill``, and Python sets a package's attribute to its subpackage whenever the
subpackage is imported, so a function of that name in ``icdistill/__init__.py`` would be
replaced by this package depending on import order; a callable package is the same object
every time.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """:func:`icdistill.api.distill`: distil a student; returns an :class:`icdistill.api.Result`."""
        from icdistill.api import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
