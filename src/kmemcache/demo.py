"""``kmemcache demo``: perf's task context data under task churn, four ways.

The workload is the one Linux perf's Arch LBR support creates: every task that
runs with an LBR call-stack event has a perf context holding PMU-specific
data (1512 bytes for 32 LBR entries, see :mod:`kmemcache.lbr_layout`) whose
XSAVE area must be 64-byte aligned. Many tasks are alive at once, and many
more are created and exit. The demo runs it with each option the kernel
change weighed (:mod:`kmemcache.perf`):

0. ``kzalloc(size)``: the code before the change; no alignment promise.
1. ``kzalloc(size + align)`` and round the address up.
2. per-PMU alloc/free callbacks, the PMU allocating from its own aligned cache.
3. ``kmem_cache_zalloc`` from a cache created with the alignment: the change.

How each number is measured
---------------------------
* ``bytes_per_object``: slab memory holding the live contexts, from the
  allocator's own counters: the sum over every cache of ``active_slabs *
  slab_size`` (slabs with at least one live object; empty slabs kept in
  reserve are not counted) after ``live`` tasks were created, minus the same
  sum before, divided by ``live``. Caches are whole slabs of whole pages, so this
  is what the OS backs. Allocator metadata (kept outside the slabs) is left out
  for every option alike; a request kmalloc serves with whole pages is counted
  as those pages.
* ``python_bytes_per_task``: Python heap allocated per live task (the task,
  its context, the handles and views), by ``tracemalloc`` over the same step.
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
* ``xsave``: a real XSAVE/XRSTOR (:mod:`kmemcache.xsave`) into the XSAVE area
  of every live context at the end (offset 64, as in the kernel's struct):
  "ok" when every one succeeds, "fault" when some area is not 64-byte
  aligned, proven by running the instruction in a child process (one per
  distinct misalignment; the child dies from SIGSEGV), "skipped" where the
  CPU or OS has no XSAVE or the context is too small to hold the area.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any, cast

from . import perf, xsave
from .kmalloc import large_stats
from .lbr_layout import LBR_ENTRIES, X86_LBR_CACHE_ALIGN, X86_LBR_CACHE_SIZE, XSAVE_AREA_OFFSET
from .slabinfo import all_stats

#: Defaults: the kernel's x86_lbr object, and counts that make the default run
#: take about ten seconds.
DEFAULT_SIZE = X86_LBR_CACHE_SIZE
DEFAULT_ALIGN = X86_LBR_CACHE_ALIGN
DEFAULT_LIVE = 4096
DEFAULT_TASKS = 600_000
DEFAULT_ROUNDS = 30
#: How far past a 64-byte boundary the stand-alone fault check puts its buffer.
FAULT_CHECK_MISALIGN = 8


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What to run.

    Args:
        size: bytes of PMU data per task context.
        align: the alignment the contexts need (XSAVE needs 64).
        live: tasks alive at once, per option.
        tasks: tasks created and exited per option over all rounds (and as
            many alloc+free pairs).
        rounds: timed rounds; each option runs ``tasks / rounds`` of each loop
            per round.
        seed: seed of the random choice of which task exits.
    """

    size: int = DEFAULT_SIZE
    align: int = DEFAULT_ALIGN
    live: int = DEFAULT_LIVE
    tasks: int = DEFAULT_TASKS
    rounds: int = DEFAULT_ROUNDS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "align", "live", "tasks", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if self.align & (self.align - 1):
            raise ValueError(f"align must be a power of two, not {self.align}")

    @property
    def steps_per_round(self) -> int:
        """Tasks created and exited (and alloc+free pairs) per option in one round."""
        return max(1, self.tasks // self.rounds)


@dataclasses.dataclass
class OptionResult:
    """One option's measurements (see the module docstring for how)."""

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

    def as_json(self) -> dict[str, Any]:
        """The fields as JSON values, with quartiles instead of the raw samples."""
        out = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("alloc_free_samples", "task_samples")
        }
        out["ns_per_alloc_free_quartiles"] = _quartiles(self.alloc_free_samples)
        out["ns_per_task_quartiles"] = _quartiles(self.task_samples)
        return out


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

    def as_json(self) -> dict[str, Any]:
        """``{"options": [...], "config", "xsave", "claims", "seconds"}``."""
        return {
            "options": [o.as_json() for o in self.options],
            "config": dataclasses.asdict(self.config),
            "xsave": {
                "supported": self.xsave_supported,
                "area_size": self.xsave_area_size,
                "area_offset": XSAVE_AREA_OFFSET,
                "misaligned_by": FAULT_CHECK_MISALIGN,
                "misaligned_result": self.fault_check,
            },
            "claims": [dataclasses.asdict(c) for c in claims(self)],
            "seconds": round(self.seconds, 2),
        }


