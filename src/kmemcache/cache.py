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
    """A cache's counters. The first fields are /proc/slabinfo's; what each counts
    is said once, in the engine's list of them (kmc.h), and shown below."""

    name: str
    active_objs: int
    num_objs: int
    objsize: int
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int
    size: int
    align: int
    slab_size: int
    partial_slabs: int
    empty_slabs: int
    cached_objs: int
    thread_caches: int
    allocs: int
    frees: int
    remote_frees: int
    slabs_created: int
    slabs_released: int
    committed_bytes: int
    metadata_bytes: int
    reserved_bytes: int
    arenas: int
    bitmap_words: int
    max_scan: int
    flags: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SlabStats:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


SlabStats.__doc__ = (
    (SlabStats.__doc__ or "")
    + "\n\n    - ``name``: the cache's name.\n"
    + "\n".join(f"    - ``{name}``: {comment}." for name, comment in _core._stats_docs())
)


class _Facade:
    """What the C types ask of the package: debug options, statistics, leaks,
    the function a pickled object names (set by kmemcache.pickling), and for
    shared caches the function their objects' pickles name (set by kmemcache)
    and attaching what a reference or a pickled cache names (set by
    kmemcache.shared)."""

    unpickle_object: ClassVar[Callable[..., Any]]
    shared_ref: ClassVar[Callable[[bytes], Any]]
    shared_lookup: ClassVar[Callable[[str, int], Any]]
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
