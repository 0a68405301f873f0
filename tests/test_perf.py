"""Tests for the perf model (kmemcache.demo.perf): the change's alloc/free helpers,
the options it weighed, and task contexts created at fork and freed at exit."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

import kmemcache
from kmemcache.demo import lbr_layout, perf, xsave
from kmemcache.slabinfo import all_stats

SIZE = lbr_layout.X86_LBR_CACHE_SIZE
ALIGN = lbr_layout.X86_LBR_CACHE_ALIGN


def live_objects(name: str) -> int:
    return sum(s.active_objs for s in all_stats() if s.name == name)


def kmalloc_live() -> int:
    return sum(s.active_objs for s in all_stats() if s.name.startswith("kmalloc-"))


@pytest.fixture
def lbr_pmu() -> Iterator[perf.Pmu]:
    pmu = perf.x86_lbr_pmu()
    yield pmu
    perf.release_pmu(pmu)


@pytest.fixture
def plain_pmu() -> perf.Pmu:
    return perf.x86_lbr_pmu(cache=False)


@pytest.fixture
def callback_pmu() -> Iterator[perf.CallbackPmu]:
    pmu = perf.callback_pmu()
    yield pmu
    perf.release_pmu(pmu)


# --- the change: alloc_task_ctx_data / free_task_ctx_data ---------------------


def test_x86_lbr_pmu_has_the_kernels_cache(lbr_pmu: perf.Pmu) -> None:
    cache = lbr_pmu.task_ctx_cache
    assert cache is not None
    stats = cache.stats()
    assert (stats.name, stats.size, stats.align) == ("x86_lbr", 1512, 64)
    assert lbr_pmu.task_ctx_size == 1512 and lbr_pmu.name == "cpu"


def test_alloc_with_a_cache_uses_the_cache(lbr_pmu: perf.Pmu) -> None:
    kmalloc_before = kmalloc_live()
    data = perf.alloc_task_ctx_data(lbr_pmu)
    assert data.cache is lbr_pmu.task_ctx_cache
    assert live_objects("x86_lbr") == 1
    assert kmalloc_live() == kmalloc_before
    assert len(data) == SIZE and data.address % ALIGN == 0
    assert bytes(memoryview(data)) == bytes(SIZE)
    perf.free_task_ctx_data(lbr_pmu, data)
    assert live_objects("x86_lbr") == 0 and data.freed


def test_alloc_zeroes_recycled_objects(lbr_pmu: perf.Pmu) -> None:
    first = perf.alloc_task_ctx_data(lbr_pmu)
    with memoryview(first) as view:
        view[:] = b"\xff" * SIZE
    perf.free_task_ctx_data(lbr_pmu, first)
    again = [perf.alloc_task_ctx_data(lbr_pmu) for _ in range(8)]
    for data in again:
        assert bytes(memoryview(data)) == bytes(SIZE)
        perf.free_task_ctx_data(lbr_pmu, data)


def test_alloc_without_a_cache_falls_back_to_kzalloc(plain_pmu: perf.Pmu) -> None:
    before = kmalloc_live()
    data = perf.alloc_task_ctx_data(plain_pmu)
    assert kmalloc_live() == before + 1
    assert data.cache.stats().name.startswith("kmalloc-")
    assert len(data) >= SIZE
    with memoryview(data) as view:
        assert bytes(view[:SIZE]) == bytes(SIZE)
    perf.free_task_ctx_data(plain_pmu, data)
    assert kmalloc_live() == before and data.freed


def test_free_none_frees_nothing(lbr_pmu: perf.Pmu, plain_pmu: perf.Pmu) -> None:
    keep = [perf.alloc_task_ctx_data(lbr_pmu), perf.alloc_task_ctx_data(plain_pmu)]
    before = {s.name: (s.active_objs, s.frees) for s in all_stats()}
    perf.free_task_ctx_data(lbr_pmu, None)  # kmem_cache_free is skipped for NULL
    perf.free_task_ctx_data(plain_pmu, None)  # kfree(NULL)
    # no cache counted a free, or lost an object
    assert {s.name: (s.active_objs, s.frees) for s in all_stats()} == before
    assert not any(data.freed for data in keep)
    perf.free_task_ctx_data(lbr_pmu, keep[0])
    perf.free_task_ctx_data(plain_pmu, keep[1])


def test_double_free_is_detected_and_changes_nothing(lbr_pmu: perf.Pmu) -> None:
    keep = perf.alloc_task_ctx_data(lbr_pmu)
    data = perf.alloc_task_ctx_data(lbr_pmu)
    perf.free_task_ctx_data(lbr_pmu, data)
    with pytest.raises(kmemcache.DoubleFreeError):
        perf.free_task_ctx_data(lbr_pmu, data)
    assert live_objects("x86_lbr") == 1
    perf.free_task_ctx_data(lbr_pmu, keep)


def test_free_with_the_wrong_pmu_is_refused(lbr_pmu: perf.Pmu, plain_pmu: perf.Pmu) -> None:
    data = perf.alloc_task_ctx_data(plain_pmu)
    with pytest.raises(kmemcache.InvalidFreeError):
        perf.free_task_ctx_data(lbr_pmu, data)  # a kmalloc object is not the cache's
    assert not data.freed
    perf.free_task_ctx_data(plain_pmu, data)


def test_alloc_and_free_reject_what_is_not_a_pmu() -> None:
    with pytest.raises(TypeError, match="Pmu"):
        perf.alloc_task_ctx_data("cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Pmu"):
        perf.free_task_ctx_data(None, None)  # type: ignore[arg-type]


def test_memory_error_leaves_the_cache_working(lbr_pmu: perf.Pmu) -> None:
    from kmemcache import _kmemcache as core

    held = [perf.alloc_task_ctx_data(lbr_pmu) for _ in range(16)]  # fill the current slabs
    core._os_fail_after(0)
    try:
        with pytest.raises(MemoryError):
            while True:
                held.append(perf.alloc_task_ctx_data(lbr_pmu))
    finally:
        core._os_fail_after(-1)
    held.append(perf.alloc_task_ctx_data(lbr_pmu))
    for data in held:
        perf.free_task_ctx_data(lbr_pmu, data)
    assert live_objects("x86_lbr") == 0


# --- struct pmu ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, exc",
    [
        (("", 64), TypeError),
        ((b"cpu", 64), TypeError),
        (("cpu", 0), ValueError),
        (("cpu", -1), ValueError),
        (("cpu", 1.5), TypeError),
        (("cpu", True), TypeError),
        (("cpu", 64, "cache"), TypeError),
    ],
)
def test_pmu_rejects_bad_fields(args: tuple[object, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        perf.Pmu(*args)  # type: ignore[arg-type]


def test_pmu_cache_must_match_the_size() -> None:
    with kmemcache.Cache("ctx", 128, align=64) as cache:
        with pytest.raises(ValueError, match="128"):
            perf.Pmu("cpu", 256, cache)
        assert perf.Pmu("cpu", 128, cache).task_ctx_cache is cache


def test_pmu_refuses_a_destroyed_cache() -> None:
    cache = kmemcache.Cache("ctx", 128)
    cache.destroy()
    with pytest.raises(ValueError, match="destroyed"):
        perf.Pmu("cpu", 128, cache)


def test_struct_pmu_sizes_follow_the_fields() -> None:
    """Option 1 adds one field (the alignment), option 2 two (the callbacks)."""
    plain = perf.Pmu("cpu", 64)
    over = perf.OverallocPmu("cpu", 64)
    cb = perf.callback_pmu(64, 64)
    try:
        assert sys.getsizeof(over) == sys.getsizeof(plain) + 8
        assert sys.getsizeof(cb) == sys.getsizeof(plain) + 16
    finally:
        perf.release_pmu(cb)


@pytest.mark.parametrize("align", [0, 3, 48, -64])
def test_bad_alignments_are_refused(align: int) -> None:
    with pytest.raises(ValueError):
        perf.OverallocPmu("cpu", 64, None, align)
    with pytest.raises(ValueError):
        perf.x86_lbr_pmu(64, align)


def test_release_pmu_refuses_while_contexts_are_live(lbr_pmu: perf.Pmu) -> None:
    data = perf.alloc_task_ctx_data(lbr_pmu)
    with pytest.raises(kmemcache.CacheBusyError):
        perf.release_pmu(lbr_pmu)
    perf.free_task_ctx_data(lbr_pmu, data)
    perf.release_pmu(lbr_pmu)
    assert lbr_pmu.task_ctx_cache is not None and lbr_pmu.task_ctx_cache.destroyed
    perf.release_pmu(lbr_pmu)  # twice is fine


# --- the other options ---------------------------------------------------------


@pytest.mark.parametrize("align", [8, 64, 256, 4096])
def test_overalloc_rounds_up_inside_one_kzalloc(align: int) -> None:
    pmu = perf.OverallocPmu("cpu", 1000, None, align)
    before = kmalloc_live()
    datas = [perf.overalloc_alloc_task_ctx_data(pmu) for _ in range(32)]
    assert kmalloc_live() == before + 32
    for data in datas:
        assert data.address % align == 0
        assert len(data) == 1000
        assert 0 <= data.offset < align
        assert data.address == data.handle.address + data.offset
        with perf.task_ctx_view(data) as view:
            assert xsave.address_of(view) == data.address
            assert bytes(view) == bytes(1000)
    for data in datas:
        perf.overalloc_free_task_ctx_data(pmu, data)
        assert data.handle.freed
    assert kmalloc_live() == before
    perf.overalloc_free_task_ctx_data(pmu, None)


def test_overalloc_pmu_has_no_cache() -> None:
    with kmemcache.Cache("ctx", 64) as cache:
        with pytest.raises(ValueError, match="kzalloc"):
            perf.OverallocPmu("cpu", 64, cache)


def test_callbacks_allocate_from_the_pmus_own_cache(callback_pmu: perf.CallbackPmu) -> None:
    data = perf.callback_alloc_task_ctx_data(callback_pmu)
    assert data.cache.stats().name == "x86_lbr_cb"
    assert data.address % ALIGN == 0 and len(data) == SIZE
    assert live_objects("x86_lbr_cb") == 1
    perf.callback_free_task_ctx_data(callback_pmu, data)
    perf.callback_free_task_ctx_data(callback_pmu, None)
    assert live_objects("x86_lbr_cb") == 0


def test_callback_pmu_needs_callables() -> None:
    with pytest.raises(TypeError, match="callable"):
        perf.CallbackPmu("cpu", 64, None, None, None)


# --- tasks ---------------------------------------------------------------------


def options() -> list[tuple[str, object]]:
    return [
        ("kzalloc", lambda: (perf.x86_lbr_pmu(cache=False), perf.PATCH)),
        ("overalloc", lambda: (perf.OverallocPmu("cpu", SIZE), perf.OVERALLOC)),
        ("callbacks", lambda: (perf.callback_pmu(), perf.CALLBACKS)),
        ("kmem_cache", lambda: (perf.x86_lbr_pmu(), perf.PATCH)),
    ]


@pytest.mark.parametrize("name, make", options(), ids=[n for n, _ in options()])
def test_tasks_created_and_exited_free_everything(name: str, make) -> None:  # type: ignore[no-untyped-def]
    pmu, allocator = make()
    before = {s.name: s.active_objs for s in all_stats()}
    try:
        tasks = [perf.fork_task(pid, pmu, allocator) for pid in range(64)]
        for task in tasks:
            ctx = task.perf_event_ctxp
            assert ctx is not None and ctx.task is task and ctx.pmu is pmu
            with perf.task_ctx_view(ctx.task_ctx_data) as view:
                assert view.nbytes >= SIZE
                if name != "kzalloc":  # kzalloc promises no alignment
                    assert xsave.address_of(view) % ALIGN == 0
        # Churn: half exit, as many are created.
        for i in range(0, 64, 2):
            perf.perf_event_exit_task(tasks[i])
            assert tasks[i].perf_event_ctxp is None
            tasks[i] = perf.fork_task(100 + i, pmu, allocator)
        for task in tasks:
            perf.perf_event_exit_task(task)
            perf.perf_event_exit_task(task)  # a second exit finds nothing to free
        after = {s.name: s.active_objs for s in all_stats()}
        assert {k: v for k, v in after.items() if v != before.get(k, 0)} == {}
    finally:
        perf.release_pmu(pmu)


def test_task_contexts_pass_xsave(lbr_pmu: perf.Pmu) -> None:
    tasks = [perf.fork_task(pid, lbr_pmu) for pid in range(16)]
    need = xsave.area_size() if xsave.is_supported() else 0
    for task in tasks:
        assert task.perf_event_ctxp is not None
        with perf.task_ctx_view(task.perf_event_ctxp.task_ctx_data) as view:
            offset = lbr_layout.XSAVE_AREA_OFFSET
            with view[offset : offset + max(need, 1)] as area:
                expected = "ok" if xsave.is_supported() else "skipped"
                assert xsave.check(area) == expected
    for task in tasks:
        perf.perf_event_exit_task(task)


def test_init_task_twice_is_refused(lbr_pmu: perf.Pmu) -> None:
    task = perf.fork_task(1, lbr_pmu)
    ctx = task.perf_event_ctxp
    with pytest.raises(ValueError, match="already"):
        perf.perf_event_init_task(task, lbr_pmu)
    assert task.perf_event_ctxp is ctx and live_objects("x86_lbr") == 1
    perf.perf_event_exit_task(task)


def test_init_task_rejects_bad_arguments(lbr_pmu: perf.Pmu) -> None:
    with pytest.raises(TypeError, match="Task"):
        perf.perf_event_init_task(object(), lbr_pmu)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Pmu"):
        perf.perf_event_init_task(perf.Task(1), "cpu")  # type: ignore[arg-type]
    assert live_objects("x86_lbr") == 0


def test_failed_fork_leaves_no_context(lbr_pmu: perf.Pmu) -> None:
    from kmemcache import _kmemcache as core

    held = [perf.fork_task(pid, lbr_pmu) for pid in range(16)]
    core._os_fail_after(0)
    task = perf.Task(99)
    try:
        with pytest.raises(MemoryError):
            for _ in range(4096):
                perf.perf_event_init_task(task, lbr_pmu)
                held.append(task)
                task = perf.Task(99)
    finally:
        core._os_fail_after(-1)
    assert task.perf_event_ctxp is None
    for t in held:
        perf.perf_event_exit_task(t)
    assert live_objects("x86_lbr") == 0


def test_exit_keeps_the_context_if_the_free_fails(lbr_pmu: perf.Pmu) -> None:
    task = perf.fork_task(1, lbr_pmu)
    ctx = task.perf_event_ctxp
    assert ctx is not None
    view = perf.task_ctx_view(ctx.task_ctx_data)  # a view pins the object
    with pytest.raises(BufferError):
        perf.perf_event_exit_task(task)
    assert task.perf_event_ctxp is ctx
    view.release()
    perf.perf_event_exit_task(task)
    assert task.perf_event_ctxp is None and live_objects("x86_lbr") == 0


@pytest.mark.parametrize("after_the_free", [True, False])
def test_exit_interrupted_in_the_free_frees_once(lbr_pmu: perf.Pmu, after_the_free: bool) -> None:
    # Ctrl-C can land as the free returns: the next exit must find nothing to
    # free, and data the free never reached must still go with its handle
    def free(pmu: perf.Pmu, data: object) -> None:
        if after_the_free:
            perf.PATCH.free(pmu, data)
        raise KeyboardInterrupt

    interrupted = perf.TaskCtxAllocator("interrupted", perf.PATCH.alloc, free)
    task = perf.fork_task(1, lbr_pmu, interrupted)
    with pytest.raises(KeyboardInterrupt):
        perf.perf_event_exit_task(task)
    assert task.perf_event_ctxp is None
    perf.perf_event_exit_task(task)  # no DoubleFreeError
    gc.collect()
    assert live_objects("x86_lbr") == 0


def test_task_repr() -> None:
    assert "pid=7" in repr(perf.Task(7))
