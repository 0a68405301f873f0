"""The ways to get a small (aligned) buffer from Python that kmemcache is compared with.

Each peer has two functions:

* ``make_<peer>(size, align)`` returns a zero-argument op doing ONE allocation of
  ``size`` bytes and dropping or freeing it, so what is timed is alloc+free. Setup
  (caches, libc symbols, bound methods) happens once in the factory, outside the
  timed loop. Peers with a zeroing and a non-zeroing variant appear twice; a peer
  that always zeroes (``bytearray``, ``mmap``) appears once, as zeroed.
* ``aligned_<peer>(size, align)`` allocates a batch of samples, all alive at once so
  they get distinct addresses, and says whether every one starts on a multiple of
  ``align``: what the peer actually delivers, not what it promises.

A peer whose package is missing raises ``PeerUnavailable`` from both functions.
``PEERS`` lists them all in table order; the first is the baseline for ratios.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import itertools
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import _harness as h

Op = Callable[[], object]

#: Live samples per alignment check; one lucky address must not pass for alignment.
ALIGN_SAMPLES = 32


class PeerUnavailable(Exception):
    """The peer cannot run here (its package is not installed)."""


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{module} not installed") from exc


def _all_aligned(addresses: list[int], align: int) -> bool:
    return all(addr % align == 0 for addr in addresses) if align > 1 else True


def _buffer_address(obj: Any) -> int:
    """Address of a writable buffer (bytearray, mmap) without copying it."""
    view = (ctypes.c_char * len(obj)).from_buffer(obj)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # release the export, or mmap.close() would refuse


# --- libc through ctypes ---------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc with the prototypes the peers call, declared so ctypes converts correctly."""
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    libc.posix_memalign.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    libc.posix_memalign.restype = ctypes.c_int
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.memset.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    return libc


def _memalign_align(align: int) -> int:
    # posix_memalign wants a power of two that is a multiple of sizeof(void *).
    return max(align, ctypes.sizeof(ctypes.c_void_p), 16)


# --- kmemcache --------------------------------------------------------------------

_cache_ids = itertools.count()


def _kmemcache() -> Any:
    try:
        import kmemcache
    except ImportError as exc:
        raise PeerUnavailable(f"kmemcache not importable: {exc}") from exc
    return kmemcache


def _new_cache(size: int, align: int, flags: int = 0) -> Any:
    # A distinct name per cache keeps them apart in slabinfo-style reports.
    return _kmemcache().Cache(f"bench-{size}-{align}-{next(_cache_ids)}", size, align, flags)


def _kmemcache_free_op(size: int, align: int, flags: int, method: str) -> Op:
    cache = _new_cache(size, align, flags)
    new = getattr(cache, method)

    def op() -> None:
        o = new()
        o.free()

    op.close = cache.destroy  # type: ignore[attr-defined]
    return op


def make_kmemcache_zalloc_free(size: int, align: int, flags: int = 0) -> Op:
    """zalloc+free on a cache of its own (with debug ``flags``), made once."""
    return _kmemcache_free_op(size, align, flags, "zalloc")


def make_kmemcache_zalloc_drop(size: int, align: int) -> Op:
    cache = _new_cache(size, align)
    zalloc = cache.zalloc

    def op() -> None:
        zalloc()  # dropped at once: the handle's last reference frees it

    op.close = cache.destroy  # type: ignore[attr-defined]
    return op


def make_kmemcache_alloc_free(size: int, align: int) -> Op:
    return _kmemcache_free_op(size, align, 0, "alloc")


def aligned_kmemcache(size: int, align: int) -> bool:
    cache = _new_cache(size, align)
    try:
        objs = [cache.zalloc() for _ in range(ALIGN_SAMPLES)]
        result = _all_aligned([o.address for o in objs], align)
        for o in objs:
            o.free()
    finally:
        cache.destroy()
    return result


def _kmalloc() -> Any:
    kmemcache = _kmemcache()
    if not hasattr(kmemcache, "kmalloc"):
        raise PeerUnavailable("this kmemcache has no kmalloc family")
    return kmemcache


def _kmalloc_op(size: int, align: int, name: str) -> Op:
    km = _kmalloc()
    new, kfree = getattr(km, name), km.kfree

    def op() -> None:
        kfree(new(size, align))

    return op


def make_kmalloc_kzalloc(size: int, align: int) -> Op:
    return _kmalloc_op(size, align, "kzalloc")


def make_kmalloc_kmalloc(size: int, align: int) -> Op:
    return _kmalloc_op(size, align, "kmalloc")


def aligned_kmalloc(size: int, align: int) -> bool:
    km = _kmalloc()
    objs = [km.kzalloc(size, align) for _ in range(ALIGN_SAMPLES)]
    try:
        return _all_aligned([o.address for o in objs], align)
    finally:
        for o in objs:
            km.kfree(o)


