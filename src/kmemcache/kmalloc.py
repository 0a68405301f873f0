"""The kmalloc family: aligned buffers of any size without creating a cache.

Linux's general-purpose allocator, over kmemcache's caches::

    from kmemcache import kfree, kmalloc, krealloc, ksize, kzalloc

    buf = kzalloc(1500, align=64)   # 1500 zeroed bytes, address % 64 == 0
    ksize(buf)                      # 2048: it is a kmalloc-2k object
    buf = krealloc(buf, 3000)       # contents kept; a kmalloc-4k object now
    kfree(buf)                      # kfree also frees any Cache's objects

What the functions promise is the engine's, written once in
``csrc/engine/kmc.h`` (its "kmalloc family" part, with the class table at the
top of ``csrc/engine/kmalloc.c``): which size class serves a request, the
alignment every object gets, what ``align`` asks for, whole pages from the OS
for large requests and the runs kept for reuse, the zero-length object of
``kmalloc(0)``, and when ``krealloc`` keeps the object. The functions are the C
extension's own, so a call costs what a builtin call costs. What Python adds:

``kmalloc``, ``kzalloc``, ``kcalloc``, ``krealloc``
    ``kmalloc(size, align=0)``, ``kzalloc(size, align=0)``, ``kcalloc(n, size)``
    and ``krealloc(obj, new_size, align=0)`` return a ``kmemcache.Object``, the
    handle ``Cache.alloc()`` returns: buffer protocol, ``.address``, ``.free()``,
    a context manager, ``len()`` equal to the size asked for, and ``.cache`` the
    size class's cache (None for pages and zero-length objects).
    ``krealloc(None, n)`` is ``kmalloc(n)``.
``ksize(obj) -> int``, ``kfree(obj)``
    take objects of any ``Cache`` too; ``ksize(None)`` is 0 and ``kfree(None)``
    does nothing, as for NULL.

Each size class is an ordinary ``Cache``, made on first use (so the debug
options in force then apply, e.g. ``KMEMCACHE_DEBUG=FZ,kmalloc-*``), listed by
``kmemcache.slabinfo()`` and never destroyed.

Errors: TypeError unless sizes and ``align`` are ints (bool is not one);
ValueError for a negative size or an ``align`` that is not 0 or a power of two
up to 2 MiB; MemoryError when the memory cannot be had, or a ``kcalloc``
product overflows (``krealloc``'s object is then intact); BufferError while
views of the object exist; ValueError for a freed handle; InvalidFreeError for
anything that is not a kmemcache object; DoubleFreeError for a slab object
freed twice.

The module's extras are imported by name (``from kmemcache.kmalloc import
SIZE_CLASSES, shrink``): ``kmemcache.kmalloc`` itself is the function.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _kmemcache as _core
from ._kmemcache import kcalloc, kfree, kmalloc, krealloc, ksize, kzalloc
from .cache import Cache

__all__ = [
    "LARGE_THRESHOLD",
    "SIZE_CLASSES",
    "LargeStats",
    "SizeClass",
    "kcalloc",
    "kfree",
    "kmalloc",
    "krealloc",
    "ksize",
    "kzalloc",
    "large_stats",
    "shrink",
    "size_class",
]


class SizeClass(NamedTuple):
    """One kmalloc size class: the cache that serves requests up to ``size``."""

    name: str  #: the cache's name, as Linux's: "kmalloc-96", "kmalloc-2k"
    size: int  #: object size in bytes
    align: int  #: guaranteed alignment in bytes


#: The size classes, smallest first, as the engine defines them.
SIZE_CLASSES: tuple[SizeClass, ...] = tuple(SizeClass(*c) for c in _core._kmalloc_classes())

#: Requests above this many bytes get whole pages from the OS.
LARGE_THRESHOLD: int = SIZE_CLASSES[-1].size


def size_class(size: int, align: int = 0) -> SizeClass | None:
    """The class ``kmalloc(size, align)`` is served by, as the engine chooses it, or
    None when it gets pages from the OS (``size`` above 8 KiB, or ``align`` above
    every class's) or is zero-length."""
    index = _core._kmalloc_index(size, align)
    return SIZE_CLASSES[index] if index >= 0 else None


class LargeStats(NamedTuple):
    """The large allocations (pages from the OS) now."""

    objects: int  #: live large objects
    bytes: int  #: their pages
    table_bytes: int  #: the table that finds them from their address
    kept: int  #: freed runs kept to serve the next request of their size
    kept_bytes: int  #: their pages (bounded by the engine: see kmc.h's kmalloc section)


def large_stats() -> LargeStats:
    """The large allocations' counters now."""
    return LargeStats(**_core._kmalloc_large_stats())


def shrink() -> int:
    """Give back to the OS every page kmalloc holds without a live object in it:
    the kept large runs, and the empty slabs of every size class. Returns the bytes
    given back."""
    given = _core._kmalloc_shrink()
    for cache in _core._kmalloc_caches():
        if cache is not None:
            given += cache.shrink()
    return given


def _make_class_cache(name: str, size: int, align: int) -> Cache:
    # An ordinary Cache, so that the debug options (KMEMCACHE_DEBUG) apply to
    # the kmalloc caches as to any other; the extension keeps it for good.
    return Cache(name, size, align)


_core._set_kmalloc_factory(_make_class_cache)
