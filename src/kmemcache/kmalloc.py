"""The kmalloc family: aligned buffers of any size without creating a cache.

Linux's general-purpose allocator, over kmemcache's caches::

    from kmemcache import kfree, kmalloc, krealloc, ksize, kzalloc

    buf = kzalloc(1500, align=64)   # 1500 zeroed bytes, address % 64 == 0
    ksize(buf)                      # 2048: it is a kmalloc-2k object
    buf = krealloc(buf, 3000)       # contents kept; a kmalloc-4k object now
    kfree(buf)                      # kfree also frees any Cache's objects

The module's extras are imported by name (``from kmemcache.kmalloc import
SIZE_CLASSES, shrink``): ``kmemcache.kmalloc`` itself is the function.

Every function but ``ksize`` returns (or takes) a ``kmemcache.Object``, the
handle ``Cache.alloc()`` returns: buffer protocol, ``.address``, ``.free()``,
a context manager, and ``len()`` equal to the size asked for. The functions
are the C extension's own, so a call costs what a builtin call costs; their
signatures and full documentation:

``kmalloc(size, align=0) -> Object``
    ``size`` bytes, contents undefined. 1 to 8 KiB come from the 13 size
    classes of ``SIZE_CLASSES`` (kmalloc-8, -16, -32, -64, -96, -128, -192,
    -256, -512, -1k, -2k, -4k, -8k), each an ordinary cache made on first
    use (so the debug options in force then apply, e.g.
    ``KMEMCACHE_DEBUG=FZ,kmalloc-*``) and listed by ``kmemcache.slabinfo()``;
    larger requests get whole pages from the OS. ``kmalloc(0)`` is a
    zero-length object that ``kfree`` accepts (Linux's ZERO_SIZE_PTR): every
    one has the same address, one page with no access that no other object
    uses. TypeError unless ``size`` and ``align`` are
    ints; ValueError for a negative size or an ``align`` that is not 0 or a
    power of two up to 2 MiB; MemoryError when the memory cannot be had
    (sizes above 64 TiB never can).

``kzalloc(size, align=0) -> Object``
    ``kmalloc``, zero-filled.

``kcalloc(n, size) -> Object``
    ``n * size`` zeroed bytes; MemoryError when the product overflows.

``krealloc(obj, new_size, align=0) -> Object``
    ``obj`` resized, contents kept up to the smaller size. The same object
    comes back (with the new ``len()``) when it already holds ``new_size``
    bytes at the alignment ``kmalloc(new_size, align)`` would give;
    otherwise a new object gets the contents and ``obj`` is freed. Linux's
    krealloc has no ``align``, and neither keeps the alignment of the first
    allocation on its own: pass it again. ``krealloc(None, n)`` is
    ``kmalloc(n)``; ``new_size`` 0 frees ``obj`` and returns a zero-length
    object. On MemoryError ``obj`` is intact. BufferError while views of
    ``obj`` exist; ValueError if it was freed; InvalidFreeError if it is not
    a kmemcache object.

``ksize(obj) -> int``
    The usable size: the object size of its cache (its class), the pages of
    a large object, 0 for ``None`` and zero-length objects. Objects of any
    ``Cache`` work too.

``kfree(obj) -> None``
    Frees ``obj``, from kmalloc or from any ``Cache``; ``kfree(None)`` does
    nothing. The owner is known from the address in O(1), never by a search.
    InvalidFreeError for anything that is not a kmemcache object,
    DoubleFreeError for one already freed, BufferError while views exist.

Large requests are whole pages from the OS, aligned to the page (and to their size
when that is a power of two). As a cache keeps a few empty slabs, up to 1 MiB of freed
runs (16 runs of 256 KiB or less) is kept to serve the next request of the same size
without a system call; ``shrink()`` gives it back with the size classes' empty slabs.

Alignment, the guarantee Linux gives since 5.4 and 6.11: every object of 16
bytes or more is at least 16-byte aligned (8 below); a power-of-two size is
aligned to itself (64 to 64, 4096 to the page, 16 KiB to 16 KiB); the other
classes to their largest power-of-two divisor (kmalloc-96 to 32,
kmalloc-192 to 64); larger requests to the page. ``align`` asks for more: the
request goes to the first class whose size and alignment both suffice, or
to pages at that alignment when no class is aligned enough (above 8 KiB).
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
    """The class ``kmalloc(size, align)`` is served by, or None when it gets
    pages from the OS (``size`` above 8 KiB, or ``align`` above every class's)
    or is zero-length."""
    if size < 1 or size > LARGE_THRESHOLD:
        return None
    for cls in SIZE_CLASSES:
        if cls.size >= size and cls.align >= align:
            return cls
    return None


class LargeStats(NamedTuple):
    """The large allocations (pages from the OS) now."""

    objects: int  #: live large objects
    bytes: int  #: their pages
    table_bytes: int  #: the table that finds them from their address
    kept: int  #: freed runs kept to serve the next request of their size
    kept_bytes: int  #: their pages (1 MiB at most)


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
