"""What the benchmarks share beyond the measuring tools of ``kmemcache.demo.measure``.

Every benchmark measures zero-argument callables ("ops") with the same recipe:

* each op is warmed up and given its own iteration count, chosen so that one timed
  loop lasts about ``target_ms`` (or a fixed ``--number``);
* ``repeats`` timed loops are run per op, the ops taking turns round-robin within each
  repeat (the starting op rotates) so that drift on a shared machine hits every op alike;
  loops are short (10 ms by default) so that a whole round is short too, and a burst
  of load from elsewhere lands on every op of the round rather than on one;
* a loop is ``measure.timed_loop``: ``for _ in itertools.repeat(None, n): op()`` with
  the cyclic garbage collector paused as ``timeit`` does, timed twice over, by the
  thread's CPU time and by the wall clock. The samples are CPU time unless ``--clock
  wall`` is given; the other clock's samples are kept in the JSON, and the share of
  each loop the thread actually spent on a CPU is recorded as a noise gauge. On a busy
  machine the CPU clock is the steadier;
* results are the median ns/op with min, max and quartiles; nothing is subtracted,
  but the cost of the loop itself (bare, and calling an empty op) is measured once and
  reported so readers can see how much of a small number it is.

Ratios are only ever taken between ops measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmemcache.demo import measure as m

#: Which clock the samples are read from: "cpu" (the thread's CPU time) or "wall".
#: ``settings()`` sets it from ``--clock``.
CLOCK = "cpu"
CLOCKS = {
    "cpu": "thread CPU time (time.thread_time_ns)",
    "wall": "wall clock (time.perf_counter_ns)",
}

#: Fixed settings for ``--quick``: enough to exercise every code path, nothing more.
QUICK_REPEATS = 3
QUICK_NUMBER = 20


@dataclass
class Candidate:
    """One op to measure, plus what is known about it."""

    key: str  # stable identifier, used in JSON
    label: str  # human-readable, used in tables
    op: m.Op | None = None  # None when unavailable
    aligned: bool | None = None  # observed on samples; None when unknown
    zeroed: bool | None = None  # whether the memory comes back zero-filled
    status: str = "ok"  # "ok", "not installed" or "failed"
    note: str = ""  # why it is not "ok"
    number: int = 0  # iterations per timed loop
    samples_ns: list[float] = field(default_factory=list)  # ns/op, one per repeat
    other_clock_ns: list[float] = field(default_factory=list)  # the same by the other clock
    cpu_share: list[float] = field(default_factory=list)  # thread CPU time / wall time

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.op is not None

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        self.note = f"{type(exc).__name__}: {exc}"
        self.samples_ns.clear()
        self.other_clock_ns.clear()
        self.cpu_share.clear()


@contextlib.contextmanager
def entered(op: Any) -> Any:
    """Run the block inside ``op.enter()`` / ``op.exit(token)`` when the op has them:
    state an op needs while it runs (a NumPy data-memory handler) is set once per
    timed loop, not on every call."""
    enter = getattr(op, "enter", None)
    if enter is None:
        yield
        return
    token = enter()
    try:
        yield
    finally:
        op.exit(token)


def measure_loop_overhead(repeats: int, number: int | None, target_ns: int) -> dict[str, float]:
    """Measure the loop itself once: bare, and calling an op that does nothing.

    The second figure is part of every ns/op number the harness reports.
    """

    def empty() -> None:
        pass

    if number is None:
        number = m.calibrate(empty, target_ns)
    which = 1 if CLOCK == "cpu" else 0
    bare = [m.bare_loop(number)[which] / number for _ in range(repeats)]
    call = [m.timed_loop(empty, number)[which] / number for _ in range(repeats)]
    return {
        "bare_loop_ns": statistics.median(bare),
        "empty_op_call_ns": statistics.median(call),
        "number": number,
    }


def run_round_robin(
    candidates: Sequence[Candidate],
    repeats: int,
    number: int | None,
    target_ns: int,
    progress: m.Progress | None = None,
) -> None:
    """Measure every available candidate ``repeats`` times, taking turns.

    Reports ``repeats + 1`` progress steps per available candidate (warm-up included).
    ``number`` fixes the iterations per loop; None calibrates each op to ``target_ns``.
    A candidate whose op raises is marked failed and dropped; the rest go on.
    """
    live = [c for c in candidates if c.ok]
    for cand in live:
        assert cand.op is not None
        if progress is not None:
            progress.step(f"warm-up {cand.label}")
        try:
            with entered(cand.op):
                if number is None:
                    cand.number = m.calibrate(cand.op, target_ns)
                else:
                    cand.number = number
                    m.timed_loop(cand.op, min(number, 100))  # warm-up
        except Exception as exc:  # a broken peer must not stop the others
            cand.fail(exc)
    for rep in range(repeats):
        # Rotate the starting op so no candidate always runs first (or last).
        shift = rep % len(live) if live else 0
        for cand in live[shift:] + live[:shift]:
            if progress is not None:
                progress.step(f"repeat {rep + 1}/{repeats} {cand.label}")
            if not cand.ok:
                continue
            assert cand.op is not None
            try:
                with entered(cand.op):
                    elapsed, cpu = m.timed_loop(cand.op, cand.number)
            except Exception as exc:
                cand.fail(exc)
                continue
            counted, other = (cpu, elapsed) if CLOCK == "cpu" else (elapsed, cpu)
            cand.samples_ns.append(counted / cand.number)
            cand.other_clock_ns.append(other / cand.number)
            cand.cpu_share.append(min(cpu / elapsed, 1.0) if elapsed > 0 else 1.0)


def release(candidates: Sequence[Candidate]) -> None:
    """Drop the ops, calling ``op.close()`` where an op owns a resource."""
    for cand in candidates:
        close = getattr(cand.op, "close", None)
        cand.op = None
        if close is not None:
            try:
                close()
            except Exception as exc:
                print(f"warning: closing {cand.label}: {exc}", file=sys.stderr)
    gc.collect()


def candidate_record(cand: Candidate, base: Candidate | None) -> dict[str, Any]:
    """The JSON record of one candidate, with its ratio against ``base``."""
    record: dict[str, Any] = {
        "key": cand.key,
        "label": cand.label,
        "status": cand.status,
        "aligned": cand.aligned,
        "zeroed": cand.zeroed,
    }
    if cand.note:
        record["note"] = cand.note
    if not cand.samples_ns:
        return record
    record["number"] = cand.number
    record["samples_ns"] = cand.samples_ns
    if cand.other_clock_ns:
        record["other_clock_samples_ns"] = cand.other_clock_ns
    record.update(m.summarize(cand.samples_ns))
    record["cpu_share_min"] = min(cand.cpu_share, default=1.0)
    if base is not None and base.samples_ns:
        record["ratio"] = record["median_ns"] / statistics.median(base.samples_ns)
        pairs = m.paired_ratios(cand.samples_ns, base.samples_ns)
        if pairs:
            # The same ratio taken repeat by repeat: its spread shows how far drift
            # between rounds could move the headline ratio.
            record["ratio_paired_median"] = statistics.median(pairs)
            record["ratio_min"] = min(pairs)
            record["ratio_max"] = max(pairs)
    return record


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(packages: Sequence[str]) -> dict[str, Any]:
    """What the numbers were measured on; ratios travel, absolute numbers do not."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {name: package_version(name) for name in packages},
        "clock": CLOCKS[CLOCK],
        # Debug options make every kmemcache number a debug number.
        "kmemcache_debug": os.environ.get("KMEMCACHE_DEBUG"),
    }


