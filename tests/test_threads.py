"""Several Python threads on shared caches at once.

Each thread writes a tag (its id and a counter, repeated over the whole
object) into every object it allocates and checks it before freeing: an
object handed to two threads at once, or memory reused while live, shows up
as a changed tag. The switch interval is made tiny so that threads interleave
between almost every bytecode.

Python threads take turns on the GIL, so this exercises the binding and the
engine's bookkeeping under interleaving, not true parallelism. The engine's
own thread safety, without any GIL, is tested from C with pthreads in
tests/c/test_engine.c (make -C tests/c check, and tsan).
"""

from __future__ import annotations

import random
import struct
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from kmemcache import Cache, CacheBusyError, DoubleFreeError

THREADS = 4

MakeCache = Callable[..., Cache]


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    """Start n threads at the same moment; re-raise the first failure."""
    start = threading.Barrier(n)
    failures: list[BaseException] = []

    def body(tid: int) -> None:
        start.wait()
        try:
            target(tid)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=body, args=(tid,)) for tid in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def tag_bytes(tid: int, counter: int, size: int) -> bytes:
    unit = struct.pack("<HIH", tid, counter & 0xFFFFFFFF, 0xA5A5)
    return (unit * (size // len(unit) + 1))[:size]


def test_tagged_objects_on_shared_caches(make_cache: MakeCache) -> None:
    constructed = b"\xc7" * 100
    caches = [
        make_cache("t24", 24),
        make_cache("t200", 200, align=64),
        make_cache("t4000", 4000),
        make_cache("tctor", 100, ctor=lambda view: view.__setitem__(slice(None), constructed)),
    ]
    allocated = [0] * THREADS

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        held: list[tuple[object, bytes]] = []
        counter = 0

        def release(obj: object, tag: bytes) -> None:
            assert bytes(memoryview(obj)) == tag, f"thread {tid}: a tag was overwritten"
            obj.free()  # type: ignore[attr-defined]

        for _ in range(6000):
            r = rng.random()
            if r < 0.45 or not held:
                cache = rng.choice(caches)
                zero = cache.ctor is None and rng.random() < 0.5
                obj = cache.zalloc() if zero else cache.alloc()
                if zero:
                    assert bytes(memoryview(obj)) == bytes(len(obj))
                assert obj.address % cache.align == 0
                counter += 1
                tag = tag_bytes(tid, counter, len(obj))
                memoryview(obj)[:] = tag
                held.append((obj, tag))
                allocated[tid] += 1
            elif r < 0.9:
                release(*held.pop(rng.randrange(len(held))))
            elif r < 0.95:
                cache = caches[rng.randrange(3)]
                objs = cache.alloc_bulk(rng.randrange(1, 20))
                tags = []
                for obj in objs:
                    counter += 1
                    tags.append(tag_bytes(tid, counter, len(obj)))
                    memoryview(obj)[:] = tags[-1]
                allocated[tid] += len(objs)
                for obj, tag in zip(objs, tags, strict=True):
                    assert bytes(memoryview(obj)) == tag, f"thread {tid}: bulk tag overwritten"
                cache.free_bulk(objs)
            elif r < 0.97:
                rng.choice(caches).shrink()
            else:
                for obj, tag in held:
                    assert bytes(memoryview(obj)) == tag, f"thread {tid}: a held tag changed"
        while held:
            release(*held.pop())

    run_threads(worker)
    total_allocs = 0
    for cache in caches:
        s = cache.stats()
        assert s.active_objs == 0
        assert s.allocs == s.frees
        assert cache.validate() == 0
        total_allocs += s.allocs
    assert total_allocs == sum(allocated)


def test_racing_frees_of_the_same_objects(make_cache: MakeCache) -> None:
    cache = make_cache("race", 64)
    objs = cache.alloc_bulk(400)
    freed = [0] * THREADS
    doubles = [0] * THREADS

    def worker(tid: int) -> None:
        order = list(objs)
        random.Random(tid).shuffle(order)
        for obj in order:
            try:
                obj.free()
            except DoubleFreeError:
                doubles[tid] += 1
            else:
                freed[tid] += 1

    run_threads(worker)
    assert sum(freed) == 400  # each object freed exactly once
    assert sum(doubles) == 400 * (THREADS - 1)
    s = cache.stats()
    assert (s.active_objs, s.frees) == (0, 400)
    assert cache.validate() == 0


def test_caches_made_and_destroyed_while_others_allocate(make_cache: MakeCache) -> None:
    shared = make_cache("steady", 128)

    def worker(tid: int) -> None:
        for round_ in range(150):
            if tid % 2:
                with Cache(f"churn{tid}", 64 * (tid + 1), align=64) as mine:
                    objs = mine.alloc_bulk(20)
                    for i, obj in enumerate(objs):
                        memoryview(obj)[:] = tag_bytes(tid, i, len(obj))
                    for i, obj in enumerate(objs):
                        assert bytes(memoryview(obj)) == tag_bytes(tid, i, len(obj))
                    mine.free_bulk(objs)
            else:
                obj = shared.alloc()
                memoryview(obj)[:] = tag_bytes(tid, round_, 128)
                assert bytes(memoryview(obj)) == tag_bytes(tid, round_, 128)
                obj.free()

    run_threads(worker)
    assert shared.stats().active_objs == 0
    assert shared.stats().allocs == 150 * (THREADS // 2)


def test_destroy_from_another_thread_while_a_ctor_runs() -> None:
    in_ctor, tried = threading.Event(), threading.Event()
    outcome: list[str] = []

    def ctor(view: memoryview) -> None:
        if not in_ctor.is_set():
            in_ctor.set()
            assert tried.wait(30)  # the GIL is released while we wait

    cache = Cache("ctorwait", 64, ctor=ctor)

    def destroyer() -> None:
        assert in_ctor.wait(30)
        try:
            cache.destroy()
        except CacheBusyError as exc:
            outcome.append(str(exc))
        finally:
            tried.set()

    thread = threading.Thread(target=destroyer)
    thread.start()
    obj = cache.alloc()  # builds a slab: the ctor waits for the destroyer
    thread.join()
    assert len(outcome) == 1 and "ctor" in outcome[0]
    assert not cache.destroyed
    obj.free()
    assert cache.validate() == 0
    cache.destroy()