# --- bytearray --------------------------------------------------------------------


def make_bytearray(size: int, align: int) -> Op:
    new = bytearray

    def op() -> None:
        new(size)

    return op


def aligned_bytearray(size: int, align: int) -> bool:
    samples = [bytearray(size) for _ in range(ALIGN_SAMPLES)]
    return _all_aligned([_buffer_address(b) for b in samples], align)


# --- NumPy ------------------------------------------------------------------------


def _numpy_slice_op(size: int, align: int, new_name: str) -> Op:
    np = _require("numpy")
    new, uint8 = getattr(np, new_name), np.uint8
    align = max(align, 1)
    total = size + align

    def op() -> None:
        a = new(total, uint8)
        off = (-a.ctypes.data) % align
        a[off : off + size]

    return op


def make_numpy_slice(size: int, align: int) -> Op:
    """The usual recipe: over-allocate by ``align`` and slice at the first aligned byte."""
    return _numpy_slice_op(size, align, "zeros")


def make_numpy_slice_empty(size: int, align: int) -> Op:
    """The same recipe with ``np.empty``: aligned, contents undefined."""
    return _numpy_slice_op(size, align, "empty")


def aligned_numpy_slice(size: int, align: int) -> bool:
    np = _require("numpy")
    align = max(align, 1)
    samples = []
    for _ in range(ALIGN_SAMPLES):
        a = np.zeros(size + align, np.uint8)
        off = (-a.ctypes.data) % align
        samples.append(a[off : off + size])
    return _all_aligned([s.ctypes.data for s in samples], align)


def _numpy_op(size: int, new_name: str) -> Op:
    np = _require("numpy")
    new, uint8 = getattr(np, new_name), np.uint8

    def op() -> None:
        new(size, uint8)

    return op


def make_numpy_zeros(size: int, align: int) -> Op:
    return _numpy_op(size, "zeros")


def make_numpy_empty(size: int, align: int) -> Op:
    return _numpy_op(size, "empty")


def aligned_numpy_plain(size: int, align: int) -> bool:
    np = _require("numpy")
    samples = [np.zeros(size, np.uint8) for _ in range(ALIGN_SAMPLES)]
    return _all_aligned([s.ctypes.data for s in samples], align)


# --- pyFFTW -----------------------------------------------------------------------


def _fftw_align(pyfftw: ModuleType, align: int) -> int:
    return align if align > 0 else pyfftw.simd_alignment


def _pyfftw_op(size: int, align: int, new_name: str) -> Op:
    pyfftw = _require("pyfftw")
    new, n = getattr(pyfftw, new_name), _fftw_align(pyfftw, align)

    def op() -> None:
        new(size, dtype="uint8", n=n)

    return op


def make_pyfftw_zeros(size: int, align: int) -> Op:
    return _pyfftw_op(size, align, "zeros_aligned")


def make_pyfftw_empty(size: int, align: int) -> Op:
    return _pyfftw_op(size, align, "empty_aligned")


def aligned_pyfftw(size: int, align: int) -> bool:
    pyfftw = _require("pyfftw")
    n = _fftw_align(pyfftw, align)
    samples = [pyfftw.zeros_aligned(size, dtype="uint8", n=n) for _ in range(ALIGN_SAMPLES)]
    return _all_aligned([s.ctypes.data for s in samples], align)


# --- pyarrow --------------------------------------------------------------------


def make_pyarrow_allocate(size: int, align: int) -> Op:
    pa = _require("pyarrow")
    allocate = pa.allocate_buffer

    def op() -> None:
        allocate(size)

    return op


def aligned_pyarrow(size: int, align: int) -> bool:
    pa = _require("pyarrow")
    samples = [pa.allocate_buffer(size) for _ in range(ALIGN_SAMPLES)]
    return _all_aligned([b.address for b in samples], align)


# --- posix_memalign through ctypes ------------------------------------------------


def make_posix_memalign(size: int, align: int) -> Op:
    libc = _libc()
    posix_memalign, memset, free = libc.posix_memalign, libc.memset, libc.free
    boundary = _memalign_align(align)
    ptr = ctypes.c_void_p()
    out = ctypes.byref(ptr)  # made once: the out-parameter is reused by every call

    def op() -> None:
        if posix_memalign(out, boundary, size):
            raise MemoryError("posix_memalign failed")
        memset(ptr, 0, size)
        free(ptr)

    return op


def make_posix_memalign_nozero(size: int, align: int) -> Op:
    libc = _libc()
    posix_memalign, free = libc.posix_memalign, libc.free
    boundary = _memalign_align(align)
    ptr = ctypes.c_void_p()
    out = ctypes.byref(ptr)

    def op() -> None:
        if posix_memalign(out, boundary, size):
            raise MemoryError("posix_memalign failed")
        free(ptr)

    return op