def environment_sentence(env: dict[str, Any]) -> str:
    """The environment as one sentence for a report's header."""
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    text = (
        f"{env['implementation']} {env['python']}, {env['system']} {env['machine']}, "
        f"{env['cpu_count']} CPUs" + (f"; {pkgs}." if pkgs else ".")
    )
    if env.get("clock"):
        text += f" Timed by {env['clock']}."
    if env.get("kmemcache_debug") is not None:
        text += f" KMEMCACHE_DEBUG={env['kmemcache_debug']!r}: debug numbers."
    return text


def quick_lines(data: dict[str, Any], what: str = "counts far too small") -> list[str]:
    """The --quick warning for a report, or nothing."""
    if not data.get("quick"):
        return []
    return [f"\n(--quick: {what} for the numbers to mean anything.)"]


def note_lines(records: Iterable[dict[str, Any]], label_failed_only: bool = False) -> list[str]:
    """A report's closing list of why some ops were not measured (sorted, each once).

    Each line names the op's label, or with ``label_failed_only`` only a failed op's
    (a missing package says which it is).
    """
    notes = sorted(
        {
            f"{rec['label']}: " * (not label_failed_only or rec["status"] == "failed")
            + f"{rec['status']}: {rec['note']}"
            for rec in records
            if rec.get("note")
        }
    )
    return ["", *[f"- {n}" for n in notes]] if notes else []


