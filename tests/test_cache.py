"""kmemcache.Cache: the API, its guarantees, and its answers to bad input.

Each guarantee of the Cache API has a test here that fails when the guarantee
breaks: alignment, no overlap, ownership, zeroing of recycled objects, the
constructor's once-per-slab contract, all-or-nothing bulk operations, memory
going back to the OS, and a specific exception (with nothing changed) for
every bad argument and every misuse that can be caught in-process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import re
import time
import weakref
from collections.abc import Callable

import numpy as np
import pytest
from helpers import run_python

import kmemcache
from kmemcache import (
    MAX_ALIGN,
    MAX_SIZE,
    MIN_ALIGN,
    PAGE_SIZE,
    Cache,
    CacheBusyError,
    DoubleFreeError,
    Flags,
    InvalidFreeError,
    SlabError,
)
from kmemcache import _kmemcache as _core

MiB = 1 << 20
CACHE_LINE = 64

MakeCache = Callable[..., Cache]


def counters(cache: Cache) -> tuple[int, int, int, int]:
    """The counters that any change to a cache moves."""
    s = cache.stats()
    return (s.active_objs, s.allocs, s.frees, s.num_slabs)


def live_cache_names() -> list[str]:
    return [raw["name"] for raw in _core._caches()]


def fill(obj: kmemcache.Object, value: int) -> None:
    memoryview(obj)[:] = bytes([value]) * len(obj)


def assert_filled(obj: kmemcache.Object, value: int) -> None:
    data = bytes(memoryview(obj))
    assert data == bytes([value]) * len(obj), f"object at {obj.address:#x} changed"


# --- construction and bad arguments -------------------------------------------------


def test_defaults(make_cache: MakeCache) -> None:
    cache = make_cache("defaults", 100)
    assert cache.name == "defaults"
    assert cache.size == 100
    assert cache.align == MIN_ALIGN == 8
    assert cache.flags == 0
    assert cache.ctor is None
    assert not cache.destroyed
    s = cache.stats()
    assert (s.size, s.align, s.objsize) == (100, 8, 104)
    assert (s.active_objs, s.num_objs, s.num_slabs) == (0, 0, 0)
    assert "defaults" in live_cache_names()


def test_limits_are_the_documented_ones() -> None:
    assert MAX_SIZE == 4 * MiB
    assert MAX_ALIGN == 2 * MiB
    assert PAGE_SIZE % 4096 == 0


def test_flags_are_an_intflag_with_slub_values() -> None:
    assert issubclass(Flags, int)
    assert Flags.HWCACHE_ALIGN == 0x2000
    assert Flags.CONSISTENCY_CHECKS == 0x100
    assert Flags.RED_ZONE == 0x400
    assert Flags.POISON == 0x800
    assert Flags.STORE_USER == 0x10000


@pytest.mark.parametrize("name", [None, b"bytes", 42, ["list"], 3.5])
def test_name_not_a_str_is_a_type_error(name: object) -> None:
    before = live_cache_names()
    with pytest.raises(TypeError, match="str"):
        Cache(name, 64)  # type: ignore[arg-type]
    assert live_cache_names() == before


@pytest.mark.parametrize(
    "name", ["", "two words", "tab\there", "new\nline", "nul\0byte", "x" * 64, "\x7f"]
)
def test_bad_name_is_a_value_error(name: str) -> None:
    before = live_cache_names()
    with pytest.raises(ValueError):
        Cache(name, 64)
    assert live_cache_names() == before


@pytest.mark.parametrize("name", ["x" * 63, "café", "kmalloc-64", "a"])
def test_good_names(make_cache: MakeCache, name: str) -> None:
    assert make_cache(name, 8).name == name


@pytest.mark.parametrize("size", [1.0, "64", None, True, 64j])
def test_size_not_an_int_is_a_type_error(size: object) -> None:
    with pytest.raises(TypeError):
        Cache("bad", size)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, -(2**70), MAX_SIZE + 1, 2**63, 2**70])
def test_size_out_of_range_is_a_value_error(size: int) -> None:
    before = live_cache_names()
    with pytest.raises(ValueError):
        Cache("bad", size)
    assert live_cache_names() == before


@pytest.mark.parametrize(
    "align", [3, 6, 12, 24, 100, -8, -1, MAX_ALIGN * 2, MAX_ALIGN + 8, 2**63, 2**70]
)
def test_align_not_a_power_of_two_in_range_is_a_value_error(align: int) -> None:
    before = live_cache_names()
    with pytest.raises(ValueError):
        Cache("bad", 64, align=align)
    assert live_cache_names() == before


@pytest.mark.parametrize("align", [8.0, "8", False])
def test_align_not_an_int_is_a_type_error(align: object) -> None:
    with pytest.raises(TypeError):
        Cache("bad", 64, align=align)  # type: ignore[arg-type]


@pytest.mark.parametrize("flags", [1, 0x4000, 0x8000_0000, -1, 2**32 + 0x2000, 2**64, 2**70])
def test_unknown_flags_are_a_value_error(flags: int) -> None:
    before = live_cache_names()
    with pytest.raises(ValueError):
        Cache("bad", 64, flags=flags)
    assert live_cache_names() == before


@pytest.mark.parametrize("flags", ["HWCACHE_ALIGN", 1.0, None])
def test_flags_not_an_int_is_a_type_error(flags: object) -> None:
    with pytest.raises(TypeError):
        Cache("bad", 64, flags=flags)  # type: ignore[arg-type]


def test_ctor_not_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="callable"):
        Cache("bad", 64, ctor=42)  # type: ignore[arg-type]


# --- objects and the buffer protocol ------------------------------------------------


def test_object_basics(make_cache: MakeCache) -> None:
    cache = make_cache("basics", 100, align=32)
    obj = cache.alloc()
    assert len(obj) == 100
    assert isinstance(obj.address, int)
    assert obj.address % 32 == 0
    assert obj.cache is cache
    assert not obj.freed
    assert "basics" in repr(obj)
    assert cache.stats().active_objs == 1
    obj.free()
    assert obj.freed
    assert obj.cache is cache
    assert "freed" in repr(obj)
    assert cache.stats().active_objs == 0


def test_memoryview_is_writable_contiguous_bytes_without_copy(make_cache: MakeCache) -> None:
    cache = make_cache("mv", 48, align=16)
    obj = cache.alloc()
    view = memoryview(obj)
    assert (view.format, view.itemsize, view.ndim) == ("B", 1, 1)
    assert view.shape == (48,) and view.nbytes == 48
    assert not view.readonly
    assert view.c_contiguous
    view[:] = bytes(range(48))
    # another view sees the same memory: no copy was made
    with memoryview(obj) as other:
        assert bytes(other) == bytes(range(48))
    # and the memory is the object's: read it at its address
    assert ctypes.string_at(obj.address, 48) == bytes(range(48))
    view.release()
    obj.free()


def test_numpy_frombuffer_shares_the_object(make_cache: MakeCache) -> None:
    cache = make_cache("np", 64, align=64)
    obj = cache.zalloc()
    arr = np.frombuffer(obj, dtype=np.uint64)
    assert arr.shape == (8,)
    assert arr.flags.writeable
    assert arr.ctypes.data == obj.address
    arr[:] = np.arange(8, dtype=np.uint64) * 3
    with memoryview(obj).cast("Q") as q:
        assert list(q) == [i * 3 for i in range(8)]
    with pytest.raises(BufferError):
        obj.free()
    del arr
    obj.free()


def test_ctypes_structure_from_buffer_shares_the_object(make_cache: MakeCache) -> None:
    class Header(ctypes.Structure):
        _fields_ = [("magic", ctypes.c_uint32), ("count", ctypes.c_uint32), ("x", ctypes.c_double)]

    cache = make_cache("ctypes", ctypes.sizeof(Header), align=64)
    obj = cache.zalloc()
    hdr = Header.from_buffer(obj)
    assert ctypes.addressof(hdr) == obj.address
    hdr.magic, hdr.count, hdr.x = 0xFEEDFACE, 7, 2.5
    with memoryview(obj) as view:
        assert view[:4].cast("I")[0] == 0xFEEDFACE
        assert view[4:8].cast("I")[0] == 7
        assert view[8:16].cast("d")[0] == 2.5
    with pytest.raises(BufferError):
        cache.free(obj)
    del hdr
    cache.free(obj)


def test_free_while_viewed_is_a_buffer_error_and_the_object_stays_valid(
    make_cache: MakeCache,
) -> None:
    cache = make_cache("viewed", 32)
    obj = cache.alloc()
    fill(obj, 0x3C)
    view = memoryview(obj)
    arr = np.frombuffer(obj, dtype=np.uint8)
    before = counters(cache)
    with pytest.raises(BufferError, match="2 buffer views"):
        obj.free()
    with pytest.raises(BufferError):
        cache.free(obj)
    with pytest.raises(BufferError):
        cache.free_bulk([obj])
    with pytest.raises(BufferError):
        obj.__exit__(None, None, None)
    assert counters(cache) == before
    assert not obj.freed and len(obj) == 32
    assert_filled(obj, 0x3C)
    view[0] = 1  # still writable memory of a live object
    assert arr[0] == 1
    view.release()
    with pytest.raises(BufferError, match="1 buffer view "):
        obj.free()
    del arr
    obj.free()
    assert cache.stats().active_objs == 0


def test_freed_object_is_a_value_error_everywhere(make_cache: MakeCache) -> None:
    cache = make_cache("freed", 64)
    obj = cache.alloc()
    obj.free()
    for use in (
        lambda: memoryview(obj),
        lambda: np.frombuffer(obj, dtype=np.uint8),
        lambda: ctypes.c_char.from_buffer(obj),
        lambda: bytes(obj),
        lambda: len(obj),
        lambda: obj.address,
        lambda: obj.__enter__(),
    ):
        with pytest.raises(ValueError):
            use()


def test_destroyed_cache_is_a_value_error_everywhere() -> None:
    cache = Cache("destroyed", 64)
    obj = cache.alloc()
    obj.free()
    cache.destroy()
    assert cache.destroyed
    assert "destroyed" not in live_cache_names()
    for use in (
        cache.alloc,
        cache.zalloc,
        lambda: cache.alloc_bulk(2),
        lambda: cache.free(obj),
        lambda: cache.free_bulk([]),
        cache.shrink,
        cache.destroy,
        cache.stats,
        cache.validate,
        lambda: cache.name,
        cache.__enter__,
    ):
        with pytest.raises(ValueError, match="destroyed"):
            use()


def test_object_is_a_context_manager(make_cache: MakeCache) -> None:
    cache = make_cache("objctx", 16)
    with cache.alloc() as obj:
        assert cache.stats().active_objs == 1
        fill(obj, 1)
    assert obj.freed
    assert cache.stats().active_objs == 0
    with cache.alloc() as obj:
        obj.free()  # freeing inside the block is fine
    assert cache.stats().active_objs == 0


def test_cache_is_a_context_manager() -> None:
    with Cache("ctx", 16) as cache:
        cache.alloc().free()
        assert "ctx" in live_cache_names()
    assert cache.destroyed
    with pytest.raises(CacheBusyError):
        with Cache("ctxbusy", 16) as busy:
            obj = busy.alloc()
    assert not busy.destroyed
    obj.free()
    busy.destroy()


def test_unknown_flag_bits_are_named_in_hex() -> None:
    with pytest.raises(ValueError, match=r"^flags has unknown bits 0x10000000000$"):
        Cache("badflags", 64, flags=1 << 40)


def test_exit_never_replaces_the_blocks_exception() -> None:
    """The block's own error goes on; the cleanup's (the cache is busy) is a
    warning and a note on it, and the cache is left as it was."""
    with pytest.warns(RuntimeWarning, match="the cache could not be closed: .*CacheBusyError"):
        with pytest.raises(KeyError) as raised:
            with Cache("ctxraise", 16) as cache:
                obj = cache.alloc()
                raise KeyError("the block's")
    assert raised.value.args == ("the block's",) and raised.value.__context__ is None
    if hasattr(raised.value, "__notes__"):
        assert "CacheBusyError" in raised.value.__notes__[0]
    assert not cache.destroyed
    with pytest.warns(RuntimeWarning, match="the object could not be closed: BufferError"):
        with pytest.raises(ZeroDivisionError):
            with obj:
                view = memoryview(obj)
                1 / 0  # noqa: B018
    view.release()
    with pytest.raises(CacheBusyError):  # no exception going on: its own is raised
        cache.__exit__(None, None, None)
    obj.free()
    assert cache.__exit__(None, None, None) is None and cache.destroyed


# --- the allocator's own errors --------------------------------------------------


def test_error_hierarchy() -> None:
    for cls in (DoubleFreeError, InvalidFreeError, CacheBusyError):
        assert issubclass(cls, SlabError)
        assert cls.__module__ == "kmemcache"
    assert not issubclass(SlabError, (ValueError, MemoryError))


def test_double_free_is_detected_and_changes_nothing(make_cache: MakeCache) -> None:
    cache = make_cache("double", 64)
    keep = cache.alloc()
    fill(keep, 0x11)
    obj = cache.alloc()
    obj.free()
    before = counters(cache)
    with pytest.raises(DoubleFreeError, match="already free"):
        obj.free()
    with pytest.raises(DoubleFreeError):
        cache.free(obj)
    assert counters(cache) == before
    # the slot was not freed twice: two allocations give two objects
    a, b = cache.alloc(), cache.alloc()
    assert a.address != b.address
    assert_filled(keep, 0x11)
    cache.free_bulk([a, b, keep])
    assert cache.validate() == 0


def test_free_of_another_caches_object_is_an_invalid_free(make_cache: MakeCache) -> None:
    mine, other = make_cache("mine", 64), make_cache("other", 64)
    theirs = other.alloc()
    fill(theirs, 0x22)
    before, before_other = counters(mine), counters(other)
    with pytest.raises(InvalidFreeError, match="other"):
        mine.free(theirs)
    assert counters(mine) == before and counters(other) == before_other
    assert not theirs.freed
    assert_filled(theirs, 0x22)
    other.free(theirs)


@pytest.mark.parametrize(
    "garbage",
    [bytearray(64), None, 0, 12345, b"x" * 64, memoryview(bytearray(8)), object()],
    ids=["bytearray", "None", "zero", "int", "bytes", "memoryview", "object"],
)
def test_free_of_anything_not_ours_is_an_invalid_free(
    make_cache: MakeCache, garbage: object
) -> None:
    cache = make_cache("garbage", 64)
    live = cache.alloc()
    before = counters(cache)
    with pytest.raises(InvalidFreeError):
        cache.free(garbage)  # type: ignore[arg-type]
    assert counters(cache) == before
    live.free()


def test_free_of_a_live_objects_address_as_int_is_an_invalid_free(
    make_cache: MakeCache,
) -> None:
    cache = make_cache("addr", 64)
    obj = cache.alloc()
    with pytest.raises(InvalidFreeError):
        cache.free(obj.address)  # type: ignore[arg-type]
    assert not obj.freed and cache.stats().active_objs == 1
    obj.free()


def test_destroy_with_live_objects_says_how_many_and_changes_nothing(
    make_cache: MakeCache,
) -> None:
    cache = make_cache("busy", 64)
    objs = cache.alloc_bulk(3)
    for i, obj in enumerate(objs):
        fill(obj, i + 1)
    before = counters(cache)
    with pytest.raises(CacheBusyError, match=r"\b3 live\b") as info:
        cache.destroy()
    assert "busy" in str(info.value)
    assert not cache.destroyed and counters(cache) == before
    for i, obj in enumerate(objs):
        assert_filled(obj, i + 1)
    objs[0].free()
    with pytest.raises(CacheBusyError, match=r"\b2 live\b"):
        cache.destroy()
    cache.free_bulk(objs[1:])
    cache.destroy()
    assert cache.destroyed


# --- constructors ------------------------------------------------------------------


def test_ctor_runs_once_per_object_per_slab_not_per_alloc(make_cache: MakeCache) -> None:
    calls: list[int] = []

    def ctor(view: memoryview) -> None:
        assert isinstance(view, memoryview) and len(view) == 200 and not view.readonly
        view[:] = b"\xab" * 200
        calls.append(1)

    cache = make_cache("ctor", 200, ctor=ctor)
    assert cache.ctor is ctor
    obj = cache.alloc()
    per_slab = cache.stats().objperslab
    assert len(calls) == per_slab
    assert bytes(memoryview(obj)) == b"\xab" * 200
    # Bonwick's contract: a freed object keeps its state; no ctor on reuse
    memoryview(obj)[:4] = b"used"
    address = obj.address
    obj.free()
    again = cache.alloc()
    assert again.address == address
    assert bytes(memoryview(again))[:4] == b"used"
    assert len(calls) == per_slab
    more = cache.alloc_bulk(per_slab)  # needs a second slab
    s = cache.stats()
    assert s.slabs_created == 2
    assert len(calls) == s.slabs_created * s.objperslab
    assert all(bytes(memoryview(o)) == b"\xab" * 200 for o in more)
    cache.free_bulk([again, *more])


def test_zalloc_on_a_cache_with_a_ctor_is_a_value_error(make_cache: MakeCache) -> None:
    cache = make_cache("ctorz", 64, ctor=lambda view: None)
    before = counters(cache)
    with pytest.raises(ValueError, match="ctor"):
        cache.zalloc()
    with pytest.raises(ValueError, match="ctor"):
        cache.alloc_bulk(3, zero=True)
    assert counters(cache) == before


class CtorFailure(Exception):
    pass


def test_ctor_exception_propagates_and_the_cache_keeps_working(make_cache: MakeCache) -> None:
    state = {"fail_at": 5, "calls": 0}

    def ctor(view: memoryview) -> None:
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:
            raise CtorFailure("no thanks")
        view[:2] = b"ok"

    cache = make_cache("ctorfail", 64, ctor=ctor)
    with pytest.raises(CtorFailure, match="no thanks"):
        cache.alloc()
    s = cache.stats()
    assert (s.active_objs, s.num_slabs, s.allocs) == (0, 0, 0)
    state["fail_at"] = state["calls"] + 3
    with pytest.raises(CtorFailure):
        cache.alloc_bulk(2)
    assert cache.stats().active_objs == 0
    state["fail_at"] = -1
    obj = cache.alloc()
    assert bytes(memoryview(obj)[:2]) == b"ok"
    objs = cache.alloc_bulk(10)
    assert cache.stats().active_objs == 11
    cache.free_bulk([obj, *objs])
    assert cache.validate() == 0


def test_a_cache_initialised_again_after_destroy_forgets_its_ctor() -> None:
    cache = Cache("first", 64, ctor=lambda view: None)
    cache.destroy()
    with pytest.raises(TypeError, match="twice"):
        Cache.__init__(Cache("live", 8), "again", 8)
    cache.__init__("second", 32)
    assert (cache.name, cache.size, cache.ctor) == ("second", 32, None)
    objs = cache.alloc_bulk(2, zero=True)
    assert all(bytes(memoryview(o)) == bytes(32) for o in objs)
    cache.free_bulk(objs)
    cache.destroy()


def test_ctor_that_keeps_a_view_is_refused(make_cache: MakeCache) -> None:
    kept: list[object] = []
    cache = make_cache("ctorkeep", 64, ctor=lambda view: kept.append(view[:8]))
    with pytest.raises(ValueError, match="the ctor kept a view"):
        cache.alloc()
    assert cache.stats().active_objs == 0


# --- zeroing ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 5000])
def test_zalloc_zeroes_recycled_objects(make_cache: MakeCache, size: int) -> None:
    cache = make_cache("zero", size)
    obj = cache.alloc()
    fill(obj, 0xFF)
    address = obj.address
    obj.free()
    again = cache.zalloc()
    assert again.address == address  # really the recycled object
    assert_filled(again, 0)
    fill(again, 0xEE)
    again.free()
    bulk = cache.alloc_bulk(3, zero=True)
    assert address in [o.address for o in bulk]
    for o in bulk:
        assert_filled(o, 0)
    cache.free_bulk(bulk)


# --- objects dropped without free --------------------------------------------------


def test_dropped_objects_go_back_to_the_cache(make_cache: MakeCache) -> None:
    cache = make_cache("dropped", 64)
    obj = cache.alloc()
    assert cache.stats().active_objs == 1
    del obj
    assert cache.stats().active_objs == 0
    objs = cache.alloc_bulk(50)
    assert cache.stats().active_objs == 50
    del objs
    assert cache.stats().active_objs == 0
    # an object held only by a reference cycle goes back when the cycle is collected
    cycle: list[object] = [cache.alloc()]
    cycle.append(cycle)
    del cycle
    gc.collect()
    assert cache.stats().active_objs == 0
    assert cache.stats().frees == cache.stats().allocs


def test_objects_in_a_cycle_through_their_cache_go_back() -> None:
    cache = Cache("cycle", 64)
    cache.keep = cache.alloc_bulk(5)  # cache -> its __dict__ -> objects -> cache
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None
    assert "cycle" not in live_cache_names()


def test_a_handle_keeps_its_cache_alive() -> None:
    obj = Cache("orphan", 64).alloc()
    fill(obj, 0x5A)
    gc.collect()
    assert "orphan" in live_cache_names()
    assert_filled(obj, 0x5A)
    cache = obj.cache
    del cache
    obj.free()
    del obj
    gc.collect()
    assert "orphan" not in live_cache_names()


# --- bulk operations ---------------------------------------------------------------


def test_alloc_bulk_gives_n_distinct_aligned_objects(make_cache: MakeCache) -> None:
    cache = make_cache("bulk", 96, align=32)
    assert cache.alloc_bulk(0) == []
    objs = cache.alloc_bulk(300)
    assert len(objs) == 300
    addresses = sorted(o.address for o in objs)
    assert all(a % 32 == 0 for a in addresses)
    assert all(b - a >= 96 for a, b in zip(addresses, addresses[1:], strict=False))
    assert all(o.cache is cache and len(o) == 96 for o in objs)
    assert cache.stats().active_objs == 300
    cache.free_bulk(objs)
    assert all(o.freed for o in objs)
    assert cache.stats().active_objs == 0
    cache.free_bulk([])


def test_alloc_bulk_bad_n(make_cache: MakeCache) -> None:
    cache = make_cache("bulkn", 64)
    before = counters(cache)
    with pytest.raises(ValueError):
        cache.alloc_bulk(-1)
    with pytest.raises(ValueError):
        cache.alloc_bulk(2**70)
    for n in (1.0, "3", None):
        with pytest.raises(TypeError):
            cache.alloc_bulk(n)  # type: ignore[arg-type]
    assert counters(cache) == before


def test_alloc_bulk_is_all_or_nothing_when_the_os_refuses(make_cache: MakeCache) -> None:
    cache = make_cache("bulkfail", 1024)
    keep = cache.alloc()  # the arena exists: each new slab is one commit
    per_slab = cache.stats().objperslab
    before = cache.stats()
    _core._os_fail_after(2)  # two more slabs, then the OS says no
    with pytest.raises(MemoryError):
        cache.alloc_bulk(per_slab * 6)
    _core._os_fail_after(-1)
    after = cache.stats()
    assert after.active_objs == before.active_objs == 1
    assert after.allocs - after.frees == 1
    assert after.slabs_created == before.slabs_created + 2
    assert cache.validate() == 0
    objs = cache.alloc_bulk(per_slab * 6)
    assert cache.stats().active_objs == 1 + per_slab * 6
    cache.free_bulk([keep, *objs])


@pytest.mark.parametrize("bad", ["duplicate", "freed", "foreign", "garbage", "viewed"])
def test_free_bulk_is_all_or_nothing(make_cache: MakeCache, bad: str) -> None:
    cache = make_cache("freebulk", 64)
    other = make_cache("elsewhere", 64)
    objs = cache.alloc_bulk(4)
    for i, obj in enumerate(objs):
        fill(obj, i + 1)
    extra: object
    view = None
    if bad == "duplicate":
        extra, error = objs[1], DoubleFreeError
    elif bad == "freed":
        extra = cache.alloc()
        extra.free()
        error = DoubleFreeError
    elif bad == "foreign":
        extra, error = other.alloc(), InvalidFreeError
    elif bad == "garbage":
        extra, error = bytearray(64), InvalidFreeError
    else:
        extra = cache.alloc()
        view = memoryview(extra)
        error = BufferError
    before = counters(cache)
    with pytest.raises(error):
        cache.free_bulk([*objs[:3], extra, objs[3]])
    assert counters(cache) == before
    for i, obj in enumerate(objs):
        assert not obj.freed
        assert_filled(obj, i + 1)
    if view is not None:
        view.release()
    cache.free_bulk(objs)
    if isinstance(extra, kmemcache.Object) and not extra.freed:
        extra.free()


def test_free_bulk_takes_any_iterable_and_rejects_non_iterables(make_cache: MakeCache) -> None:
    cache = make_cache("iter", 64)
    cache.free_bulk(o for o in cache.alloc_bulk(3))
    cache.free_bulk(tuple(cache.alloc_bulk(2)))
    assert cache.stats().active_objs == 0
    with pytest.raises(TypeError):
        cache.free_bulk(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.free_bulk(5)  # type: ignore[arg-type]


# --- statistics and slabinfo ---------------------------------------------------------


def test_stats_fields_add_up(make_cache: MakeCache) -> None:
    cache = make_cache("stats", 100, align=16)
    objs = cache.alloc_bulk(100)
    for obj in objs[::2]:
        obj.free()
    s = cache.stats()
    assert isinstance(s, kmemcache.SlabStats)
    assert s.name == "stats"
    assert (s.size, s.align, s.objsize) == (100, 16, 112)
    assert s.active_objs == 50
    assert s.allocs - s.frees == s.active_objs
    assert s.objperslab == s.slab_size // s.objsize
    assert s.pagesperslab * PAGE_SIZE == s.slab_size
    assert s.num_objs == s.num_slabs * s.objperslab
    assert s.num_objs >= 100
    assert s.active_slabs <= s.num_slabs
    assert s.active_slabs * s.objperslab >= s.active_objs
    assert s.committed_bytes == s.num_slabs * s.slab_size
    assert s.empty_slabs + s.active_slabs <= s.num_slabs
    assert s.slabs_created - s.slabs_released == s.num_slabs
    assert s.arenas == 1
    assert s.metadata_bytes > 0
    # the dataclass is the engine's dict, field by field
    assert s == kmemcache.SlabStats.from_dict(cache._stats())
    cache.free_bulk(objs[1::2])


def test_stats_layout_is_the_structs_and_the_dicts(make_cache: MakeCache) -> None:
    fields, size = _core._stats_layout()
    names = [name for name, _, _ in fields]
    # every field of the dict, in struct order, and SlabStats has them all
    assert ["name", *names] == list(make_cache("layout", 64)._stats())
    assert set(names) <= {f.name for f in dataclasses.fields(kmemcache.SlabStats)}
    # the fields tile the struct: each starts where the one before ends, rounded
    # up to its own size (no field is left out), and only padding follows the last
    end = 0
    for name, offset, width in fields:
        assert width in (4, 8) and offset == -(-end // width) * width, name
        end = offset + width
    assert end <= size < end + 8


@pytest.mark.parametrize(
    "size", [1, 24, 100, 192, 700, 1500, 3000, 4095, 4097, 10_000, 100_000, 300_001, MiB]
)
def test_slab_waste_is_at_most_a_thirty_second(make_cache: MakeCache, size: int) -> None:
    s = make_cache("waste", size).stats()
    assert s.objperslab >= 1
    assert (s.slab_size - s.objperslab * s.objsize) * 32 <= s.slab_size
    # and the slab is the smallest that does it of at least 64 KiB, or of as
    # many bytes as 1024 objects fill when fewer bytes hold that many (what a
    # thread's cache holds of its current slab)
    floor = min(64 * 1024, 1 << (s.objsize * 1024).bit_length() - 1)
    assert s.slab_size >= floor and s.objperslab <= 1024 or s.objperslab == 1
    if s.slab_size > max(floor, s.objsize):
        smaller = s.slab_size // 2
        waste = smaller % s.objsize if smaller >= s.objsize else smaller
        assert smaller < floor or waste * 32 > smaller


# Linux's slabinfo_show() (mm/slab_common.c), printf format and all.
SLUB_ROW = "%-17s %6lu %6lu %6u %4u %4d : tunables %4u %4u %4u : slabdata %6lu %6lu %6lu"


def slub_row(s: kmemcache.SlabStats) -> str:
    """A cache's line as Linux prints it, for comparison with ours."""
    values = (s.name, s.active_objs, s.num_objs, s.objsize, s.objperslab, s.pagesperslab)
    return SLUB_ROW % (*values, 0, 0, 0, s.active_slabs, s.num_slabs, 0)  # noqa: UP031


