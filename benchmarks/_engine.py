"""The slab engine called directly through ctypes, with no Python handle per object.

The benchmarks use it to measure what the engine itself costs, apart from the
``kmemcache.Object`` handle that the Python API gives for every object: memory per
live object (bench_memory.py) is measured once with handles and once through these
calls, and the difference is the handle's cost.

The engine's functions are reached as other extensions reach them: through the C
API's function table (``kmemcache.h``), taken from its capsule, each member found
by name at the offset the extension reports (``_capi_layout()``), so that no
offset is written here. ``EngineUnavailable`` says when that cannot be done. This
is a measuring tool, not an API.
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


class Engine:
    """The C API's functions used here, as ctypes functions."""

    def __init__(self, table: int, offsets: dict[str, int]) -> None:
        vp, size_t, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            if name not in offsets:
                raise EngineUnavailable(f"the C API has no {name}")
            address = ctypes.c_void_p.from_address(table + offsets[name]).value
            return ctypes.CFUNCTYPE(restype, *argtypes)(address)

        self.kmc_cache_create = fn(
            "kmc_cache_create",
            c_int,
            ctypes.c_char_p,
            size_t,
            size_t,
            ctypes.c_uint,
            vp,
            vp,
            ctypes.POINTER(vp),
        )
        self.kmc_cache_alloc = fn("kmc_cache_alloc", vp, vp, c_int)
        self.kmc_cache_alloc_bulk = fn(
            "kmc_cache_alloc_bulk", c_int, vp, size_t, ctypes.POINTER(vp), c_int
        )
        self.kmc_cache_free = fn("kmc_cache_free", c_int, vp, vp)
        self.kmc_cache_stats_sized = fn(
            "kmc_cache_stats_sized", None, vp, ctypes.POINTER(stats_struct()), size_t
        )


@functools.cache
def library() -> Engine:
    """The engine's functions, from the C API capsule."""
    try:
        import kmemcache
        from kmemcache import _kmemcache
    except ImportError as exc:
        raise EngineUnavailable(f"kmemcache not importable: {exc}") from exc
    if not hasattr(_kmemcache, "_capi_layout"):
        raise EngineUnavailable("this kmemcache has no C API")
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = get_pointer(kmemcache._c_api(), b"kmemcache._kmemcache._C_API")
    members, _, _ = _kmemcache._capi_layout()
    return Engine(table, dict(members))


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
        self.lib.kmc_cache_stats_sized(self.ptr, ctypes.byref(raw), ctypes.sizeof(raw))
        return {name: getattr(raw, name) for name, _ in raw._fields_}