def noise_lines(data: dict[str, Any]) -> list[str]:
    """Warnings for a report: stolen CPU, --quick."""
    lines = []
    share = data.get("cpu_share_min", 1.0)
    if share < 0.8:
        lines.append(
            f"\nOther load took the CPU away for up to {1 - share:.0%} of a timed loop in "
            "this run; ratios compare ops timed side by side, but consider running again "
            "on a quieter machine."
        )
    return lines + quick_lines(data)


# --- targets ----------------------------------------------------------------------
#
# A target is a ratio measured in one run and a threshold it should reach. It is
# reported as a PASS/MISS line, never asserted: a benchmark that misses still exits 0.


def make_target(key: str, description: str, threshold: float, better: str) -> dict[str, Any]:
    """A target not yet judged; ``better`` is "higher" or "lower"."""
    assert better in ("higher", "lower")
    return {
        "key": key,
        "description": description,
        "threshold": threshold,
        "better": better,
        "ratio": None,
        "status": "SKIP",
    }


def judge_target(target: dict[str, Any], ratio: float) -> None:
    target["ratio"] = ratio
    if target["better"] == "higher":
        target["status"] = "PASS" if ratio >= target["threshold"] else "MISS"
    else:
        target["status"] = "PASS" if ratio <= target["threshold"] else "MISS"


def skip_target(target: dict[str, Any], reason: str) -> None:
    target["ratio"] = None
    target["status"] = "SKIP"
    target["reason"] = reason


def target_line(target: dict[str, Any]) -> str:
    """``- PASS: what: 1.17x (target >= 1x)``, with where and why when known."""
    sign = ">=" if target["better"] == "higher" else "<="
    ratio = "-" if target["ratio"] is None else m.fmt_ratio(target["ratio"])
    line = f"- {target['status']}: {target['description']}: {ratio}"
    if target.get("where"):
        line += f" at {target['where']}"
    line += f" (target {sign} {target['threshold']:g}x)"
    if target.get("detail"):
        line += f"; {target['detail']}"
    if target["status"] == "SKIP":
        line += f" [{target.get('reason', 'not measured')}]"
    return line