def test_slabinfo_format(make_cache: MakeCache) -> None:
    first = make_cache("slabinfo_a", 64)
    second = make_cache("slabinfo_b", 3000, align=64)
    gone = Cache("slabinfo_gone", 64)
    gone.destroy()
    objs = first.alloc_bulk(70) + second.alloc_bulk(3)
    text = kmemcache.slabinfo()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "slabinfo - version: 2.1"
    header = (
        "# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
        " : tunables <limit> <batchcount> <sharedfactor>"
        " : slabdata <active_slabs> <num_slabs> <sharedavail>"
    )
    assert lines[1].split() == header.split()
    rows = lines[2:]
    assert [row.split()[0] for row in rows] == live_cache_names()
    assert "slabinfo_gone" not in text
    by_name = {row.split()[0]: row for row in rows}
    for cache in (first, second):
        s = cache.stats()
        assert by_name[s.name] == slub_row(s)
        fields = by_name[s.name].split()
        assert fields[1:6] == [
            str(v) for v in (s.active_objs, s.num_objs, s.objsize, s.objperslab, s.pagesperslab)
        ]
        assert fields[6:8] == [":", "tunables"] and fields[11:13] == [":", "slabdata"]
        assert fields[13:] == [str(s.active_slabs), str(s.num_slabs), "0"]
    assert first.stats().active_objs == 70 and second.stats().active_objs == 3
    first.free_bulk(objs[:70])
    second.free_bulk(objs[70:])


