"""The engine's per-thread caches, seen from Python threads.

Each Python thread has its own cache of every kmemcache cache's slabs: objects it
frees wait there, counted as free and in ``cached_objs``. These tests check that
shrink() takes them back from a thread that is alive and idle, that a thread's exit
gives them back, that objects freed by another thread than the one that allocated
them (remote frees) are counted, and that os.fork() in a loop while a thread churns
leaves a child that can allocate and free at once and a parent that loses nothing.
The engine's own tests, without the GIL, are in tests/c/test_heaps.c.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable

import pytest
from helpers import run_python, under_asan

from kmemcache import Cache, Object

MakeCache = Callable[..., Cache]


def test_shrink_takes_back_an_idle_threads_cache(make_cache: MakeCache) -> None:
    cache = make_cache("idle_thread", 512)
    ready, go_on = threading.Event(), threading.Event()
    seen: list[int] = []

    def work() -> None:
        cache.free_bulk(cache.alloc_bulk(200))
        ready.set()
        go_on.wait(30)
        objs = cache.alloc_bulk(200, zero=True)  # its cache was taken: it refills
        seen.append(sum(any(memoryview(o)) for o in objs))
        cache.free_bulk(objs)

    t = threading.Thread(target=work)
    t.start()
    try:
        assert ready.wait(30)
        s = cache.stats()
        assert (s.active_objs, s.thread_caches) == (0, 1)
        assert s.cached_objs == s.num_objs and s.committed_bytes > 0
        assert cache.shrink() > 0
        s = cache.stats()
        assert (s.thread_caches, s.cached_objs, s.committed_bytes, s.arenas) == (0, 0, 0, 0)
    finally:
        go_on.set()
        t.join()
    assert seen == [0]
    assert cache.stats().active_objs == 0 and cache.validate() == 0


def test_a_threads_exit_gives_its_cache_back(make_cache: MakeCache) -> None:
    cache = make_cache("exiting_thread", 256)
    kept: list[Object] = []

    def work() -> None:
        objs = cache.alloc_bulk(100)
        kept.extend(objs[:10])
        cache.free_bulk(objs[10:])

    t = threading.Thread(target=work)
    t.start()
    t.join()
    # join() returns when the Python thread is done; the OS thread gives its
    # cache back a moment later, as it exits
    deadline = time.monotonic() + 10
    while cache.stats().thread_caches and time.monotonic() < deadline:
        time.sleep(0.001)
    s = cache.stats()
    try:
        assert (s.thread_caches, s.cached_objs, s.active_objs) == (0, 0, 10)
    finally:
        cache.free_bulk(kept)
    assert cache.stats().active_objs == 0 and cache.validate() == 0


def test_frees_by_another_thread_are_counted(make_cache: MakeCache) -> None:
    cache = make_cache("remote", 64, 64)
    objs = cache.alloc_bulk(1000)
    t = threading.Thread(target=cache.free_bulk, args=(objs,))
    t.start()
    t.join()
    s = cache.stats()
    assert (s.active_objs, s.frees, s.remote_frees) == (0, 1000, 1000)
    again = cache.alloc_bulk(1000)  # the freed slots, merged once each
    assert len({o.address for o in again}) == 1000
    assert cache.stats().num_slabs == s.num_slabs
    cache.free_bulk(again)
    assert cache.validate() == 0


def test_fork_in_a_loop_while_a_thread_churns(make_cache: MakeCache) -> None:
    small, large = make_cache("fork_small", 64), make_cache("fork_large", 3000, 64)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        held: list[Object] = []
        try:
            while not stop.is_set():
                held.extend(small.alloc_bulk(20) + [large.zalloc() for _ in range(5)])
                while len(held) > 100:
                    held.pop(0).free()
        except BaseException as exc:
            errors.append(exc)
        finally:
            for obj in held:
                obj.free()

    t = threading.Thread(target=churn)
    t.start()
    statuses = []
    try:
        with warnings.catch_warnings():
            # CPython 3.12+ warns that fork() in a threaded process may deadlock
            # the child: what this test shows the engine does not do
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(30):
                pid = os.fork()
                if pid == 0:  # the child: allocate, free, validate, at once
                    status = 1
                    try:
                        for cache in (small, large):
                            cache.free_bulk(cache.alloc_bulk(300, zero=True))
                            assert cache.validate() == 0
                        status = 0
                    finally:
                        os._exit(status)
                statuses.append(os.waitpid(pid, 0)[1])
    finally:
        stop.set()
        t.join()
    assert not errors
    assert statuses == [0] * 30
    for cache in (small, large):
        s = cache.stats()
        assert s.active_objs == 0 and s.allocs == s.frees
        assert cache.validate() == 0


def test_a_ring_of_large_objects_reuses_its_slabs(make_cache: MakeCache) -> None:
    # four 256 KiB objects live at a time: every slab emptied is kept and
    # refilled, none made anew
    cache = make_cache("ring", 256 * 1024)
    ring = [cache.alloc() for _ in range(4)]
    created = cache.stats().slabs_created
    for i in range(1000):
        ring[i % 4].free()
        ring[i % 4] = cache.alloc()
    s = cache.stats()
    assert s.slabs_created <= created + 1 and s.slabs_released == 0
    cache.free_bulk(ring)


TEN_THOUSAND = """
    import resource
    import kmemcache
    limit = 16_000_000_000  # ulimit -v 16000000
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    caches = [kmemcache.Cache(f"small{i}", 100) for i in range(10_000)]
    objs = [c.alloc() for c in caches]
    print(max(c.stats().reserved_bytes for c in caches))
    for o in objs:
        o.free()
    for c in caches:
        c.destroy()
"""


@pytest.mark.skipif(under_asan(), reason="AddressSanitizer's shadow memory is above any limit")
def test_ten_thousand_one_object_caches_under_a_16_gb_limit() -> None:
    done = run_python(TEN_THOUSAND)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) <= 1 << 20  # a few objects: 1 MiB of address space