def _quartiles(samples: Sequence[float]) -> list[float]:
    if not samples:
        return []
    if len(samples) == 1:
        return [samples[0]] * 3
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return [round(x, 1) for x in q]


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.width = width
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = 0

    def step(self, label: str) -> None:
        """One step done; ``label`` says what is running."""
        self.done = min(self.done + 1, self.total)
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        line = (
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
            f"{100 * self.done // self.total:3d}% {label}"
        )
        sys.stderr.write(line.ljust(self.shown))
        sys.stderr.flush()
        self.shown = len(line)

    def close(self) -> None:
        """Erase the bar."""
        if self.enabled and self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()


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
    except BaseException:
        for opt in made:
            perf.release_pmu(opt.pmu)
        raise
    return made


def _bytes_in_use() -> int:
    """Slab bytes holding live objects, plus pages of live large kmalloc allocations."""
    slabs = sum(s.active_slabs * s.slab_size for s in all_stats())
    return slabs + large_stats()[1]


def _fork_live(opt: _Option, live: int) -> tuple[float, float]:
    """Create ``live`` tasks; return (slab bytes, Python bytes) per task."""
    opt.tasks = [None] * live  # type: ignore[list-item]  # no list growth while traced
    tasks = opt.tasks
    gc.collect()
    slab_before = _bytes_in_use()
    tracemalloc.start()
    try:
        py_before = tracemalloc.get_traced_memory()[0]
        for i in range(live):
            tasks[i] = perf.fork_task(opt.next_pid, opt.pmu, opt.allocator)
            opt.next_pid += 1
        py_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    slab_after = _bytes_in_use()
    return (slab_after - slab_before) / live, (py_after - py_before) / live


def _time_alloc_free(opt: _Option, order: Sequence[int]) -> float:
    contexts = [task.perf_event_ctxp for task in opt.tasks]
    if any(ctx is None for ctx in contexts):
        raise RuntimeError("every live task has a perf context")
    ctxs = cast("list[perf.PerfEventContext]", contexts)
    pmu = opt.pmu
    alloc = opt.allocator.alloc
    free = opt.allocator.free
    clock = time.thread_time_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    ctx = None
    try:
        start = clock()
        for j in order:
            ctx = ctxs[j]
            free(pmu, ctx.task_ctx_data)
            ctx.task_ctx_data = alloc(pmu)
        elapsed = clock() - start
    except BaseException:
        # interrupted (Ctrl-C) between the free and the alloc: the tear-down
        # must not free that context again; a handle dropped frees itself
        if ctx is not None:
            ctx.task_ctx_data = None
        raise
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / len(order)


def _time_task_churn(opt: _Option, order: Sequence[int]) -> float:
    tasks = opt.tasks
    pmu = opt.pmu
    allocator = opt.allocator
    exit_task = perf.perf_event_exit_task
    fork = perf.fork_task
    pid = opt.next_pid
    clock = time.thread_time_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for j in order:
            exit_task(tasks[j])
            tasks[j] = fork(pid, pmu, allocator)
            pid += 1
        elapsed = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    opt.next_pid = pid
    return elapsed / len(order)


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
        base = results[-1].alloc_free_samples
        for res in results:
            res.alloc_free_vs_option_3 = round(paired_ratio(res.alloc_free_samples, base)[0], 3)
    finally:
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
    return 4 + 4 * (config.rounds + 1) + 4 + 1


