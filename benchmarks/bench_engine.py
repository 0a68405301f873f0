"""The engine from C against glibc, mimalloc and jemalloc, in one process.

Builds ``benchmarks/bench_engine.c`` with the engine's sources (``cc -O2``, as the
extension is built) and runs it for 64 B, 1512 B and 4 KiB objects at alignment 64:
kmemcache's ``kmc_cache_alloc``/``kmc_cache_free`` on a cache of that size against
``aligned_alloc(64, n)``/``free`` of glibc, mimalloc and jemalloc (Debian's
libmimalloc-dev and libjemalloc-dev; an allocator that is not installed is skipped
with a line saying so). Patterns: alloc+free pairs; batches of 1, 10, 100 and 1000
allocations then frees, in order and shuffled; a producer thread allocating and a
consumer thread freeing (remote frees); a steady pool of 4,096 and 100,000 live
objects, a random one freed and replaced each time; 1 and 2 threads on one allocator
(one cache shared by both). Allocators take turns, the median of the repeats is reported, and
every figure is also given as a ratio to mimalloc's in the same run. kmemcache's pair
inside a memory group is timed too, and its pair outside every group against a second
build with the memory groups compiled out (``-DKMC_NO_GROUPS``), in alternating runs.

    python benchmarks/bench_engine.py                  # Markdown tables on stdout
    python benchmarks/bench_engine.py --json out.json  # also machine-readable results
    python benchmarks/bench_engine.py --quick          # tiny counts: checks it runs
    python benchmarks/bench_engine.py --callgrind      # instructions per call instead

``--callgrind`` runs kmemcache's pair, batch-of-1000, 4,096-object pool and pair-in-a-memory-group
patterns under valgrind's
callgrind and reports instructions per alloc+free: counts that, unlike times, are
the same on a busy machine. It takes about a minute and a half; the default run
about a minute on two CPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness as h

from kmemcache.demo import measure as m

HERE = Path(__file__).resolve().parent
ENGINE = HERE.parent / "csrc" / "engine"
SIZES = (64, 1512, 4096)
ALLOCATORS = ("kmemcache", "mimalloc", "jemalloc", "glibc")
SINGLE = (
    ["pair"]
    + [f"{kind} {k}" for k in (1, 10, 100, 1000) for kind in ("batch", "shuffled")]
    + ["pool 4096", "pool 100000"]
)
# jemalloc's static TLS is larger than what glibc keeps for libraries loaded later
TUNABLES = "glibc.rtld.optional_static_tls=65536"


def build(out_dir: Path, groups: bool = True) -> Path:
    """Compile the benchmark with the engine (without @groups: the engine's memory
    group tests compiled out, KMC_NO_GROUPS); return the program's path."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("bench_engine: no C compiler (cc or gcc) found")
    exe = out_dir / ("bench_engine" if groups else "bench_engine_no_groups")
    cmd = [
        cc,
        "-std=c11",
        "-O2",
        *([] if groups else ["-DKMC_NO_GROUPS"]),
        "-D_GNU_SOURCE",
        "-pthread",
        f"-I{ENGINE}",
        *sorted(str(p) for p in ENGINE.glob("*.c")),
        str(HERE / "bench_engine.c"),
        "-ldl",
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True)
    return exe


