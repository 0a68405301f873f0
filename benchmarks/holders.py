"""N live objects of each allocator, for measuring memory per live object.

bench_memory.py runs each holder in a fresh process: ``prepare(size, align, n)``
imports what it needs, makes the allocator (cache, handler, libc) and the container
that will keep the objects (a list of n slots, or a ctypes array of n addresses),
so that none of that is counted; then it reads the process's RSS, calls ``fill()``,
which allocates the n objects, each zero-filled or touched so that its pages are
resident, and reads the RSS again. The difference over n is the memory per live
object, handle included.

Where the Python object that stands for a buffer (its "handle") can be told apart
from the buffer, the holder says how:

* ``none``: no handle; addresses are kept in a ctypes array (the kmemcache engine
  called through ctypes, posix_memalign through ctypes);
* ``measured``: kmemcache's handle is measured, as the difference between the run
  with handles and the engine's run without;
* ``header``: the buffer lives behind a Python object (bytearray, ndarray, mmap)
  whose fixed part is estimated from ``sys.getsizeof`` of an empty one, rounded up
  to pymalloc's 16-byte size classes; the rest is counted as the buffer's.

A holder whose package is missing raises ``peers.PeerUnavailable``.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peers

PAGE = mmap.PAGESIZE
#: Objects made per step when filling a list, so that no second list of n is built.
CHUNK = 4096

Fill = Callable[[], None]
Inspect = Callable[[], dict[str, Any]]


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _fill_list(holder: list[Any], n: int, make_chunk: Callable[[int], list[Any]]) -> None:
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        holder[start : start + k] = make_chunk(k)


def _touch_array(a: Any) -> None:
    """Write one byte in every page an ndarray spans (calloc may not have)."""
    if a.size > PAGE:
        a[::PAGE] = 1
    a[0] = 1
    a[-1] = 1


def _header_chain(obj: Any) -> int:
    """Bytes of the Python objects between a buffer's handle and its memory.

    Follows ``ndarray.base`` and ``memoryview.obj`` (pyFFTW's arrays are a view of
    an array over a memoryview of an array), counting each object's fixed part and
    none of the data, each rounded to pymalloc's 16-byte classes.
    """
    total, seen = 0, 0
    while obj is not None and seen < 16:
        seen += 1
        if isinstance(obj, memoryview):
            total += _round16(sys.getsizeof(obj))
            obj = obj.obj
        elif hasattr(obj, "flags") and hasattr(obj, "nbytes"):  # an ndarray
            owns = bool(obj.flags["OWNDATA"])
            total += _round16(sys.getsizeof(obj) - (obj.nbytes if owns else 0))
            obj = None if owns else obj.base
        elif isinstance(obj, bytearray):
            total += _round16(sys.getsizeof(bytearray()))
            obj = None
        else:
            total += _round16(sys.getsizeof(obj) - (len(obj) if hasattr(obj, "__len__") else 0))
            obj = None
    return total


def _array_addresses(holder: list[Any]) -> list[int]:
    return [a.ctypes.data for a in holder[: peers.ALIGN_SAMPLES]]


# --- kmemcache ------------------------------------------------------------------


def prepare_kmemcache_engine(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    import _engine

    try:
        cache = _engine.EngineCache("bench-memory-engine", size, align)
    except _engine.EngineUnavailable as exc:
        raise peers.PeerUnavailable(str(exc)) from exc
    out = (ctypes.c_void_p * n)()
    ctypes.memset(out, 0xFF, ctypes.sizeof(out))  # resident before the first reading

    def fill() -> None:
        cache.alloc_bulk(out, n, zero=True)

    def inspect() -> dict[str, Any]:
        info: dict[str, Any] = {"addresses": [out[i] for i in range(min(n, 32))]}
        try:
            info["engine"] = cache.stats()
        except Exception as exc:  # the stats layout changed: report RSS only
            info["engine_note"] = str(exc)
        return info

    return fill, inspect


def prepare_kmemcache(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    kmemcache = peers._kmemcache()
    cache = kmemcache.Cache("bench-memory", size, align)
    holder: list[Any] = [None] * n
    alloc_bulk = cache.alloc_bulk

    def fill() -> None:
        _fill_list(holder, n, lambda k: alloc_bulk(k, zero=True))

    def inspect() -> dict[str, Any]:
        return {
            "addresses": [o.address for o in holder[:32]],
            "engine": cache._stats(),
            "handle_sizeof": sys.getsizeof(holder[0]),
        }

    return fill, inspect


def prepare_kmalloc(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    km = peers._kmalloc()
    kzalloc = km.kzalloc
    holder: list[Any] = [None] * n

    def fill() -> None:
        _fill_list(holder, n, lambda k: [kzalloc(size, align) for _ in range(k)])

    def inspect() -> dict[str, Any]:
        return {
            "addresses": [o.address for o in holder[:32]],
            "handle_sizeof": sys.getsizeof(holder[0]),
            "ksize": km.ksize(holder[0]),
        }

    return fill, inspect


# --- Python objects ---------------------------------------------------------------


def prepare_bytearray(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    holder: list[Any] = [None] * n

    def fill() -> None:
        _fill_list(holder, n, lambda k: [bytearray(size) for _ in range(k)])

    def inspect() -> dict[str, Any]:
        return {
            "addresses": [peers._buffer_address(b) for b in holder[:32]],
            "handle_sizeof": _round16(sys.getsizeof(bytearray())),
        }

    return fill, inspect


def prepare_numpy_slice(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    np = peers._require("numpy")
    zeros, uint8 = np.zeros, np.uint8
    step = max(align, 1)
    holder: list[Any] = [None] * n

    def one() -> Any:
        a = zeros(size + step, uint8)
        off = (-a.ctypes.data) % step
        view = a[off : off + size]
        _touch_array(view)
        return view

    def fill() -> None:
        _fill_list(holder, n, lambda k: [one() for _ in range(k)])

    def inspect() -> dict[str, Any]:
        return {"addresses": _array_addresses(holder), "handle_sizeof": _header_chain(holder[0])}

    return fill, inspect


def prepare_numpy_zeros(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    np = peers._require("numpy")
    zeros, uint8 = np.zeros, np.uint8
    holder: list[Any] = [None] * n

    def one() -> Any:
        a = zeros(size, uint8)
        _touch_array(a)
        return a

    def fill() -> None:
        _fill_list(holder, n, lambda k: [one() for _ in range(k)])

    def inspect() -> dict[str, Any]:
        return {"addresses": _array_addresses(holder), "handle_sizeof": _header_chain(holder[0])}

    return fill, inspect


def prepare_pyfftw_zeros(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    pyfftw = peers._require("pyfftw")
    zeros_aligned, fftw_n = pyfftw.zeros_aligned, peers._fftw_align(pyfftw, align)
    holder: list[Any] = [None] * n

    def fill() -> None:
        _fill_list(
            holder, n, lambda k: [zeros_aligned(size, dtype="uint8", n=fftw_n) for _ in range(k)]
        )

    def inspect() -> dict[str, Any]:
        return {"addresses": _array_addresses(holder), "handle_sizeof": _header_chain(holder[0])}

    return fill, inspect


def _prepare_numpy_handler(name: str, size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    np = peers._require("numpy")
    knp = peers._require("kmemcache.numpy")
    handler = peers.numpy_handler(name, align)
    zeros, uint8 = np.zeros, np.uint8
    holder: list[Any] = [None] * n

    def chunk(k: int) -> list[Any]:
        previous = knp.set_handler(handler)
        try:
            return [zeros(size, uint8) for _ in range(k)]
        finally:
            knp.set_handler(previous)

    def fill() -> None:
        _fill_list(holder, n, chunk)

    def inspect() -> dict[str, Any]:
        return {"addresses": _array_addresses(holder), "handle_sizeof": _header_chain(holder[0])}

    return fill, inspect


def prepare_numpy_kmemcache(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    return _prepare_numpy_handler("kmemcache", size, align, n)


def prepare_numpy_c_handler(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    return _prepare_numpy_handler("aligned_alloc", size, align, n)


def prepare_mmap(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    new = mmap.mmap
    holder: list[Any] = [None] * n

    def one() -> Any:
        m = new(-1, size)
        for off in range(0, size, PAGE):
            m[off] = 1
        return m

    def fill() -> None:
        _fill_list(holder, n, lambda k: [one() for _ in range(k)])

    def inspect() -> dict[str, Any]:
        return {
            "addresses": [peers._buffer_address(m) for m in holder[:32]],
            "handle_sizeof": _round16(sys.getsizeof(holder[0]) if holder else 0),
        }

    return fill, inspect


# --- libc through ctypes ----------------------------------------------------------


def prepare_posix_memalign(size: int, align: int, n: int) -> tuple[Fill, Inspect]:
    libc = peers._libc()
    posix_memalign, memset = libc.posix_memalign, libc.memset
    boundary = peers._memalign_align(align)
    out = (ctypes.c_void_p * n)()
    ctypes.memset(out, 0xFF, ctypes.sizeof(out))  # resident before the first reading
    ptr = ctypes.c_void_p()
    ref = ctypes.byref(ptr)

    def fill() -> None:
        for i in range(n):
            if posix_memalign(ref, boundary, size):
                raise MemoryError("posix_memalign failed")
            memset(ptr, 0, size)
            out[i] = ptr.value

    def inspect() -> dict[str, Any]:
        return {"addresses": [out[i] for i in range(min(n, 32))]}

    return fill, inspect


# --- registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """One way of keeping n objects alive, as listed in result tables."""

    key: str
    label: str
    prepare: Callable[[int, int, int], tuple[Fill, Inspect]]
    handle: str  #: "none", "measured" or "header" (see the module's doc)
    max_n: int  #: largest n in a default run (a few seconds of filling), or an OS limit
    overhead: int  #: rough bytes per object beyond the buffer, to keep within --max-gb
    over_align: bool = False  #: allocates size + align per object


HOLDERS: tuple[Holder, ...] = (
    Holder(
        "kmemcache_engine",
        "kmemcache engine (no handles, through ctypes)",
        prepare_kmemcache_engine,
        "none",
        10**7,
        8,
    ),
    Holder(
        "kmemcache",
        "kmemcache Cache.alloc_bulk(zero=True)",
        prepare_kmemcache,
        "measured",
        10**7,
        64,
    ),
    Holder("kmalloc", "kmemcache kzalloc", prepare_kmalloc, "header", 10**6, 64),
    Holder("bytearray", "bytearray(n)", prepare_bytearray, "header", 10**7, 96),
    Holder(
        "numpy_slice",
        "numpy zeros(n+align) + slice",
        prepare_numpy_slice,
        "header",
        10**5,
        280,
        True,
    ),
    Holder("numpy_zeros", "numpy zeros(n)", prepare_numpy_zeros, "header", 10**6, 160),
    Holder(
        "pyfftw_zeros",
        "pyfftw.zeros_aligned",
        prepare_pyfftw_zeros,
        "header",
        10**5,
        280,
        True,
    ),
    Holder(
        "posix_memalign",
        "posix_memalign+memset (ctypes)",
        prepare_posix_memalign,
        "none",
        10**5,
        32,
    ),
    # one mapping per object: vm.max_map_count (65530 by default) caps n
    Holder("mmap", "mmap(-1, n)", prepare_mmap, "header", 10**4, 4096),
    Holder(
        "numpy_kmemcache",
        "numpy zeros(n), kmemcache.numpy handler",
        prepare_numpy_kmemcache,
        "header",
        10**5,
        160,
    ),
    Holder(
        "numpy_c_handler",
        "numpy zeros(n), C aligned_alloc handler",
        prepare_numpy_c_handler,
        "header",
        10**5,
        160,
    ),
)


def holder(key: str) -> Holder:
    for h in HOLDERS:
        if h.key == key:
            return h
    raise KeyError(key)


def estimated_bytes(h: Holder, size: int, align: int, n: int) -> int:
    """A rough upper estimate of what n live objects take, to skip what will not fit."""
    per = size + h.overhead + (align if h.over_align else 0)
    if h.key == "mmap":
        per = -(-size // PAGE) * PAGE + h.overhead
    elif h.key.startswith("kmemcache"):
        per = -(-size // max(align, 8)) * max(align, 8) + h.overhead
    return n * per
