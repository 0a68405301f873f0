"""tracemalloc sees kmemcache's objects: every Cache's and the kmalloc family's, in a
domain of their own, from allocation to free; NumPy's arrays through the handler are
traced once, by NumPy."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest

import kmemcache
from kmemcache import Cache, kfree, kmalloc, krealloc, kzalloc

NUMPY_DOMAIN = 389047  # NumPy's own, numpy/_core/include/numpy/ndarraytypes.h


def traced(domain: int = kmemcache.TRACE_DOMAIN) -> dict[int, int]:
    """{domain's traces' first line number: bytes} now."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
    out: dict[int, int] = {}
    for trace in snap.traces:
        line = trace.traceback[0].lineno
        out[line] = out.get(line, 0) + trace.size
    return out


def total(domain: int = kmemcache.TRACE_DOMAIN) -> int:
    return sum(traced(domain).values())


@pytest.fixture
def tracing() -> Iterator[None]:
    gc.collect()
    tracemalloc.start(1)
    try:
        yield
    finally:
        tracemalloc.stop()


def test_the_domain_is_documented_and_apart_from_numpys() -> None:
    assert kmemcache.TRACE_DOMAIN == 0x6B6D63 != NUMPY_DOMAIN
    assert (
        "KMEMCACHE_TRACE_DOMAIN 0x6b6d63u" in open(kmemcache.get_include() + "/kmemcache.h").read()
    )


def test_cache_objects_are_traced_until_freed(tracing: None) -> None:
    with Cache("traced", 1512, align=64) as cache:
        base = total()
        objs = [cache.zalloc() for _ in range(10)]
        bulk = cache.alloc_bulk(5)
        assert total() - base == 15 * 1512
        cache.free_bulk(bulk)
        objs[0].free()
        assert total() - base == 9 * 1512
        del objs[1]  # dropped: freed, so untraced
        assert total() - base == 8 * 1512
        for o in objs[1:]:  # objs[0] is the freed one
            o.free()
        assert total() == base


def test_kmalloc_objects_are_traced_with_the_size_asked_for(tracing: None) -> None:
    base = total()
    small = kmalloc(100)
    big = kzalloc(100_000, align=4096)
    empty = kmalloc(0)  # ZERO_SIZE_PTR is shared: not traced
    assert total() - base == 100 + 100_000
    small = krealloc(small, 3000)  # moved to kmalloc-4k
    assert total() - base == 3000 + 100_000
    big = krealloc(big, 50_000)  # shrunk in place
    assert total() - base == 3000 + 50_000
    for o in (small, big, empty):
        kfree(o)
    assert total() == base


def test_the_trace_says_where_the_object_was_made(tracing: None) -> None:
    obj = kzalloc(4000)
    line = test_the_trace_says_where_the_object_was_made.__code__.co_firstlineno + 1
    assert traced().get(line) == 4000, traced()
    obj.free()


def test_nothing_is_traced_when_tracing_is_off() -> None:
    assert not tracemalloc.is_tracing()
    obj = kzalloc(100)
    tracemalloc.start()
    try:
        assert total() == 0  # made before: not traced, and its free is harmless
        obj.free()
        assert total() == 0
    finally:
        tracemalloc.stop()


def test_numpy_arrays_are_traced_once_by_numpy(tracing: None) -> None:
    np = pytest.importorskip("numpy")
    knp = pytest.importorskip("kmemcache.numpy")
    with knp.aligned(64):
        base_np, base_k = total(NUMPY_DOMAIN), total()
        a = np.zeros(100_000, np.uint8)
        b = np.ones(1000, np.uint8)
        assert total(NUMPY_DOMAIN) - base_np == 101_000
        assert total() == base_k  # not a second time in kmemcache's domain
        del a, b
        assert total(NUMPY_DOMAIN) == base_np
