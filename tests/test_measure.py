"""The measuring tools the demo and the benchmarks share (kmemcache.demo.measure).

Nothing here looks at how long anything took: only at the work done, the
arithmetic and what is printed.
"""

from __future__ import annotations

import gc
import io
import math

import pytest

from kmemcache.demo import measure


def test_timed_loop_calls_the_op_exactly_number_times_with_the_collector_paused() -> None:
    calls = []

    def op() -> None:
        calls.append(gc.isenabled())

    assert gc.isenabled()
    measure.timed_loop(op, 1234)
    assert len(calls) == 1234 and not any(calls)
    assert gc.isenabled()  # given back


def test_time_call_gives_the_collector_back_when_the_body_raises() -> None:
    def body() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        measure.time_call(body)
    assert gc.isenabled()
    gc.disable()
    try:
        measure.time_call(lambda: None)
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_calibrate_scales_to_the_target() -> None:
    calls = 0

    def op() -> None:
        nonlocal calls
        calls += 1

    number = measure.calibrate(op, 0)  # any loop reaches a target of 0 at once
    assert number >= 1 and calls == 16  # an untimed loop of 8, a timed one, then scaled


def test_calibrate_ignores_a_slow_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-time cost at the op's first call (a lazy import, a registration) does
    not set the count: loops are timed by a stand-in clock here, 100 ns an op, and
    the first loop a second more."""
    loops: list[int] = []

    def fake_loop(op: measure.Op, number: int) -> measure.Timing:
        loops.append(number)
        wall = number * 100 + (10**9 if len(loops) == 1 else 0)
        return measure.Timing(wall_ns=wall, cpu_ns=wall)

    monkeypatch.setattr(measure, "timed_loop", fake_loop)
    # 8, 16, ... until a loop takes an eighth of 10 ms: 16,384 ops; then 10 ms' worth
    assert measure.calibrate(lambda: None, 10_000_000) == 100_000
    assert loops[0] == 8


def test_quartiles_are_inclusive() -> None:
    assert measure.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert measure.quartiles([5.0, 1.0, 3.0]) == (2.0, 3.0, 4.0)
    assert measure.quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        measure.quartiles([])


def test_summarize() -> None:
    assert measure.summarize([4.0, 1.0, 3.0, 2.0, 5.0]) == {
        "median_ns": 3.0,
        "min_ns": 1.0,
        "max_ns": 5.0,
        "q1_ns": 2.0,
        "q3_ns": 4.0,
    }


def test_paired_ratios_skip_rounds_without_a_base() -> None:
    assert measure.paired_ratios([2.0, 6.0, 9.0], [1.0, 0.0, 3.0]) == [2.0, 3.0]
    assert all(math.isnan(x) for x in measure.paired_ratio([1.0], [0.0]))


def test_markdown_table_lines_up() -> None:
    table = measure.markdown_table(["name", "n"], [["a", "1"], ["bbb", "22"]], {1})
    assert table.splitlines() == [
        "| name |  n |",
        "| ---- | -: |",
        "| a    |  1 |",
        "| bbb  | 22 |",
    ]


@pytest.mark.parametrize(
    "n, text",
    [(8, "8 B"), (1472, "1472 B"), (4096, "4 KiB"), (3 << 20, "3 MiB"), (1 << 30, "1 GiB")],
)
def test_fmt_size(n: int, text: str) -> None:
    assert measure.fmt_size(n) == text


def test_fmt_numbers() -> None:
    assert [measure.fmt_ns(x) for x in (7.254, 58.31, 1032.4)] == ["7.25", "58.3", "1,032"]
    assert measure.fmt_ratio(1.174) == "1.17x" and measure.fmt_ratio(None) == "-"
    assert [measure.fmt_count(n) for n in (1000, 10**7, 1500, 100)] == [
        "1e3",
        "1e7",
        "1,500",
        "100",
    ]


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_draws_a_bar_on_a_terminal_and_erases_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = _Stderr(tty=True)
    monkeypatch.setattr("sys.stderr", err)
    progress = measure.Progress(4, bar=8)
    progress.step("one")
    assert err.getvalue() == "\r[##......]  25% one"
    progress.step("two")
    assert err.getvalue().endswith("\r[####....]  50% two")
    progress.close()
    assert err.getvalue().endswith("\r" + " " * len("[####....]  50% two") + "\r")


def test_progress_in_a_log_prints_every_tenth_step_or_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = _Stderr(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    quiet = measure.Progress(100)  # the demo's: nothing outside a terminal
    for i in range(100):
        quiet.step(f"step {i}")
    assert err.getvalue() == ""
    log = measure.Progress(100, prefix="bench", bar=0, log=True)
    for i in range(100):
        log.step(f"step {i}")
    log.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "bench  10% step 9" and lines[-1] == "bench 100% step 99"
    off = measure.Progress(100, enabled=False, log=True)
    off.step("x")
    assert len(err.getvalue().splitlines()) == 10
