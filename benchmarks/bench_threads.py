"""Throughput of alloc+free from 1 and 2 Python threads.

Each configuration runs its threads for a fixed time, every thread doing
``o = cache.zalloc(); o.free()`` (64 B at alignment 64) as fast as it can, and
counts the operations done; configurations take turns, repeated, and the
median of ops/s is reported. With 2 threads the cache is either shared by
both or one per thread. ``bytearray(64)`` create+drop and kzalloc+kfree are
run the same way.

What this measures: CPython threads take turns holding the GIL, and the
binding keeps the GIL during an engine call (it is a few dozen nanoseconds),
so two threads never run alloc or free at the same instant; 2-thread
throughput is at best the 1-thread figure, and the difference is the cost of
handing the GIL over (every ``sys.getswitchinterval()``, 5 ms by default) plus
what sharing a cache's lock and memory between two cores costs. It shows that
the engine's per-cache lock adds nothing measurable under the GIL. It does not
measure C threads calling the engine in parallel without the GIL (the engine
allows it; a C-level benchmark is left for later), and on a free-threaded
build of Python it would measure something else, which the report says.

    python benchmarks/bench_threads.py                  # Markdown table on stdout
    python benchmarks/bench_threads.py --json out.json  # also machine-readable results
    python benchmarks/bench_threads.py --quick          # tiny durations: checks it runs

Throughput is counted against the wall clock (``--clock`` does not apply here).

It takes about ten seconds.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h
import peers

from kmemcache.demo import measure as m

SIZE, ALIGN = 64, 64
DURATION = 0.15  # seconds per trial
QUICK_DURATION = 0.02
BATCH = 500  # ops between looks at the clock

_ids = itertools.count()


def _kmemcache_op(cache: Any) -> m.Op:
    zalloc = cache.zalloc

    def op() -> None:
        o = zalloc()
        o.free()

    return op


def _new_cache() -> Any:
    return peers._kmemcache().Cache(f"bench-threads-{next(_ids)}", SIZE, ALIGN)


def configurations() -> list[dict[str, Any]]:
    """(key, label, allocator, threads, one op factory per thread)."""
    out: list[dict[str, Any]] = []

    def add(key: str, label: str, alloc: str, threads: int, make: Callable[[], list[m.Op]]):
        entry: dict[str, Any] = {
            "key": key,
            "label": label,
            "allocator": alloc,
            "threads": threads,
        }
        try:
            entry["ops"] = make()
            entry["status"] = "ok"
        except peers.PeerUnavailable as exc:
            entry["status"], entry["note"] = "not installed", str(exc)
        out.append(entry)

    def shared(n: int) -> list[m.Op]:
        cache = _new_cache()
        return [_kmemcache_op(cache) for _ in range(n)]

    def own(n: int) -> list[m.Op]:
        return [_kmemcache_op(_new_cache()) for _ in range(n)]

    def kmalloc(n: int) -> list[m.Op]:
        km = peers._kmalloc()
        kzalloc, kfree = km.kzalloc, km.kfree

        def op() -> None:
            kfree(kzalloc(SIZE, ALIGN))

        return [op] * n

    def bytearrays(n: int) -> list[m.Op]:
        def op() -> None:
            bytearray(SIZE)

        return [op] * n

    add("kmemcache-1", "kmemcache zalloc+free", "kmemcache", 1, lambda: shared(1))
    add("kmemcache-2-shared", "kmemcache, one shared cache", "kmemcache", 2, lambda: shared(2))
    add("kmemcache-2-own", "kmemcache, a cache per thread", "kmemcache", 2, lambda: own(2))
    add("kmalloc-1", "kzalloc+kfree", "kmalloc", 1, lambda: kmalloc(1))
    add("kmalloc-2", "kzalloc+kfree", "kmalloc", 2, lambda: kmalloc(2))
    add("bytearray-1", "bytearray(64) create+drop", "bytearray", 1, lambda: bytearrays(1))
    add("bytearray-2", "bytearray(64) create+drop", "bytearray", 2, lambda: bytearrays(2))
    return out


def trial(ops: list[m.Op], duration: float) -> float:
    """Run one thread per op for ``duration`` seconds; return total ops per second."""
    stop = threading.Event()
    start_line = threading.Barrier(len(ops) + 1)
    counts = [0] * len(ops)

    def work(i: int, op: m.Op) -> None:
        loop = itertools.repeat
        done = 0
        start_line.wait()
        while not stop.is_set():
            for _ in loop(None, BATCH):
                op()
            done += BATCH
        counts[i] = done

    threads = [threading.Thread(target=work, args=(i, op)) for i, op in enumerate(ops)]
    for t in threads:
        t.start()
    start_line.wait()
    started = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def gil_state() -> str:
    enabled = getattr(sys, "_is_gil_enabled", None)
    if enabled is not None and not enabled():
        return "free-threaded build, GIL off: threads run in parallel"
    return "GIL on: threads take turns"


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, help=f"seconds per trial (default {DURATION})")
    args = parser.parse_args(argv)
    repeats = h.QUICK_REPEATS if args.quick else args.repeats
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)

    configs = configurations()
    live = [c for c in configs if c["status"] == "ok"]
    for c in live:
        c["samples"] = []
    progress = h.progress_for(args, repeats * len(live), "bench_threads")
    try:
        for c in live:  # warm-up
            trial(c["ops"], duration / 5)
        for rep in range(repeats):
            shift = rep % len(live) if live else 0
            for c in live[shift:] + live[:shift]:
                progress.step(f"repeat {rep + 1}/{repeats} {c['key']}")
                c["samples"].append(trial(c["ops"], duration))
    finally:
        progress.close()

    results = []
    by_key = {c["key"]: c for c in configs}
    for c in configs:
        rec = {k: c[k] for k in ("key", "label", "allocator", "threads", "status")}
        if c.get("note"):
            rec["note"] = c["note"]
        if c.get("samples"):
            rec["samples_ops_per_s"] = c["samples"]
            rec["median_ops_per_s"] = statistics.median(c["samples"])
            rec["min_ops_per_s"] = min(c["samples"])
            rec["max_ops_per_s"] = max(c["samples"])
            one = by_key.get(c["key"].split("-")[0] + "-1", {})
            if one.get("samples"):
                rec["vs_1_thread"] = rec["median_ops_per_s"] / statistics.median(one["samples"])
        results.append(rec)
    base = {r["threads"]: r for r in results if r["key"] in ("kmemcache-1", "kmemcache-2-shared")}
    for rec in results:
        b = base.get(rec["threads"])
        if b and "median_ops_per_s" in b and "median_ops_per_s" in rec:
            # kmemcache throughput / this row's: above 1, kmemcache does more
            rec["vs_kmemcache"] = b["median_ops_per_s"] / rec["median_ops_per_s"]

    data: dict[str, Any] = {
        "benchmark": "threads",
        "unit": "ops/s",
        "size": SIZE,
        "align": ALIGN,
        "duration_s": duration,
        "repeats": repeats,
        "quick": args.quick,
        "gil": gil_state(),
        "switch_interval_s": sys.getswitchinterval(),
        "environment": {
            **h.environment(["kmemcache"]),
            "clock": "wall clock (time.perf_counter), all threads together",
        },
        "results": results,
        "targets": [],
    }
    for c in configs:
        c.pop("ops", None)
    return h.finish(args, data, render)


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Operations per second (alloc+free pairs, {data['size']} B at align "
        f"{data['align']}), all threads together, median of {data['repeats']} trials of "
        f"{data['duration_s']:g} s taking turns. {data['gil']}; switch interval "
        f"{data['switch_interval_s'] * 1000:g} ms. vs 1 thread: this row / the same "
        "allocator with 1 thread; kmemcache / this: kmemcache (shared cache) with as "
        "many threads / this row (above 1: kmemcache does more). "
        + h.environment_sentence(data["environment"]),
    ]
    lines += h.quick_lines(data, "trials far too short")
    headers = ["allocator", "threads", "ops/s (min-max)", "vs 1 thread", "kmemcache / this"]
    rows = []
    for r in data["results"]:
        if "median_ops_per_s" not in r:
            rows.append([r["label"], str(r["threads"]), r["status"], "-", "-"])
            continue
        spread = f"{r['median_ops_per_s'] / 1e6:.2f}M ({r['min_ops_per_s'] / 1e6:.2f}-"
        spread += f"{r['max_ops_per_s'] / 1e6:.2f}M)"
        rows.append(
            [
                r["label"],
                str(r["threads"]),
                spread,
                m.fmt_ratio(r.get("vs_1_thread")) if r["threads"] > 1 else "-",
                m.fmt_ratio(r.get("vs_kmemcache")),
            ]
        )
    lines += ["", m.markdown_table(headers, rows, {1, 2, 3, 4})]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
