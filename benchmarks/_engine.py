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


@functools.cache
def stats_struct() -> type[ctypes.Structure]:
    """``kmc_stats_t`` as a ctypes struct, built from the layout the binding reports."""
    try:
        from kmemcache import _kmemcache
    except ImportError as exc:
        raise EngineUnavailable(f"kmemcache not importable: {exc}") from exc
    fields, size = _kmemcache._stats_layout()
    types = {4: ctypes.c_uint32, 8: ctypes.c_uint64}

    class KmcStats(ctypes.Structure):
        _fields_ = [(name, types[width]) for name, _, width in fields]

    for name, offset, _ in fields:
        if getattr(KmcStats, name).offset != offset:
            raise EngineUnavailable(f"kmc_stats_t.{name}: ctypes puts it elsewhere")
    if ctypes.sizeof(KmcStats) != size:
        raise EngineUnavailable("kmc_stats_t: ctypes gives it another size")
    return KmcStats


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
        lib.kmc_cache_stats.argtypes = [vp, ctypes.POINTER(stats_struct())]
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
        raw = stats_struct()()
        self.lib.kmc_cache_stats(self.ptr, ctypes.byref(raw))
        return {name: getattr(raw, name) for name, _ in raw._fields_}