# --- memory goes back to the OS ----------------------------------------------------


def test_empty_slabs_wait_then_go_back_without_shrink(make_cache: MakeCache) -> None:
    cache = make_cache("delay", 512)
    objs = cache.alloc_bulk(cache.stats().objperslab * 40)
    full = cache.stats()
    assert full.num_slabs >= 40 and full.slabs_released == 0
    cache.free_bulk(objs)
    s = cache.stats()
    assert s.active_objs == 0 and s.active_slabs == 0
    # kept for the purge delay: a refill now costs no system call
    assert s.num_slabs == full.num_slabs and s.empty_slabs == s.num_slabs
    assert s.slabs_released == 0
    again = cache.alloc_bulk(len(objs))
    assert cache.stats().slabs_created == full.slabs_created
    cache.free_bulk(again)
    # then, idle, they go back to the OS on their own (within about two
    # delays of 500 ms; ten seconds is for a loaded machine)
    deadline = time.monotonic() + 10
    while cache.stats().num_slabs and time.monotonic() < deadline:
        time.sleep(0.05)
    after = cache.stats()
    assert (after.num_slabs, after.num_objs, after.committed_bytes) == (0, 0, 0)
    assert after.slabs_released == full.num_slabs
    # and shrink gives back what is left: the arenas
    assert cache.shrink() == full.metadata_bytes
    after = cache.stats()
    assert after.arenas == 0 and after.metadata_bytes == 0
    assert cache.shrink() == 0
    # and the cache grows again
    obj = cache.zalloc()
    assert_filled(obj, 0)
    obj.free()


