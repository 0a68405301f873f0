"""The demo's run: perf's task context data under task churn, four ways.

The workload is the one Linux perf's Arch LBR support creates: every task that
runs with an LBR call-stack event has a perf context holding PMU-specific
data (1512 bytes for 32 LBR entries, see :mod:`kmemcache.demo.lbr_layout`) whose
XSAVE area must be 64-byte aligned. Many tasks are alive at once, and many
more are created and exit. The demo runs it with each option the kernel
change weighed (:mod:`kmemcache.demo.perf`):

0. ``kzalloc(size)``: the code before the change; no alignment promise.
1. ``kzalloc(size + align)`` and round the address up.
2. per-PMU alloc/free callbacks, the PMU allocating from its own aligned cache.
3. ``kmem_cache_zalloc`` from a cache created with the alignment: the change.

and a reference row, 4. ``bytearray(size)``: what a Python program does without
kmemcache (Python's own allocator, zeroed, no alignment promise).

How each number is measured
---------------------------
* ``bytes_per_object``: slab memory holding the live contexts, from the
  allocator's own counters: the sum over every cache of ``active_slabs *
  slab_size`` (slabs with at least one live object; empty slabs kept in
  reserve are not counted) after ``live`` tasks were created, minus the same
  sum before, divided by ``live``. Caches are whole slabs of whole pages, so this
  is what the OS backs. Allocator metadata (kept outside the slabs) is left out
  for every option alike; a request kmalloc serves with whole pages is counted
  as those pages. The reference row's data is on Python's heap, not in slabs:
  its ``bytes_per_object`` is what ``tracemalloc`` sees ``live`` of its buffers
  take, allocated alone.
* ``python_bytes_per_task``: Python heap allocated per live task (the task,
  its context, the handles and views, and for the reference row the data
  itself), by ``tracemalloc`` over the same step.
* ``pmu_struct_bytes``: ``sys.getsizeof`` of the option's ``struct pmu`` model
  (8 bytes per field, like the C pointers and sizes it stands for).
* ``ns_per_alloc_free``: the context data of a live task, chosen at random,
  freed and allocated again (``free(pmu, data); data = alloc(pmu)``), in a
  timed loop; ``ns_per_task``: a task, chosen at random, exits and a new task
  is created in its place (the perf model's bookkeeping included). Both loops
  run for every option in each round, options taking turns in a rotating
  order, with the cyclic garbage collector paused, timed by the CPU time of the
  thread (``time.thread_time_ns``), so time spent descheduled on a busy machine
  is not counted. The numbers are medians over the rounds, with quartiles in
  the JSON; ``alloc_free_vs_option_3`` is the median over rounds of each
  round's ratio to option 3, measured moments apart, so drift cancels.
* ``misaligned``: live contexts at the end of the churn whose first byte is
  not on a multiple of ``align``, read from the buffer's address.
* ``xsave``: a real XSAVE/XRSTOR (:mod:`kmemcache.demo.xsave`) into the XSAVE area
  of every live context at the end (offset 64, as in the kernel's struct):
  "ok" when every one succeeds, "fault" when some area is not 64-byte
  aligned, proven by running the instruction in a child process (one per
  distinct misalignment; the child dies from SIGSEGV), "skipped" where the
  CPU or OS has no XSAVE or the context is too small to hold the area.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any, cast

from .._kmemcache import TRACE_DOMAIN, CacheBusyError
from ..kmalloc import large_stats
from ..slabinfo import all_stats
from . import measure, perf, xsave
from .config import FAULT_CHECK_MISALIGN, DemoConfig
from .lbr_layout import XSAVE_AREA_OFFSET
from .measure import Progress


@dataclasses.dataclass
class OptionResult:
    """One option's measurements (the module docstring says how each is made)."""

    option: int
    name: str
    label: str
    requested_bytes: int  #: what the option asks the allocator for per context
    bytes_per_object: float
    python_bytes_per_task: float
    pmu_struct_bytes: int
    ns_per_alloc_free: float
    ns_per_task: float
    misaligned: int
    contexts_checked: int
    xsave: xsave.Verdict
    xsave_note: str = ""
    #: median over rounds of this option's alloc+free time / option 3's
    alloc_free_vs_option_3: float = float("nan")
    alloc_free_samples: list[float] = dataclasses.field(default_factory=list)
    task_samples: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DemoResult:
    """Everything a run measured."""

    config: DemoConfig
    options: list[OptionResult]
    xsave_supported: bool
    xsave_area_size: int
    fault_check: xsave.Verdict  #: XSAVE on a deliberately misaligned buffer, in a child
    seconds: float = 0.0

    def option(self, index: int) -> OptionResult:
        """The result of option ``index`` (0 to 3)."""
        return next(o for o in self.options if o.option == index)


