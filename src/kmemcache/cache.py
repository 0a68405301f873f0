"""The Cache: a slab cache of objects of one size and alignment.

``Cache`` adds the comfortable parts (context manager, typed statistics,
repr) to the C type; allocation and free run in C.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from . import _kmemcache as _core
from . import debug as _debug
from .flags import Flags

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
    empty_slabs: int  #: empty slabs kept in reserve
    allocs: int  #: objects handed out, ever
    frees: int  #: objects given back, ever
    slabs_created: int
    slabs_released: int  #: slabs given back to the OS, ever
    committed_bytes: int  #: object memory in slabs now (num_slabs * slab_size)
    metadata_bytes: int  #: slab descriptors and free bitmaps mapped
    arenas: int  #: 64 MiB address-space reservations
    flags: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SlabStats:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"cache name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("cache name must not be empty")
    return name


class Cache(_core.Cache):
    """A cache of objects of ``size`` bytes, each aligned to ``align`` bytes.

    Args:
        name: a non-empty str without spaces (it is a /proc/slabinfo column).
        size: bytes per object, 1 to 4 MiB.
        align: 0 (the default minimum, 8 bytes) or a power of two up to 2 MiB.
        flags: ``Flags``; ``Flags.HWCACHE_ALIGN`` aligns on the cache line.
        ctor: called with a memoryview of each object once, when its slab is
            created (not on every alloc). The view is released after the call.

    Use ``with Cache(...) as cache:`` to destroy the cache at the end.
    """

    def __init__(
        self,
        name: str,
        size: int,
        align: int = 0,
        flags: Flags | int = 0,
        ctor: Callable[[memoryview], object] | None = None,
    ) -> None:
        _check_name(name)
        for arg, value in (("size", size), ("align", align), ("flags", flags)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, not {type(value).__name__}")
        if flags < 0:
            raise ValueError(f"flags must not be negative: {flags}")
        # KMEMCACHE_DEBUG's options for this name join the flags given
        super().__init__(name, size, align, _debug.cache_flags(name, flags), ctor)
        _debug.attach(self)

    def stats(self) -> SlabStats:
        """The cache's counters now."""
        return SlabStats.from_dict(self._stats())

    def leaks(self) -> list[_debug.LiveObject]:
        """The live objects, lowest address first, each with where it was
        allocated when the cache has ``Flags.STORE_USER``."""
        return _debug.leaks(self)

    def __enter__(self) -> Cache:
        if self.destroyed:
            raise ValueError("operation on a destroyed kmemcache cache")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.destroyed:
            self.destroy()

    def __repr__(self) -> str:
        if self.destroyed:
            return "<kmemcache.Cache (destroyed)>"
        s = self.stats()
        return (
            f"<kmemcache.Cache {s.name!r} size={s.size} align={s.align} "
            f"active={s.active_objs}/{s.num_objs} slabs={s.num_slabs}>"
        )
