"""The slab engine called directly through ctypes, with no Python handle per object.

The benchmarks use it to measure what the engine itself costs, apart from the
``kmemcache.Object`` handle that the Python API gives for every object: memory per
live object (bench_memory.py) is measured once with handles and once through these
calls, and the difference is the handle's cost.

It relies on the engine's C functions (``csrc/engine/kmc.h``) being visible in the
extension module, which they are on Linux builds; ``EngineUnavailable`` says so when
they are not. This is a measuring tool, not an API.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


class EngineUnavailable(Exception):
    """The engine's functions cannot be reached from ctypes here."""


class KmcStats(ctypes.Structure):
    """``kmc_stats_t`` from kmc.h, field for field."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "active_objs",
            "num_objs",
            "objsize",
            "objperslab",
            "pagesperslab",
            "active_slabs",
            "num_slabs",
            "size",
            "align",
            "slab_size",
            "partial_slabs",
            "empty_slabs",
            "allocs",
            "frees",
            "slabs_created",
            "slabs_released",
            "committed_bytes",
            "metadata_bytes",
            "arenas",
        )
    ] + [("flags", ctypes.c_uint32)]


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded extension module, with the prototypes used here declared."""
    try:
        from kmemcache import _kmemcache
    except ImportError as exc:
        raise EngineUnavailable(f"kmemcache not importable: {exc}") from exc
    lib = ctypes.CDLL(_kmemcache.__file__)
    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    try:
        lib.kmc_cache_create.argtypes = [
            ctypes.c_char_p,
            size_t,
            size_t,
            ctypes.c_uint,
            vp,
            vp,
            ctypes.POINTER(vp),
        ]
        lib.kmc_cache_create.restype = ctypes.c_int
        lib.kmc_cache_alloc.argtypes = [vp, ctypes.c_int]
        lib.kmc_cache_alloc.restype = vp
        lib.kmc_cache_alloc_bulk.argtypes = [vp, size_t, ctypes.POINTER(vp), ctypes.c_int]
        lib.kmc_cache_alloc_bulk.restype = ctypes.c_int
        lib.kmc_cache_free.argtypes = [vp, vp]
        lib.kmc_cache_free.restype = ctypes.c_int
        lib.kmc_cache_stats.argtypes = [vp, ctypes.POINTER(KmcStats)]
        lib.kmc_cache_stats.restype = None
    except AttributeError as exc:
        raise EngineUnavailable(f"engine functions not exported by the extension: {exc}") from exc
    return lib


class EngineCache:
    """A cache made with kmc_cache_create; objects are bare addresses."""

    def __init__(self, name: str, size: int, align: int) -> None:
        self.lib = library()
        out = ctypes.c_void_p()
        status = self.lib.kmc_cache_create(name.encode(), size, align, 0, None, None, out)
        if status != 0 or not out.value:
            raise EngineUnavailable(f"kmc_cache_create failed with status {status}")
        self.ptr = out.value
        self.size, self.align = size, align

    def alloc_bulk(self, out: Any, n: int, zero: bool = True) -> None:
        """Fill ``out`` (a ctypes array of c_void_p) with ``n`` new objects."""
        status = self.lib.kmc_cache_alloc_bulk(self.ptr, n, out, int(zero))
        if status != 0:
            raise MemoryError(f"kmc_cache_alloc_bulk failed with status {status}")

    def stats(self) -> dict[str, int]:
        raw = KmcStats()
        self.lib.kmc_cache_stats(self.ptr, ctypes.byref(raw))
        stats = {name: getattr(raw, name) for name, _ in KmcStats._fields_}
        if stats["size"] != self.size:  # the header changed under us: say nothing
            raise EngineUnavailable("kmc_stats_t does not match this benchmark's copy")
        return stats