# --- the options -------------------------------------------------------------


@dataclasses.dataclass
class _Option:
    index: int
    name: str
    label: str
    requested: int
    pmu: perf.Pmu
    allocator: perf.TaskCtxAllocator
    tasks: list[perf.Task] = dataclasses.field(default_factory=list)
    next_pid: int = 1
    #: where the data lives: "slabs" (kmemcache's) or "python" (Python's heap)
    memory: str = "slabs"


def _make_options(size: int, align: int) -> list[_Option]:
    made: list[_Option] = []
    try:
        made.append(
            _Option(
                0,
                "kzalloc",
                "kzalloc(size)",
                size,
                perf.x86_lbr_pmu(size, align, False),
                perf.PATCH,
            )
        )
        made.append(
            _Option(
                1,
                "kzalloc_align_up",
                "kzalloc(size + align), round up",
                size + align,
                perf.OverallocPmu("cpu", size, None, align),
                perf.OVERALLOC,
            )
        )
        made.append(
            _Option(
                2,
                "pmu_callbacks",
                "per-PMU alloc/free callbacks",
                size,
                perf.callback_pmu(size, align),
                perf.CALLBACKS,
            )
        )
        made.append(
            _Option(
                3,
                "kmem_cache",
                "kmem_cache_zalloc (the change)",
                size,
                perf.x86_lbr_pmu(size, align),
                perf.PATCH,
            )
        )
        made.append(
            _Option(
                4,
                "bytearray",
                "bytearray(size), for reference",
                size,
                perf.x86_lbr_pmu(size, align, False),
                perf.BYTEARRAY,
                memory="python",
            )
        )
    except BaseException:
        for opt in made:
            perf.release_pmu(opt.pmu)
        raise
    return made


#: The four options the kernel weighed and the reference row.
OPTIONS = 5


def _bytes_in_use() -> int:
    """Slab bytes holding live objects, plus pages of live large kmalloc allocations."""
    slabs = sum(s.active_slabs * s.slab_size for s in all_stats())
    return slabs + large_stats()[1]


def _python_heap() -> int:
    """Bytes tracemalloc traces on Python's heap: kmemcache traces its objects in
    a domain of its own (kmemcache.TRACE_DOMAIN), counted by the slab column."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(inclusive=False, domain=TRACE_DOMAIN)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def _python_bytes_per_object(opt: _Option, live: int) -> float:
    """Python heap bytes one context's data takes: ``live`` of them made alone."""
    made: list[Any] = [None] * live
    gc.collect()
    tracemalloc.start()
    try:
        before = _python_heap()
        for i in range(live):
            made[i] = opt.allocator.alloc(opt.pmu)
        after = _python_heap()
    finally:
        tracemalloc.stop()
    for data in made:
        opt.allocator.free(opt.pmu, data)
    return (after - before) / live