def test_shrink_keeps_slabs_with_live_objects(make_cache: MakeCache) -> None:
    cache = make_cache("shrinklive", 1000)
    per_slab = cache.stats().objperslab
    objs = cache.alloc_bulk(per_slab * 8)
    keep = objs[::per_slab]  # one object in each slab
    for i, obj in enumerate(keep):
        fill(obj, i + 1)
    cache.free_bulk([o for o in objs if o not in keep])
    cache.shrink()
    s = cache.stats()
    assert s.num_slabs == s.active_slabs == 8
    assert s.active_objs == 8
    for i, obj in enumerate(keep):
        assert_filled(obj, i + 1)
    cache.free_bulk(keep)
    assert cache.shrink() > 0
    assert cache.stats().num_slabs == 0


def test_metadata_is_not_in_object_memory(make_cache: MakeCache) -> None:
    """A stray write into freed objects cannot corrupt the allocator.

    SLUB keeps its free pointer inside free objects; scribbling over them
    would send the next allocations anywhere. Here the slab stays committed
    (other objects in it are live), so the write is to mapped memory.
    """
    cache = make_cache("nometa", 64)
    per_slab = cache.stats().objperslab
    objs = cache.alloc_bulk(per_slab)
    freed = [o.address for o in objs[1::2]]
    cache.free_bulk(objs[1::2])
    for address in freed:
        ctypes.memset(address, 0xFF, 64)  # use after free, on purpose
    for obj in objs[::2]:
        fill(obj, 0x77)
    again = cache.alloc_bulk(len(freed))
    assert sorted(o.address for o in again) == sorted(freed)
    for obj in again:
        fill(obj, 0x33)
    for obj in objs[::2]:
        assert_filled(obj, 0x77)
    assert cache.validate() == 0
    cache.free_bulk(objs[::2] + again)