def run_program(*args: str | Path | int) -> list[dict[str, Any]]:
    """Run the program; the JSON records it printed, a line each."""
    out = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env={**os.environ, "GLIBC_TUNABLES": TUNABLES},
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def run_sizes(
    exe: Path, repeats: int, quick: bool, progress: m.Progress
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the program for every size; (samples, notes)."""
    samples: list[dict[str, Any]] = []
    notes: list[str] = []
    for size in SIZES:
        progress.step(f"{size} B")
        for rec in run_program(exe, size, repeats, "1" if quick else "0"):
            if "note" in rec:
                if rec["note"] not in notes:
                    notes.append(rec["note"])
            else:
                samples.append(rec)
    return samples, notes


GROUPS_IN, GROUPS_OUT = "pair, groups built in", "pair, groups compiled out"


def run_groups_compiled_out(
    exe: Path, exe_out: Path, repeats: int, quick: bool, progress: m.Progress
) -> list[dict[str, Any]]:
    """kmemcache's pair from the build with memory groups and from one without them
    (KMC_NO_GROUPS), in alternating runs, one repeat each, the order swapped at each
    repeat: what the groups cost a pair outside every group."""
    samples: list[dict[str, Any]] = []
    for size in SIZES:
        progress.step(f"{size} B, groups compiled out")
        for rep in range(repeats):
            pair = [(exe, GROUPS_IN), (exe_out, GROUPS_OUT)]
            for program, pattern in pair if rep % 2 == 0 else pair[::-1]:
                for rec in run_program(program, size, "pairs", 1, "1" if quick else "0"):
                    samples.append({**rec, "pattern": pattern, "repeat": rep})
    return samples


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (size, pattern, allocator): the median, and its ratio to
    mimalloc's (time / mimalloc's time; for threads, mimalloc's rate / this one's)."""
    groups: dict[tuple[int, str, str], list[float]] = {}
    for s in samples:
        groups.setdefault((s["size"], s["pattern"], s["allocator"]), []).append(s["value"])
    med = {k: statistics.median(v) for k, v in groups.items()}
    out = []
    for (size, pattern, alloc), values in sorted(groups.items()):
        rec: dict[str, Any] = {
            "size": size,
            "pattern": pattern,
            "allocator": alloc,
            "unit": "Mpairs/s" if pattern.startswith("threads") else "ns",
            "samples": values,
            "median": med[(size, pattern, alloc)],
        }
        mi = med.get((size, pattern, "mimalloc"))
        if mi:
            rate = pattern.startswith("threads")
            rec["vs_mimalloc"] = mi / rec["median"] if rate else rec["median"] / mi
        out.append(rec)
    return out


def scaling(results: list[dict[str, Any]], size: int, alloc: str) -> float | None:
    """2-thread throughput / 1-thread throughput."""
    by = {(r["size"], r["pattern"], r["allocator"]): r["median"] for r in results}
    one, two = by.get((size, "threads 1", alloc)), by.get((size, "threads 2", alloc))
    return two / one if one and two else None


def judge_worst(
    target: dict[str, Any],
    found: list[tuple[float, str]],
    missing: str,
    pick: Callable[[list[tuple[float, str]]], tuple[float, str]] = max,
) -> None:
    """Judge @target by the worst of @found, (ratio, where) pairs (the highest, or what
    @pick picks), or skip it saying @missing."""
    if found:
        worst = pick(found)
        h.judge_target(target, worst[0])
        target["where"] = worst[1]
    else:
        h.skip_target(target, missing)


def kmemcache_ratios(
    by: dict[tuple[int, str, str], dict[str, Any]], top: str, bottom: str
) -> list[tuple[float, str]]:
    """kmemcache's median of pattern @top over its median of @bottom, at each size
    where both were measured."""
    return [
        (by[(s, top, "kmemcache")]["median"] / by[(s, bottom, "kmemcache")]["median"], f"{s} B")
        for s in SIZES
        if (s, top, "kmemcache") in by and (s, bottom, "kmemcache") in by
    ]


def judge(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["size"], r["pattern"], r["allocator"]): r for r in results}
    single = h.make_target(
        "engine_single_vs_mimalloc",
        "every single-thread pattern, engine time / mimalloc aligned_alloc+free (worst)",
        1.0,
        "lower",
    )
    scale = h.make_target(
        "engine_scaling_vs_mimalloc",
        "2 threads on one cache: engine scaling / mimalloc's scaling (worst size)",
        0.9,
        "higher",
    )
    remote = h.make_target(
        "engine_remote_vs_mimalloc",
        "producer/consumer remote frees, engine / mimalloc (worst size)",
        1.5,
        "lower",
    )
    ratios = [
        (by[(s, p, "kmemcache")]["vs_mimalloc"], f"{p}, {s} B")
        for s in SIZES
        for p in SINGLE
        if "vs_mimalloc" in by.get((s, p, "kmemcache"), {})
    ]
    if ratios:
        worst = max(ratios)
        h.judge_target(single, worst[0])
        single["where"] = worst[1]
        single["detail"] = f"best {m.fmt_ratio(min(ratios)[0])} ({min(ratios)[1]})"
    else:
        h.skip_target(single, "mimalloc not installed")
    scales = []
    for s in SIZES:
        ours, theirs = scaling(results, s, "kmemcache"), scaling(results, s, "mimalloc")
        if ours and theirs:
            scales.append((ours / theirs, f"{s} B (kmemcache {ours:.2f}x, mimalloc {theirs:.2f}x)"))
    judge_worst(scale, scales, "mimalloc not installed", min)
    rem = [
        (by[(s, "remote", "kmemcache")]["vs_mimalloc"], f"{s} B")
        for s in SIZES
        if "vs_mimalloc" in by.get((s, "remote", "kmemcache"), {})
    ]
    judge_worst(remote, rem, "mimalloc not installed")
    group = h.make_target(
        "engine_group_vs_none",
        "pair inside a memory group with a limit / pair outside every group, from C (worst size)",
        1.10,
        "lower",
    )
    judge_worst(group, kmemcache_ratios(by, "pair in a group", "pair"), "not measured")
    no_group = h.make_target(
        "engine_no_group_cost",
        "pair outside every group / the same pair built with the groups compiled out, "
        "from C, alternating runs (worst size)",
        1.02,
        "lower",
    )
    judge_worst(no_group, kmemcache_ratios(by, GROUPS_IN, GROUPS_OUT), "not measured")
    return [single, scale, remote, group, no_group]