def _fork_live(opt: _Option, live: int) -> tuple[float, float]:
    """Create ``live`` tasks; return (memory, Python bytes) per task."""
    opt.tasks = [None] * live  # type: ignore[list-item]  # no list growth while traced
    tasks = opt.tasks
    gc.collect()
    slab_before = _bytes_in_use()
    tracemalloc.start()
    try:
        py_before = _python_heap()
        for i in range(live):
            tasks[i] = perf.fork_task(opt.next_pid, opt.pmu, opt.allocator)
            opt.next_pid += 1
        py_after = _python_heap()
    finally:
        tracemalloc.stop()
    slab_after = _bytes_in_use()
    if opt.memory == "python":
        return _python_bytes_per_object(opt, live), (py_after - py_before) / live
    return (slab_after - slab_before) / live, (py_after - py_before) / live


def _time_alloc_free(opt: _Option, order: Sequence[int]) -> float:
    """ns of the thread's CPU time per context data freed and allocated again."""
    contexts = [task.perf_event_ctxp for task in opt.tasks]
    if any(ctx is None for ctx in contexts):
        raise RuntimeError("every live task has a perf context")
    ctxs = cast("list[perf.PerfEventContext]", contexts)

    def loop(
        order: Sequence[int] = order,
        ctxs: list[perf.PerfEventContext] = ctxs,
        pmu: perf.Pmu = opt.pmu,
        alloc: Any = opt.allocator.alloc,
        free: Any = opt.allocator.free,
    ) -> None:
        ctx = None
        try:
            for j in order:
                ctx = ctxs[j]
                free(pmu, ctx.task_ctx_data)
                ctx.task_ctx_data = alloc(pmu)
        except BaseException:
            # interrupted (Ctrl-C) between the free and the alloc: the
            # tear-down must not free that context again; a handle dropped
            # frees itself
            if ctx is not None:
                ctx.task_ctx_data = None
            raise

    return measure.time_call(loop).cpu_ns / len(order)


def _time_task_churn(opt: _Option, order: Sequence[int]) -> float:
    """ns of the thread's CPU time per task exited and created in its place."""

    def loop(
        order: Sequence[int] = order,
        tasks: list[perf.Task] = opt.tasks,
        pmu: perf.Pmu = opt.pmu,
        allocator: perf.TaskCtxAllocator = opt.allocator,
        exit_task: Any = perf.perf_event_exit_task,
        fork: Any = perf.fork_task,
        pid: int = opt.next_pid,
    ) -> None:
        for j in order:
            exit_task(tasks[j])
            tasks[j] = fork(pid, pmu, allocator)
            pid += 1

    cpu_ns = measure.time_call(loop).cpu_ns
    opt.next_pid += len(order)
    return cpu_ns / len(order)


def _check_contexts(opt: _Option, align: int) -> tuple[int, xsave.Verdict, str]:
    """Count misaligned live contexts and XSAVE into every one's XSAVE area."""
    supported = xsave.is_supported()
    need = xsave.area_size() if supported else 0
    misaligned = 0
    xsave_misalign: set[int] = set()
    too_small = False
    for task in opt.tasks:
        ctx = task.perf_event_ctxp
        assert ctx is not None
        with perf.task_ctx_view(ctx.task_ctx_data) as view:
            address = xsave.address_of(view)
            if address % align:
                misaligned += 1
            if not supported:
                continue
            if view.nbytes < XSAVE_AREA_OFFSET + need:
                too_small = True
                continue
            with view[XSAVE_AREA_OFFSET : XSAVE_AREA_OFFSET + need] as area:
                if xsave.check(area) == "fault":
                    xsave_misalign.add((address + XSAVE_AREA_OFFSET) % xsave.XSAVE_ALIGNMENT)
    if not supported:
        return misaligned, "skipped", "no XSAVE on this CPU or OS"
    if too_small:
        return misaligned, "skipped", f"contexts smaller than {XSAVE_AREA_OFFSET} + {need} bytes"
    if not xsave_misalign:
        return misaligned, "ok", ""
    # Misaligned areas are never XSAVEd here: prove the fault in a child.
    verdicts = {m: xsave.check_in_child(need, m) for m in sorted(xsave_misalign)}
    offs = ", ".join(f"{m}: {v}" for m, v in verdicts.items())
    verdict: xsave.Verdict = "fault" if "fault" in verdicts.values() else "ok"
    return misaligned, verdict, f"areas off a 64-byte boundary by (bytes: result) {offs}"