# --- what the numbers say ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    """One expectation of the change, judged on the measured numbers."""

    text: str
    holds: bool
    evidence: str


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Median and quartiles of ``a[i] / b[i]``: two options timed in the same rounds.

    Each round's ratio compares measurements taken moments apart, so drift in
    the machine's speed (other processes, frequency changes) cancels out.
    """
    ratios = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    if not ratios:
        return (float("nan"),) * 3
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def claims(result: DemoResult) -> list[Claim]:
    """The change's claims, checked against this run (never asserted)."""
    o0, o1, o2, o3 = (result.option(i) for i in range(4))
    align = result.config.align
    r30 = paired_ratio(o3.alloc_free_samples, o0.alloc_free_samples)
    r23 = paired_ratio(o2.alloc_free_samples, o3.alloc_free_samples)
    return [
        Claim(
            "option 3 costs no more space per context than option 0",
            o3.bytes_per_object <= o0.bytes_per_object,
            f"{o3.bytes_per_object:.0f} vs {o0.bytes_per_object:.0f} bytes",
        ),
        Claim(
            "option 3 costs no more time than option 0, beyond noise",
            r30[0] <= 1.0 + (r30[2] - r30[1]),
            f"{o3.ns_per_alloc_free:.0f} vs {o0.ns_per_alloc_free:.0f} ns per alloc+free; "
            f"per-round ratio {r30[0]:.2f} (quartiles {r30[1]:.2f} to {r30[2]:.2f})",
        ),
        Claim(
            "option 3 hands out no misaligned context",
            o3.misaligned == 0,
            f"{o3.misaligned} of {o3.contexts_checked}; XSAVE {o3.xsave}",
        ),
        Claim(
            f"option 1 pays at least the alignment ({align} bytes) per context over option 3",
            o1.bytes_per_object - o3.bytes_per_object >= align,
            f"{o1.bytes_per_object:.0f} - {o3.bytes_per_object:.0f} = "
            f"{o1.bytes_per_object - o3.bytes_per_object:.0f} bytes; "
            f"it asks for {o1.requested_bytes}",
        ),
        Claim(
            "option 2 pays for its extra calls",
            r23[0] > 1.0,
            f"{o2.ns_per_alloc_free:.0f} vs {o3.ns_per_alloc_free:.0f} ns per alloc+free; "
            f"per-round ratio {r23[0]:.2f} (quartiles {r23[1]:.2f} to {r23[2]:.2f}); "
            f"struct pmu {o2.pmu_struct_bytes} vs {o3.pmu_struct_bytes} bytes",
        ),
    ]


# --- output --------------------------------------------------------------------

_COLUMNS = (
    ("option", "", lambda o: f"{o.option} {o.label}"),
    ("asks for (B)", ">", lambda o: f"{o.requested_bytes}"),
    ("memory per context (B)", ">", lambda o: f"{o.bytes_per_object:.0f}"),
    ("ns per alloc+free", ">", lambda o: f"{o.ns_per_alloc_free:.0f}"),
    ("vs option 3", ">", lambda o: f"{o.alloc_free_vs_option_3:.2f}x"),
    ("ns per task", ">", lambda o: f"{o.ns_per_task:.0f}"),
    ("misaligned", ">", lambda o: f"{o.misaligned}"),
    ("XSAVE", "", lambda o: o.xsave),
    ("struct pmu (B)", ">", lambda o: f"{o.pmu_struct_bytes}"),
    ("Python heap per task (B)", ">", lambda o: f"{o.python_bytes_per_task:.0f}"),
)


