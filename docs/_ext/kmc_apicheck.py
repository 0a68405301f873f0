"""Fail the docs build when a public name has no entry in the API reference.

The public names are ``kmemcache.__all__`` and the ``__all__`` of the submodules
programs import (``PUBLIC_MODULES``). Each must be described somewhere in the docs
as a Python object, under its own module's name or re-exported from ``kmemcache``;
a missing one is a warning, so ``sphinx -W`` fails.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: The modules whose ``__all__`` is public. Submodules of the package are not
#: names of their own here (each has its section).
PUBLIC_MODULES = (
    "kmemcache",
    "kmemcache.kmalloc",
    "kmemcache.allocinfo",
    "kmemcache.debug",
    "kmemcache.pickling",
    "kmemcache.dask",
    "kmemcache.numpy",
    "kmemcache.shared",
    "kmemcache.publishing",
    "kmemcache.top",
)


def missing(documented: set[str]) -> list[str]:
    """Public names with no entry among ``documented`` (full dotted names)."""
    out = []
    for name in PUBLIC_MODULES:
        importlib.import_module(name)
        module = sys.modules[name]  # kmemcache.kmalloc: the module, not the function
        for attr in getattr(module, "__all__", []):
            value = getattr(module, attr)
            if type(value).__name__ == "module":
                continue
            if f"{name}.{attr}" not in documented and f"kmemcache.{attr}" not in documented:
                out.append(f"{name}.{attr}")
    return out


def _check(app: Any, env: Any) -> None:
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    for name in missing(documented):
        logging.getLogger(__name__).warning(
            "public name %s has no entry in the API reference (docs/api.rst)", name
        )


def setup(app: Any) -> dict[str, Any]:
    app.connect("env-check-consistency", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