def _tear_down(opt: _Option) -> None:
    for task in opt.tasks:
        if task is not None:  # None: a slot _fork_live did not fill
            perf.perf_event_exit_task(task)
    opt.tasks = []
    perf.release_pmu(opt.pmu)


def run(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the demo and return what it measured."""
    started = time.perf_counter()
    rng = random.Random(config.seed)
    options = _make_options(config.size, config.align)
    assert len(options) == OPTIONS, "progress_steps counts OPTIONS options"
    steps = config.steps_per_round
    try:
        measured: dict[int, dict[str, Any]] = {}
        for opt in options:
            slab, py = _fork_live(opt, config.live)
            measured[opt.index] = {"slab": slab, "py": py, "af": [], "task": []}
            if progress:
                progress.step(f"{config.live} tasks forked: {opt.label}")
        # Warm-up round (not recorded), then the timed rounds, options taking turns.
        for rnd in range(-1, config.rounds):
            order = [
                rng.randrange(config.live) for _ in range(steps if rnd >= 0 else min(steps, 1000))
            ]
            turn = options[rnd % len(options) :] + options[: rnd % len(options)]
            for opt in turn:
                af = _time_alloc_free(opt, order)
                tk = _time_task_churn(opt, order)
                if rnd >= 0:
                    measured[opt.index]["af"].append(af)
                    measured[opt.index]["task"].append(tk)
                if progress:
                    progress.step(f"round {max(rnd + 1, 0)}/{config.rounds}: {opt.label}")
        results = []
        for opt in options:
            misaligned, verdict, note = _check_contexts(opt, config.align)
            m = measured[opt.index]
            results.append(
                OptionResult(
                    option=opt.index,
                    name=opt.name,
                    label=opt.label,
                    requested_bytes=opt.requested,
                    bytes_per_object=round(m["slab"], 1),
                    python_bytes_per_task=round(m["py"], 1),
                    pmu_struct_bytes=sys.getsizeof(opt.pmu),
                    ns_per_alloc_free=round(statistics.median(m["af"]), 1),
                    ns_per_task=round(statistics.median(m["task"]), 1),
                    misaligned=misaligned,
                    contexts_checked=len(opt.tasks),
                    xsave=verdict,
                    xsave_note=note,
                    alloc_free_samples=m["af"],
                    task_samples=m["task"],
                )
            )
            if progress:
                progress.step(f"checked: {opt.label}")
        base = next(r for r in results if r.option == 3).alloc_free_samples
        for res in results:
            res.alloc_free_vs_option_3 = round(
                measure.paired_ratio(res.alloc_free_samples, base)[0], 3
            )
    except BaseException:
        # interrupted (Ctrl-C) anywhere: a step cut short may hold an object no
        # task records yet, so a cache may refuse to go; the interruption is
        # what the caller hears about, and those handles free themselves
        for opt in options:
            with contextlib.suppress(CacheBusyError):
                _tear_down(opt)
        raise
    for opt in options:
        _tear_down(opt)
    supported = xsave.is_supported()
    area = xsave.area_size() if supported else 0
    fault = xsave.check_in_child(area, FAULT_CHECK_MISALIGN) if supported else "skipped"
    if progress:
        progress.step("XSAVE fault check")
    return DemoResult(
        config=config,
        options=results,
        xsave_supported=supported,
        xsave_area_size=area,
        fault_check=fault,
        seconds=time.perf_counter() - started,
    )


def progress_steps(config: DemoConfig) -> int:
    """How many steps :func:`run` reports."""
    return OPTIONS + OPTIONS * (config.rounds + 1) + OPTIONS + 1


__all__ = [
    "OPTIONS",
    "DemoResult",
    "OptionResult",
    "progress_steps",
    "run",
]