def format_table(result: DemoResult) -> str:
    """The results as a Markdown table with a heading and notes."""
    cfg = result.config
    lines = [
        f"perf task context data: {cfg.size} bytes, {cfg.align}-byte aligned"
        + (f" (Arch LBR, {LBR_ENTRIES} entries)" if cfg.size == X86_LBR_CACHE_SIZE else ""),
        f"{cfg.live} tasks alive per option; {cfg.steps_per_round * cfg.rounds} tasks "
        f"created and exited, and as many alloc+free, per option; "
        f"medians of {cfg.rounds} rounds",
        "",
    ]
    rows = [[fmt(o) for _, _, fmt in _COLUMNS] for o in result.options]
    heads = [h for h, _, _ in _COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for (_, how, _), cell, w in zip(_COLUMNS, cells, widths, strict=True):
            out.append(cell.rjust(w) if how == ">" else cell.ljust(w))
        return "| " + " | ".join(out) + " |"

    lines.append(line(heads))
    lines.append(
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if how == ">" else "-" * w
            for (_, how, _), w in zip(_COLUMNS, widths, strict=True)
        )
        + " |"
    )
    lines.extend(line(r) for r in rows)
    lines.append("")
    for o in result.options:
        if o.xsave_note:
            lines.append(f"XSAVE, option {o.option}: {o.xsave_note}")
    if result.xsave_supported:
        lines.append(
            f"XSAVE on a {result.xsave_area_size}-byte area {FAULT_CHECK_MISALIGN} bytes past "
            f"a 64-byte boundary, in a child process: {result.fault_check}"
        )
    else:
        lines.append("XSAVE: not supported on this CPU or OS; checks skipped")
    for c in claims(result):
        lines.append(f"{'PASS' if c.holds else 'MISS'}  {c.text}: {c.evidence}")
    return "\n".join(lines)


def to_json(result: DemoResult) -> str:
    """The results as JSON: ``{"options": [...], ...}``."""
    return json.dumps(result.as_json(), indent=2)


_SHORT = {
    0: "kzalloc",
    1: "kzalloc+align,\nround up",
    2: "per-PMU\ncallbacks",
    3: "kmem_cache\n(the change)",
}


def plot(result: DemoResult, path: str) -> None:
    """Draw the comparison into a PNG (needs matplotlib: the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = result.options
    names = [f"{o.option}: {_SHORT.get(o.option, o.name)}" for o in opts]
    colors = ["#9e9e9e", "#e08a3c", "#c95c5c", "#3c7fc0"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    cfg = result.config

    ax = axes[0]
    bars = ax.bar(names, [o.bytes_per_object for o in opts], color=colors)
    ax.axhline(cfg.size, color="black", linestyle="--", linewidth=1)
    ax.text(-0.45, cfg.size, f"size {cfg.size}", va="bottom", ha="left", fontsize=8)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_title("memory per live context (bytes)")

    ax = axes[1]
    meds = [o.ns_per_alloc_free for o in opts]
    lows, highs = [], []
    for o in opts:
        q = _quartiles(o.alloc_free_samples) or [o.ns_per_alloc_free] * 3
        lows.append(max(o.ns_per_alloc_free - q[0], 0))
        highs.append(max(q[2] - o.ns_per_alloc_free, 0))
    bars = ax.bar(names, meds, color=colors, yerr=[lows, highs], capsize=3)
    ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=6)
    ax.set_title("ns per alloc+free (median, quartiles)")

    ax = axes[2]
    bars = ax.bar(names, [o.misaligned for o in opts], color=colors)
    ax.bar_label(bars, labels=[f"{o.misaligned}\nXSAVE {o.xsave}" for o in opts], fontsize=8)
    ax.set_title(f"misaligned contexts (of {cfg.live})")
    ax.set_ylim(0, cfg.live)

    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(y=0.15)
    fig.suptitle(
        f"perf task context data, {cfg.size} bytes aligned to {cfg.align}: "
        f"{cfg.live} live tasks, {cfg.steps_per_round * cfg.rounds} created and exited per option",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "Claim",
    "DemoConfig",
    "DemoResult",
    "OptionResult",
    "Progress",
    "claims",
    "format_table",
    "plot",
    "progress_steps",
    "run",
    "to_json",
]
