"""The measuring tools the demo and the benchmarks share.

Timed loops, medians and quartiles, ratios taken round by round, a progress
line, Markdown tables and number formats: one copy, used by ``kmemcache demo``
and by every ``benchmarks/bench_*.py``. Not part of kmemcache's API.

Timing
------
A timed call runs with the cyclic garbage collector paused, as ``timeit``
does: a collection triggered by someone else's garbage would land on whatever
happens to be timed. It is read by two clocks, the wall clock
(``time.perf_counter_ns``) and the thread's CPU time (``time.thread_time_ns``,
user and system), which leaves out the time the thread spent waiting while
other work had the CPU. Neither removes what a busy neighbour on the same core
does to caches and clock speed.

Ratios are only ever taken between things measured in the same run, and best
round by round (:func:`paired_ratios`): two loops timed moments apart share the
machine's drift, which the ratio then cancels.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

#: A zero-argument callable whose cost is measured.
Op = Callable[[], object]


# --- timed loops ---------------------------------------------------------------------


class Timing(NamedTuple):
    """What one timed call took."""

    wall_ns: int  #: by the wall clock
    cpu_ns: int  #: by the calling thread's CPU time


def time_call(body: Callable[[], object]) -> Timing:
    """Call ``body()`` once with the garbage collector paused; return what it took.

    ``body`` holds the loop: the caller keeps what it iterates over in local
    variables (default arguments), so that nothing but the work is timed.
    """
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu_start = cpu()
        start = wall()
        body()
        elapsed = wall() - start
        return Timing(elapsed, cpu() - cpu_start)
    finally:
        if gc_was_enabled:
            gc.enable()


def timed_loop(op: Op, number: int) -> Timing:
    """Call ``op`` ``number`` times in a tight loop (``timeit``'s loop); return the time."""

    times = itertools.repeat(None, number)

    def loop(op: Op = op, times: itertools.repeat[None] = times) -> None:
        for _ in times:
            op()

    return time_call(loop)


def bare_loop(number: int) -> Timing:
    """The same loop with nothing in its body: what the loop itself costs."""

    times = itertools.repeat(None, number)

    def loop(times: itertools.repeat[None] = times) -> None:
        for _ in times:
            pass

    return time_call(loop)


def calibrate(op: Op, target_ns: int) -> int:
    """An iteration count for which one loop of ``op`` takes about ``target_ns`` (wall clock).

    Doubles the count until a loop takes at least an eighth of the target, which
    also serves as the warm-up, then scales. A first loop runs untimed: a one-time
    cost at an op's first call (a lazy import, a registration) must not set the count.
    """
    number = 8
    timed_loop(op, number)
    while True:
        elapsed = timed_loop(op, number).wall_ns
        if elapsed >= target_ns // 8 or number >= 1 << 30:
            break
        number *= 2
    return max(1, round(number * target_ns / max(elapsed, 1)))


# --- medians, quartiles and ratios ---------------------------------------------------


def quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of one or more samples.

    Inclusive quartiles, as ``statistics.quantiles(method="inclusive")`` gives
    them: the samples are the whole population measured.
    """
    if not samples:
        raise ValueError("quartiles of no samples")
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles of ns/op samples, as the benchmarks' JSON keeps them."""
    q1, median, q3 = quartiles(samples)
    return {
        "median_ns": median,
        "min_ns": min(samples),
        "max_ns": max(samples),
        "q1_ns": q1,
        "q3_ns": q3,
    }


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] / b[i]`` for every round ``i`` both were timed in (rounds where b is 0 left out)."""
    return [x / y for x, y in zip(a, b, strict=False) if y > 0]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of :func:`paired_ratios`; NaNs when none."""
    ratios = paired_ratios(a, b)
    if not ratios:
        return (float("nan"),) * 3
    q1, median, q3 = quartiles(ratios)
    return median, q1, q3


# --- progress ------------------------------------------------------------------------


class Progress:
    """A progress line on stderr.

    On a terminal the line is rewritten in place: the ``prefix``, a ``bar`` of
    that many columns (0 for none), the percentage done and what runs now.
    Elsewhere (CI logs, captured output) it prints nothing, or with ``log``
    every tenth of the steps on a line of its own, so that logs stay short.
    """

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        *,
        prefix: str = "",
        bar: int = 30,
        log: bool = False,
    ) -> None:
        self.total = max(total, 1)
        self.count = 0  # steps reported
        self.prefix = prefix
        self.bar = bar
        self.tty = sys.stderr.isatty()
        self.enabled = enabled and (self.tty or log)
        self.every = max(self.total // 10, 1)
        self.shown = 0  # columns drawn on the terminal

    def step(self, label: str) -> None:
        """One step done; ``label`` says what runs now."""
        self.count += 1
        if not self.enabled:
            return
        done = min(self.count, self.total)
        parts = [self.prefix] if self.prefix else []
        if self.bar:
            filled = self.bar * done // self.total
            parts.append(f"[{'#' * filled}{'.' * (self.bar - filled)}]")
        parts += [f"{100 * done // self.total:3d}%", label]
        line = " ".join(parts)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.shown))
            self.shown = len(line)
        elif self.count % self.every == 0 or self.count == self.total:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Erase the line from the terminal."""
        if self.enabled and self.tty and self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()


# --- tables and numbers --------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A Markdown table, padded to line up; columns whose index is in ``right`` are
    right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, rows)])


def fmt_ns(value: float) -> str:
    """ns with the precision that suits the magnitude: 7.25, 58.3, 1,032."""
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    """1.17x; "-" for none."""
    return "-" if value is None else f"{value:.2f}x"


def fmt_size(n: int) -> str:
    """Bytes as people write them: 8 B, 1472 B, 4 KiB, 1 MiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def fmt_count(n: int) -> str:
    """1000 -> 1e3, 1000000 -> 1e6; other numbers as they are."""
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp and exp >= 3 else f"{n:,}"


__all__ = [
    "Op",
    "Progress",
    "Timing",
    "bare_loop",
    "calibrate",
    "fmt_count",
    "fmt_ns",
    "fmt_ratio",
    "fmt_size",
    "markdown_table",
    "paired_ratio",
    "paired_ratios",
    "quartiles",
    "summarize",
    "time_call",
    "timed_loop",
]