def aligned_posix_memalign(size: int, align: int) -> bool:
    libc = _libc()
    addresses = []
    try:
        for _ in range(ALIGN_SAMPLES):
            ptr = ctypes.c_void_p()
            if libc.posix_memalign(ctypes.byref(ptr), _memalign_align(align), size):
                raise MemoryError("posix_memalign failed")
            addresses.append(ptr.value or 0)
        return _all_aligned(addresses, align)
    finally:
        for addr in addresses:
            libc.free(addr)


# --- mmap -------------------------------------------------------------------------


def make_mmap(size: int, align: int) -> Op:
    new = mmap.mmap

    def op() -> None:
        new(-1, size).close()

    return op


def aligned_mmap(size: int, align: int) -> bool:
    samples = [mmap.mmap(-1, size) for _ in range(ALIGN_SAMPLES)]
    try:
        return _all_aligned([_buffer_address(m) for m in samples], align)
    finally:
        for m in samples:
            m.close()


# --- NumPy data-memory handlers (NEP 49), each installed once per timed loop ---------


def numpy_handler(name: str, align: int) -> Any:
    """The "mem_handler" capsule of ``name``: "kmemcache" (kmemcache.numpy) or
    "aligned_alloc" (a C handler over aligned_alloc, built by the benchmark)."""
    _require("numpy")
    knp = _require("kmemcache.numpy")
    boundary = max(align, 16)
    if name == "kmemcache":
        return knp.handler(boundary)
    import _c_handler

    if boundary > 4096:
        raise PeerUnavailable("the aligned_alloc handler serves alignments up to 4096")
    return _c_handler.load().handler(boundary)


def with_handler(op: Op, handler: Any) -> Op:
    """``op`` run with ``handler`` as NumPy's current one: set by the harness once per
    timed loop (``_harness.entered``), as an application installs it once."""
    knp = _require("kmemcache.numpy")
    op.enter = lambda: knp.set_handler(handler)  # type: ignore[attr-defined]
    op.exit = knp.set_handler  # type: ignore[attr-defined]
    return op


def _numpy_handler_op(size: int, align: int, new_name: str, name: str) -> Op:
    return with_handler(_numpy_op(size, new_name), numpy_handler(name, align))


def make_numpy_kmemcache(size: int, align: int) -> Op:
    return _numpy_handler_op(size, align, "zeros", "kmemcache")


def make_numpy_kmemcache_empty(size: int, align: int) -> Op:
    return _numpy_handler_op(size, align, "empty", "kmemcache")


def make_numpy_c_handler(size: int, align: int) -> Op:
    return _numpy_handler_op(size, align, "zeros", "aligned_alloc")


def make_numpy_c_handler_empty(size: int, align: int) -> Op:
    return _numpy_handler_op(size, align, "empty", "aligned_alloc")


def _aligned_under(name: str, size: int, align: int) -> bool:
    np = _require("numpy")
    knp = _require("kmemcache.numpy")
    previous = knp.set_handler(numpy_handler(name, align))
    try:
        samples = [np.zeros(size, np.uint8) for _ in range(ALIGN_SAMPLES)]
    finally:
        knp.set_handler(previous)
    return _all_aligned([s.ctypes.data for s in samples], align)


def aligned_numpy_kmemcache(size: int, align: int) -> bool:
    return _aligned_under("kmemcache", size, align)


def aligned_numpy_c_handler(size: int, align: int) -> bool:
    return _aligned_under("aligned_alloc", size, align)


# --- registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One way of allocating, as listed in result tables."""

    key: str
    label: str
    make: Callable[[int, int], Op]
    aligned: Callable[[int, int], bool]
    zeroed: bool

    @property
    def baseline(self) -> str:
        """The kmemcache op this peer's ratio is taken against."""
        return baseline_for(self)