def callgrind_counts(exe: Path) -> list[dict[str, Any]]:
    """Instructions per alloc+free of kmemcache's pair, batch and steady-pool patterns."""
    if not shutil.which("valgrind"):
        raise SystemExit("--callgrind needs valgrind (Debian's valgrind package)")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            for pattern in ("pair", "batch", "pool", "group"):
                totals = []
                for n in (1_000_000, 2_000_000):
                    log = Path(tmp) / "log"
                    subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            f"--callgrind-out-file={tmp}/out",
                            f"--log-file={log}",
                            str(exe),
                            str(size),
                            "count",
                            pattern,
                            str(n),
                        ],
                        check=True,
                    )
                    refs = [ln for ln in log.read_text().splitlines() if "refs:" in ln]
                    totals.append(int(refs[-1].split()[-1].replace(",", "")))
                out.append(
                    {
                        "size": size,
                        "pattern": {
                            "pair": "pair",
                            "batch": "batch 1000",
                            "pool": "pool 4096",
                            "group": "pair in a group",
                        }[pattern],
                        "instructions_per_pair": (totals[1] - totals[0]) / 1_000_000,
                    }
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under callgrind instead"
    )
    args = parser.parse_args(argv)
    repeats = h.QUICK_REPEATS if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        if args.callgrind:
            data: dict[str, Any] = {
                "benchmark": "engine_callgrind",
                "environment": h.environment([]),
                "results": callgrind_counts(exe),
                "targets": [],
            }
            return h.finish(args, data, render_callgrind)
        exe_out = build(Path(tmp), groups=False)
        progress = h.progress_for(args, 2 * len(SIZES), "bench_engine")
        try:
            samples, notes = run_sizes(exe, repeats, args.quick, progress)
            samples += run_groups_compiled_out(exe, exe_out, repeats, args.quick, progress)
        finally:
            progress.close()
    results = summarize(samples)
    data = {
        "benchmark": "engine",
        "sizes": list(SIZES),
        "align": 64,
        "repeats": repeats,
        "quick": args.quick,
        "environment": {
            **h.environment([]),
            "clock": "wall clock (CLOCK_MONOTONIC), in C",
            "compiler": "cc -O2",
        },
        "notes": notes,
        "results": results,
        "targets": judge(results),
    }
    return h.finish(args, data, render)


