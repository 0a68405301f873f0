"""The Cache: a slab cache of objects of one size and alignment.

``Cache`` is the C type; this module gives it what is easier said in Python
(typed statistics, debug options from the environment, leak reports) through
a small facade that the type calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from . import _kmemcache as _core
from . import debug as _debug

Object = _core.Object

#: The largest object size and alignment a cache accepts.
MAX_SIZE: int = _core.MAX_SIZE
MAX_ALIGN: int = _core.MAX_ALIGN
#: What ``align=0`` means.
MIN_ALIGN: int = _core.MIN_ALIGN
PAGE_SIZE: int = _core.PAGE_SIZE


@dataclasses.dataclass(frozen=True)
class SlabStats:
    """A cache's counters. The first fields are /proc/slabinfo's."""

    name: str
    active_objs: int  #: objects allocated and not freed
    num_objs: int  #: object slots in the slabs the cache holds
    objsize: int  #: bytes from one object to the next (size rounded up to align)
    objperslab: int
    pagesperslab: int
    active_slabs: int  #: slabs with at least one live object
    num_slabs: int  #: slabs holding memory
    size: int  #: bytes per object, as asked for
    align: int  #: guaranteed alignment
    slab_size: int  #: bytes per slab
    partial_slabs: int
    #: slabs without live objects, waiting for the purge delay before their
    #: memory goes back to the OS
    empty_slabs: int
    #: free objects in the slabs that threads' caches hold (counted as free)
    cached_objs: int
    thread_caches: int  #: threads' caches holding slabs of this cache
    allocs: int  #: objects handed out, ever
    frees: int  #: objects given back, ever
    remote_frees: int  #: objects freed by a thread other than their slab's owner, ever
    slabs_created: int
    slabs_released: int  #: slabs given back to the OS, ever
    committed_bytes: int  #: object memory in slabs now (num_slabs * slab_size)
    metadata_bytes: int  #: slab descriptors and free bitmaps mapped
    reserved_bytes: int  #: address space reserved for the arenas
    arenas: int  #: address-space reservations, 1 MiB doubling up to 64 MiB
    bitmap_words: int  #: 64-bit words of free bitmap per slab
    #: the most bitmap words one allocation ever skipped: below bitmap_words
    #: whatever the number of live objects, which is what makes alloc O(1)
    max_scan: int
    flags: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SlabStats:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


class _Facade:
    """What the C types ask of the package: debug options, statistics, leaks,
    and for shared caches the per-process registry and the functions their
    pickles name (set by kmemcache.shared)."""

    shared_rebuild: ClassVar[Callable[[str, int, int, int], Any]]
    shared_attach_pickled: ClassVar[Callable[[str, int, Any], Any]]

    @staticmethod
    def cache_flags(name: str, flags: int, has_ctor: bool) -> int:
        return _debug.cache_flags(name, flags, has_ctor)

    @staticmethod
    def attach(cache: Cache) -> None:
        _debug.attach(cache)

    @staticmethod
    def attach_shared(cache: Any) -> None:
        from . import shared

        shared._register(cache)

    @staticmethod
    def make_stats(raw: dict[str, Any]) -> SlabStats:
        return SlabStats.from_dict(raw)

    @staticmethod
    def leaks(cache: Cache) -> list[_debug.LiveObject]:
        return _debug.leaks(cache)


#: A cache of objects of one size and alignment: the C type itself, so that
#: ``cache.zalloc()`` takes CPython's fast path for C methods (see its
#: docstring for the arguments).
Cache = _core.Cache
_core._set_facade(_Facade)
