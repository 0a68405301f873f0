"""kmemcache: Linux's slab object caches (kmem_cache) for Python.

Memory that is aligned, pooled, checked and inspectable, in one process or
shared between processes (``SharedCache``)::

    from kmemcache import Cache

    with Cache("task_ctx", 1512, align=64) as cache:
        ctx = cache.zalloc()          # 1512 zeroed bytes on a 64-byte boundary
        view = memoryview(ctx)        # no copy; numpy.frombuffer(ctx) works too
        ...
        view.release()
        ctx.free()
"""

from __future__ import annotations

import os as _os
from typing import Any as _Any

from . import _kmemcache as _core
from . import allocinfo, debug, pickling
from . import cache as _cache
from .cache import MAX_ALIGN, MAX_SIZE, MIN_ALIGN, PAGE_SIZE, Cache, Object, SlabStats
from .errors import (
    CacheBusyError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PoisonError,
    RedzoneError,
    SlabError,
    SlabWarning,
    StaleObjectError,
)
from .flags import Flags
from .groups import GroupEvents, MemoryGroup, MemoryLimitError
from .kmalloc import kcalloc, kfree, kmalloc, krealloc, ksize, kzalloc
from .publishing import publish
from .shared import SharedCache, SharedObject
from .slabinfo import slabinfo

#: The version, defined here only (pyproject.toml reads it).
__version__ = "0.1.0"

__all__ = [
    "MAX_ALIGN",
    "MAX_SIZE",
    "MIN_ALIGN",
    "PAGE_SIZE",
    "Cache",
    "CacheBusyError",
    "CorruptionError",
    "DoubleFreeError",
    "Flags",
    "GroupEvents",
    "InvalidFreeError",
    "MemoryGroup",
    "MemoryLimitError",
    "Object",
    "PoisonError",
    "RedzoneError",
    "SharedCache",
    "SharedObject",
    "SlabError",
    "SlabStats",
    "SlabWarning",
    "StaleObjectError",
    "TRACE_DOMAIN",
    "allocinfo",
    "debug",
    "get_include",
    "kcalloc",
    "kfree",
    "kmalloc",
    "krealloc",
    "ksize",
    "kzalloc",
    "pickling",
    "publish",
    "slabinfo",
]


def _shared_ref(reference: bytes) -> SharedObject:
    """What a SharedObject's pickle names: the object it refers to, this process
    becoming one of its holders. A Python function at the top of the package,
    because pickle imports a global's module at each pickle and unpickle, and
    saves a Python function for less than a C one (no ``__reduce_ex__`` call)."""
    obj: SharedObject = _core._shared_ref(reference)
    return obj


_cache._Facade.shared_ref = staticmethod(_shared_ref)


#: The tracemalloc domain of kmemcache's objects (``tracemalloc.DomainFilter``).
TRACE_DOMAIN: int = _core.TRACE_DOMAIN


def get_include() -> str:
    """The folder holding ``kmemcache.h`` (the C API), ``kmc.h`` and ``kmemcache.pxd``,
    for ``include_dirs`` of an extension that calls the engine."""
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")


def _c_api() -> _Any:
    """The C API capsule, for ``kmemcache_import()``: the kmalloc size classes' caches
    are made first, through the package, so that KMEMCACHE_DEBUG applies to them."""
    _core._kmalloc_prepare()
    return _core._C_API


# Reports with owner tracking, under the on-error policy (kmemcache.debug).
_core._set_error_factory(debug.report_error)
# KMEMCACHE_PUBLISH=1: statistics for kmemcache top (kmemcache.publish).
from . import publishing as _publish  # noqa: E402

_publish._from_environment()
# KMEMCACHE_ALLOCINFO=1: bytes by call site from the start (kmemcache.allocinfo).
allocinfo._from_environment()