# --- alignment and sizes ------------------------------------------------------------


@pytest.mark.parametrize("shift", range(3, 22))
def test_every_power_of_two_alignment(make_cache: MakeCache, shift: int) -> None:
    align = 1 << shift
    for size in (1, align // 2 + 1, align + 1):
        if size > MAX_SIZE:
            continue
        cache = make_cache(f"align{align}", size, align=align)
        assert cache.align == align
        objs = cache.alloc_bulk(3)
        for obj in objs:
            assert obj.address % align == 0
            assert len(obj) == size
            memoryview(obj)[-1] = 0xAB  # the last byte is ours
        cache.free_bulk(objs)


def test_align_zero_means_eight(make_cache: MakeCache) -> None:
    cache = make_cache("align0", 13, align=0)
    objs = cache.alloc_bulk(20)
    assert cache.align == 8
    assert all(o.address % 8 == 0 for o in objs)
    assert cache.stats().objsize == 16
    cache.free_bulk(objs)


@pytest.mark.parametrize("align", [0, 8, 32, 64, 256])
def test_hwcache_align(make_cache: MakeCache, align: int) -> None:
    cache = make_cache("hwcache", 24, align=align, flags=Flags.HWCACHE_ALIGN)
    assert cache.align == max(align, CACHE_LINE)
    assert cache.flags & Flags.HWCACHE_ALIGN
    objs = cache.alloc_bulk(10)
    assert all(o.address % max(align, CACHE_LINE) == 0 for o in objs)
    cache.free_bulk(objs)


@pytest.mark.parametrize(
    "size",
    [1, 2, 3, 5, 7, 8, 9, 15, 17, 63, 65, 127, 255, 257, 1000, 1023, 4095, 4097, 65535,
     65537, 999_999, 2 * MiB - 1, 2 * MiB + 1, 3 * MiB + 5, MAX_SIZE - 1, MAX_SIZE],
)  # fmt: skip
def test_every_size_gets_its_bytes(make_cache: MakeCache, size: int) -> None:
    cache = make_cache("sizes", size)
    a, b = cache.alloc(), cache.alloc()
    assert len(a) == len(b) == size
    assert abs(a.address - b.address) >= size
    fill(a, 0xA1)
    fill(b, 0xB2)
    assert_filled(a, 0xA1)
    assert_filled(b, 0xB2)
    for obj in (a, b):
        assert _core._owner_of(obj.address) == ("sizes", obj.address)
        assert _core._owner_of(obj.address + size - 1) == ("sizes", obj.address)
    cache.free_bulk([a, b])


def test_owner_of_memory_outside_any_cache_is_none() -> None:
    buf = bytearray(64)
    address = ctypes.addressof((ctypes.c_char * 64).from_buffer(buf))
    assert _core._owner_of(address) is None
    assert _core._owner_of(0) is None


# --- out of memory -----------------------------------------------------------------


def test_memory_error_when_the_os_refuses_and_the_cache_keeps_working(
    make_cache: MakeCache,
) -> None:
    cache = make_cache("nomem", 4096, align=4096)
    _core._os_fail_after(0)
    for alloc in (cache.alloc, cache.zalloc, lambda: cache.alloc_bulk(1)):
        with pytest.raises(MemoryError):
            alloc()
    _core._os_fail_after(-1)
    assert cache.stats().active_objs == 0
    first = cache.alloc_bulk(cache.stats().objperslab)  # the first slab, full
    for obj in first:
        fill(obj, 1)
    _core._os_fail_after(0)  # the arena exists: now the next slab's commit fails
    with pytest.raises(MemoryError):
        cache.alloc()
    _core._os_fail_after(-1)
    assert cache.stats().active_objs == len(first)
    assert cache.validate() == 0
    second = cache.zalloc()
    assert_filled(second, 0)
    for obj in first:
        assert_filled(obj, 1)
    cache.free_bulk([*first, second])


RSS_SCRIPT = """
    import json, os, time
    import kmemcache

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    cache = kmemcache.Cache("rss", 64 * 1024, align=4096)
    warm = cache.alloc()  # the module, the arena and its metadata exist
    warm.free()
    cache.shrink()
    # made once: a temporary per object would measure malloc too (under
    # AddressSanitizer, its quarantine keeps 64 MiB of them resident)
    fill = b"\\x5c" * (64 * 1024)
    start = rss()
    objs = cache.alloc_bulk(1024)  # 64 MiB
    for obj in objs:
        memoryview(obj)[:] = fill
    full = rss()
    cache.free_bulk(objs)
    del objs
    freed = rss()
    # idle: the empty slabs go back to the OS on their own after the purge
    # delay (ten seconds is for a loaded machine)
    deadline = time.monotonic() + 10
    while rss() - start > 8 << 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    idle = rss()
    given_back = cache.shrink()
    end = rss()
    print(json.dumps(dict(start=start, full=full, freed=freed, idle=idle, end=end,
                          given_back=given_back, stats=cache._stats())))
"""


def test_rss_goes_back_near_the_start_after_free_and_shrink() -> None:
    done = run_python(RSS_SCRIPT)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["full"] - r["start"] >= 60 * MiB
    assert r["freed"] - r["start"] >= 48 * MiB  # kept for the purge delay
    assert r["idle"] - r["start"] <= 8 * MiB  # then given back without a call
    assert r["end"] - r["start"] <= 4 * MiB
    assert r["given_back"] > 0
    assert r["stats"]["num_slabs"] == 0


RLIMIT_SCRIPT = """
    import resource
    import kmemcache

    MiB = 1 << 20

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    cache = kmemcache.Cache("rlimit", MiB)
    first = cache.alloc()  # the first arena: 64 MiB of address space
    limit = vm_size() + 96 * MiB  # room for objects, not for a second arena
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    objs = [first]
    try:
        for _ in range(200):
            objs.append(cache.alloc())
    except MemoryError as exc:
        print("MemoryError", len(objs), exc)
    else:
        raise SystemExit("the OS never refused")
    s = cache.stats()
    assert s.active_objs == len(objs), (s, len(objs))
    assert cache.validate() == 0
    for i, obj in enumerate(objs):
        memoryview(obj)[:8] = i.to_bytes(8, "little")
    try:
        cache.alloc()
    except MemoryError:
        print("still refused")
    objs.pop().free()
    again = cache.zalloc()  # the freed slot: no new memory needed
    assert bytes(memoryview(again)) == bytes(MiB)
    for i, obj in enumerate(objs):
        assert int.from_bytes(memoryview(obj)[:8], "little") == i
    cache.free_bulk(objs + [again])
    cache.shrink()
    cache.destroy()
    print("ok")
"""


def test_memory_error_for_real_under_rlimit_as() -> None:
    done = run_python(RLIMIT_SCRIPT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.split("\n")
    assert out[0].startswith("MemoryError ")
    count = int(out[0].split()[1])
    assert 1 < count < 201
    assert out[1:3] == ["still refused", "ok"]


def test_error_messages_name_the_cache(make_cache: MakeCache) -> None:
    cache = make_cache("named_cache", 64)
    obj = cache.alloc()
    obj.free()
    with pytest.raises(DoubleFreeError, match="named_cache"):
        obj.free()
    with pytest.raises(InvalidFreeError, match="named_cache"):
        cache.free(None)  # type: ignore[arg-type]
    assert re.search(r"named_cache", repr(cache))


def test_slabstats_fields_are_the_engines_in_order() -> None:
    # one list, kmc.h's: SlabStats declares the same fields, and shows its words
    engine = [name for name, _ in kmemcache._kmemcache._stats_docs()]
    assert [f.name for f in dataclasses.fields(kmemcache.SlabStats)] == ["name", *engine]
    doc = kmemcache.SlabStats.__doc__ or ""
    for name, comment in kmemcache._kmemcache._stats_docs():
        assert f"- ``{name}``: {comment}." in doc