def render(data: dict[str, Any]) -> str:
    by = {(r["size"], r["pattern"], r["allocator"]): r for r in data["results"]}
    present = [a for a in ALLOCATORS if any(r["allocator"] == a for r in data["results"])]
    lines = [
        f"The engine from C (csrc/engine built with cc -O2 into one program with the "
        f"benchmark), {data['align']}-byte aligned objects; median of {data['repeats']} "
        "repeats, allocators taking turns. ns per alloc+free (per object for remote: a "
        "producer thread allocates, a consumer frees); in brackets, this / mimalloc's "
        "(below 1: faster than mimalloc). " + h.environment_sentence(data["environment"]),
    ]
    lines += h.quick_lines(data, "counts far too small")
    lines += [f"- {n}" for n in data.get("notes", [])]
    for size in data["sizes"]:
        headers = ["pattern", *present]
        rows = []
        for pattern in [*SINGLE, "remote"]:
            row = [pattern]
            for a in present:
                r = by.get((size, pattern, a))
                if not r:
                    row.append("-")
                elif a == "mimalloc":
                    row.append(f"{r['median']:.1f}")
                else:
                    row.append(f"{r['median']:.1f} ({m.fmt_ratio(r.get('vs_mimalloc'))})")
            rows.append(row)
        for n in (1, 2):
            row = [f"threads {n}: Mpairs/s"]
            for a in present:
                r = by.get((size, f"threads {n}", a))
                row.append(f"{r['median']:.1f}" if r else "-")
            rows.append(row)
        row = ["2 threads / 1 thread"]
        for a in present:
            sc = scaling(data["results"], size, a)
            row.append(m.fmt_ratio(sc) if sc else "-")
        rows.append(row)
        lines += ["", f"{size} B objects:", "", m.markdown_table(headers, rows, set(range(1, 5)))]
        grouped, plain = (
            by.get((size, "pair in a group", "kmemcache")),
            by.get((size, "pair", "kmemcache")),
        )
        if grouped and plain:
            lines += [
                "",
                f"kmemcache pair inside a memory group with a limit (a cache of its own): "
                f"{grouped['median']:.1f} ns, {m.fmt_ratio(grouped['median'] / plain['median'])} "
                "the pair outside every group.",
            ]
        built_in, out = (
            by.get((size, GROUPS_IN, "kmemcache")),
            by.get((size, GROUPS_OUT, "kmemcache")),
        )
        if built_in and out:
            lines += [
                "",
                "kmemcache pair outside every group, in alternating runs: "
                f"{built_in['median']:.1f} ns as built, {out['median']:.1f} ns with the "
                "groups compiled out "
                f"(KMC_NO_GROUPS): {m.fmt_ratio(built_in['median'] / out['median'])}.",
            ]
    lines += ["", "Targets:"] + [h.target_line(t) for t in data["targets"]]
    return "\n".join(lines)


def render_callgrind(data: dict[str, Any]) -> str:
    headers = ["size", "pattern", "instructions per alloc+free"]
    rows = [
        [m.fmt_size(r["size"]), r["pattern"], f"{r['instructions_per_pair']:.0f}"]
        for r in data["results"]
    ]
    return (
        "kmemcache's engine under callgrind (valgrind), cc -O2: instructions per "
        "alloc+free pair, loop included (the difference between runs of 1e6 and 2e6 "
        "pairs).\n\n" + m.markdown_table(headers, rows, {2})
    )


if __name__ == "__main__":
    sys.exit(main())