def int_list(text: str) -> list[int]:
    """argparse type: ``8,64,4096`` -> [8, 64, 4096]; ``1e6`` is accepted."""
    values = []
    for part in text.split(","):
        try:
            values.append(int(part, 0))
        except ValueError:
            try:
                value = float(part)
            except ValueError:
                value = float("nan")
            if value != value or value != int(value):
                raise argparse.ArgumentTypeError(
                    f"not a comma-separated list of integers: {text!r}"
                ) from None
            values.append(int(value))
    return values


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny counts ({QUICK_REPEATS} repeats of {QUICK_NUMBER}): checks it runs, "
        "measures nothing",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per op (default 7)")
    parser.add_argument(
        "--number", type=int, help="iterations per timed loop (default: calibrated per op)"
    )
    parser.add_argument(
        "--target-ms",
        type=float,
        default=10.0,
        help="duration of one calibrated timed loop in ms (default 10)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default=CLOCK,
        help="time loops by the thread's CPU time (default) or the wall clock",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return parser


def progress_for(args: argparse.Namespace, total: int, prefix: str) -> m.Progress:
    """The progress line of a benchmark, off with ``--no-progress``: no bar, and in a log
    every tenth step on a line of its own."""
    return m.Progress(total, not args.no_progress, prefix=prefix, bar=0, log=True)


def settings(args: argparse.Namespace) -> tuple[int, int | None, int]:
    """(repeats, number or None, target_ns) from parsed arguments; sets ``CLOCK``."""
    global CLOCK
    CLOCK = getattr(args, "clock", CLOCK)
    if args.quick:
        return QUICK_REPEATS, QUICK_NUMBER, 0
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.number is not None and args.number < 1:
        raise SystemExit("--number must be at least 1")
    return args.repeats, args.number, int(args.target_ms * 1e6)


def rss_bytes() -> int:
    """The process's resident set size now (Linux).

    /proc/self/smaps_rollup counts the pages mapped now; /proc/self/statm, the
    fallback, reads counters that kernels before 6.2 update only every 64 page
    faults per thread, up to 256 KiB late.
    """
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with open("/proc/self/statm", encoding="ascii") as fh:
        resident = int(fh.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def run_child(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process; return the JSON object it prints last.

    Raises RuntimeError with the child's stderr when it fails.
    """
    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"exit {proc.returncode}: {tail or 'no output'}")
    return json.loads(lines[-1])


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def min_cpu_share(records: Iterable[dict[str, Any]]) -> float:
    """The lowest ``cpu_share_min`` among JSON records (1.0 when none has one)."""
    return min((r["cpu_share_min"] for r in records if "cpu_share_min" in r), default=1.0)


def finish(args: argparse.Namespace, data: dict[str, Any], render: Callable[..., str]) -> int:
    """Write ``data`` to ``--json`` when asked, print its report; main()'s exit status."""
    if args.json:
        write_json(args.json, data)
    print(render(data))
    return 0


#: The docs' benchmarks page, which a full run of run_all.py rewrites.
DOCS_PAGE_MARK = (
    "<!-- Written by benchmarks/run_all.py from its results: a full run rewrites this page. -->"
)


def docs_page(
    combined: dict[str, Any], reports: dict[str, str], plots: Sequence[Path], page: Path
) -> str:
    """The docs' benchmarks page (MyST Markdown) for one run_all.py run.

    ``combined`` is run_all's results.json; ``reports`` each benchmark's printed
    report (Markdown tables and notes), by name; ``plots`` the PNG files drawn,
    shown after the benchmark they belong to (``bulk_threads.png`` after the last
    of bulk and threads) by a path relative to ``page``. Every figure on the page
    comes from these arguments, with the machine, commit and date of the run.
    """
    git = combined.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    dirty = " (with local changes)" if git.get("dirty") else ""
    quick = (
        " A --quick run: its counts are far too small to mean anything."
        if combined.get("quick")
        else ""
    )
    lines = [
        "# Benchmarks",
        "",
        DOCS_PAGE_MARK,
        "",
        f"Measured by `{combined['command']}` on {combined['date']}, at commit "
        f"{commit}{dirty}, in {combined['seconds']:.0f} s: "
        f"{environment_sentence(combined['environment'])}{quick} Every figure on this page "
        "comes from that run; a single cell can move between runs on a busy machine, so "
        "read the shape, not the digits, and run it on your machine "
        "({doc}`guide/performance` says how, and how each figure is measured).",
        "",
        "## Targets",
        "",
    ]
    targets = combined.get("targets", [])
    lines += [f"{target_line(t)} (`bench_{t['benchmark']}`)" for t in targets] or ["(none)"]
    failed = [n for n, d in combined["benchmarks"].items() if d.get("status") != "ok"]
    if failed:
        lines += ["", "Failed to run: " + ", ".join(f"`bench_{n}.py`" for n in failed) + "."]
    shown: dict[str, list[Path]] = {}
    for plot in plots:
        owners = [n for n in plot.stem.split("_") if n in reports]
        if owners:
            shown.setdefault(owners[-1], []).append(plot)
    for name, report in reports.items():
        lines += ["", f"(bench-{name})=", "", f"## {name} (`bench_{name}.py`)", ""]
        body = report.strip() or f"({combined['benchmarks'][name].get('note', 'no output')})"
        lines += _headings_under_level_2(body.splitlines())
        for plot in shown.get(name, []):
            where = os.path.relpath(plot, page.parent)
            lines += ["", f"![{name}: {plot.stem.replace('_', ' ')}]({where})"]
    return "\n".join(lines) + "\n"


def _headings_under_level_2(lines: list[str]) -> list[str]:
    """A report's Markdown headings (outside code fences) moved so that its highest
    is level 3, under the page's level-2 heading of its benchmark."""
    heading = re.compile(r"^(#{1,6}) ")
    fenced, found = False, []
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (mt := heading.match(line)):
            found.append((i, len(mt.group(1))))
    if not found:
        return lines
    shift = 3 - min(level for _, level in found)
    out = list(lines)
    for i, level in found:
        out[i] = "#" * min(6, level + shift) + lines[i][level:]
    return out