PEERS: tuple[Peer, ...] = (
    # zeroed buffers; the first is the baseline of every zeroed peer
    Peer(
        "kmemcache_zalloc_free",
        "kmemcache zalloc+free",
        make_kmemcache_zalloc_free,
        aligned_kmemcache,
        True,
    ),
    Peer(
        "kmemcache_zalloc_drop",
        "kmemcache zalloc+drop",
        make_kmemcache_zalloc_drop,
        aligned_kmemcache,
        True,
    ),
    Peer("kmalloc_kzalloc", "kmemcache kzalloc+kfree", make_kmalloc_kzalloc, aligned_kmalloc, True),
    Peer("bytearray", "bytearray(n) create+drop", make_bytearray, aligned_bytearray, True),
    Peer(
        "numpy_slice",
        "numpy zeros(n+align) + slice",
        make_numpy_slice,
        aligned_numpy_slice,
        True,
    ),
    Peer("numpy_zeros", "numpy zeros(n)", make_numpy_zeros, aligned_numpy_plain, True),
    Peer("pyfftw_zeros", "pyfftw.zeros_aligned", make_pyfftw_zeros, aligned_pyfftw, True),
    Peer(
        "posix_memalign",
        "posix_memalign+memset+free (ctypes)",
        make_posix_memalign,
        aligned_posix_memalign,
        True,
    ),
    Peer("mmap", "mmap(-1, n) create+close", make_mmap, aligned_mmap, True),
    Peer(
        "numpy_kmemcache",
        "numpy zeros(n), kmemcache.numpy handler",
        make_numpy_kmemcache,
        aligned_numpy_kmemcache,
        True,
    ),
    Peer(
        "numpy_c_handler",
        "numpy zeros(n), C aligned_alloc handler",
        make_numpy_c_handler,
        aligned_numpy_c_handler,
        True,
    ),
    # contents undefined; the first is the baseline of every unzeroed peer
    Peer(
        "kmemcache_alloc_free",
        "kmemcache alloc+free",
        make_kmemcache_alloc_free,
        aligned_kmemcache,
        False,
    ),
    Peer(
        "kmalloc_kmalloc",
        "kmemcache kmalloc+kfree",
        make_kmalloc_kmalloc,
        aligned_kmalloc,
        False,
    ),
    Peer(
        "numpy_slice_empty",
        "numpy empty(n+align) + slice",
        make_numpy_slice_empty,
        aligned_numpy_slice,
        False,
    ),
    Peer("numpy_empty", "numpy empty(n)", make_numpy_empty, aligned_numpy_plain, False),
    Peer("pyfftw_empty", "pyfftw.empty_aligned", make_pyfftw_empty, aligned_pyfftw, False),
    Peer(
        "pyarrow_allocate",
        "pyarrow.allocate_buffer(n) create+drop",
        make_pyarrow_allocate,
        aligned_pyarrow,
        False,
    ),
    Peer(
        "posix_memalign_nozero",
        "posix_memalign+free (ctypes)",
        make_posix_memalign_nozero,
        aligned_posix_memalign,
        False,
    ),
    Peer(
        "numpy_kmemcache_empty",
        "numpy empty(n), kmemcache.numpy handler",
        make_numpy_kmemcache_empty,
        aligned_numpy_kmemcache,
        False,
    ),
    Peer(
        "numpy_c_handler_empty",
        "numpy empty(n), C aligned_alloc handler",
        make_numpy_c_handler_empty,
        aligned_numpy_c_handler,
        False,
    ),
)

#: The ratio of a zeroed peer is taken against zalloc+free, of an unzeroed one
#: against alloc+free: like against like.
BASELINE = PEERS[0].key
BASELINE_UNZEROED = "kmemcache_alloc_free"


def baseline_for(p: Peer) -> str:
    """The kmemcache op a peer's ratio is taken against."""
    return BASELINE if p.zeroed else BASELINE_UNZEROED


def peer(key: str) -> Peer:
    """The peer with this key."""
    for p in PEERS:
        if p.key == key:
            return p
    raise KeyError(key)


# --- candidates for the harness ---------------------------------------------------


class AllocOp(Protocol):
    """What ``build_candidates`` needs of an op: a ``Peer`` or a benchmark's own."""

    @property
    def key(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def zeroed(self) -> bool: ...
    @property
    def baseline(self) -> str: ...
    @property
    def make(self) -> Callable[[int, int], Op]: ...
    @property
    def aligned(self) -> Callable[[int, int], bool]: ...


def build_candidates(ops: Sequence[AllocOp], size: int, align: int) -> list[h.Candidate]:
    """One candidate per op; unavailable or broken ops are recorded, not raised."""
    out = []
    for p in ops:
        cand = h.Candidate(key=p.key, label=p.label, zeroed=p.zeroed)
        try:
            cand.aligned = p.aligned(size, align)
            cand.op = p.make(size, align)
        except PeerUnavailable as exc:
            cand.status, cand.note = "not installed", str(exc)
        except Exception as exc:  # report the broken op and measure the rest
            cand.fail(exc)
        out.append(cand)
    return out


def records_for(ops: Sequence[AllocOp], cands: Sequence[h.Candidate]) -> list[dict[str, Any]]:
    """JSON records, each with its ratio against the kmemcache op its ``baseline`` names."""
    by_key = {c.key: c for c in cands}
    out = []
    for p, cand in zip(ops, cands, strict=True):
        base = by_key.get(p.baseline)
        rec = h.candidate_record(cand, base if base is not None and base.samples_ns else None)
        rec["baseline"] = p.baseline
        out.append(rec)
    return out
