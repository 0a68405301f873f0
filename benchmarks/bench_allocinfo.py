"""What recording call sites costs: alloc+free with kmemcache.allocinfo off and on.

Measures, in one run, the ns per ``o = cache.alloc(); o.free()`` of one 64-byte
object at alignment 64 and per ``kfree(kmalloc(64))``, each with
``kmemcache.allocinfo`` off and on (started when its timed loop begins,
stopped when it ends: the two take turns, round-robin). On, every alloc reads
the calling frame, finds its site and records the object by address, and every
free forgets it. The ratio is the median with allocinfo on / the median with it
off, from the same run.

One target is checked and reported as a PASS/MISS line (never asserted):
allocinfo on <= 1.5x off, for both operations (the higher ratio is judged).

Run from the repository root, with kmemcache installed (``pip install -e .``)::

    python benchmarks/bench_allocinfo.py                  # Markdown table on stdout
    python benchmarks/bench_allocinfo.py --json out.json  # also machine-readable results
    python benchmarks/bench_allocinfo.py --quick          # tiny counts: checks it runs

It takes a few seconds; progress goes to stderr. Only the ratios mean anything
beyond the machine they were measured on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h

import kmemcache
from kmemcache import allocinfo
from kmemcache.demo import measure as m

SIZE = 64
ALIGN = 64
#: allocinfo on costs at most this much more than off (median on / median off).
TARGET = 1.5

#: (key, label), in table order.
OPERATIONS = (("cache", "Cache alloc+free"), ("kmalloc", "kmalloc+kfree"))
STATES = ("off", "on")


def _cache_op(size: int, align: int) -> Callable[[], None]:
    cache = kmemcache.Cache(f"bench-allocinfo-{size}-{align}", size, align)
    alloc = cache.alloc

    def op() -> None:
        o = alloc()
        o.free()

    op.close = cache.destroy  # type: ignore[attr-defined]
    return op


def _kmalloc_op(size: int, align: int) -> Callable[[], None]:
    kmalloc, kfree = kmemcache.kmalloc, kmemcache.kfree

    def op() -> None:
        kfree(kmalloc(size, align))

    return op


def _recording(op: Callable[[], None]) -> Callable[[], None]:
    """``op`` itself, with allocinfo on for each timed loop of it."""
    op.enter = allocinfo.start  # type: ignore[attr-defined]
    op.exit = lambda _token: allocinfo.stop()  # type: ignore[attr-defined]
    return op


def build_candidates(operation: str, size: int, align: int) -> list[h.Candidate]:
    make = _cache_op if operation == "cache" else _kmalloc_op
    out = []
    for state in STATES:
        cand = h.Candidate(key=f"{operation}_{state}", label=f"allocinfo {state}")
        try:
            op = make(size, align)
            cand.op = op if state == "off" else _recording(op)
        except Exception as exc:  # report it and measure the rest
            cand.fail(exc)
        out.append(cand)
    return out


def evaluate_target(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    t = h.make_target(
        "allocinfo.on_vs_off",
        "allocinfo on <= 1.5x off: alloc+free with call sites recorded / without "
        "(the higher of Cache alloc+free and kmalloc+kfree)",
        TARGET,
        "lower",
    )
    ratios = {
        op: rec["ratio"]
        for op, recs in results.items()
        for rec in recs
        if rec["key"].endswith("_on") and "ratio" in rec
    }
    if len(ratios) < len(OPERATIONS):
        h.skip_target(t, "an operation was not measured")
    else:
        worst = max(ratios, key=lambda op: ratios[op])
        h.judge_target(t, ratios[worst])
        t["where"] = dict(OPERATIONS)[worst]
    return t


def render(data: dict[str, Any]) -> str:
    headers = ["operation", "off: ns/op (min-max)", "on: ns/op (min-max)", "on / off"]
    rows = []
    for key, label in OPERATIONS:
        recs = data["results"][key]
        row = [label]
        for rec in recs:
            if "median_ns" in rec:
                low, high = m.fmt_ns(rec["min_ns"]), m.fmt_ns(rec["max_ns"])
                row.append(f"{m.fmt_ns(rec['median_ns'])} ({low}-{high})")
            else:
                row.append(rec["status"])
        row.append(m.fmt_ratio(recs[1].get("ratio")))
        rows.append(row)
    env, loop = data["environment"], data["loop_overhead"]
    lines = [
        f"Median ns per alloc+free of one {data['size']}-byte object at alignment "
        f"{data['align']}, {data['repeats']} repeats (min-max), kmemcache.allocinfo off "
        "and on in the same run. Every number includes "
        f"{m.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        + h.environment_sentence(env),
    ]
    lines += h.quick_lines(data)
    lines += ["", m.markdown_table(headers, rows, {1, 2, 3})]
    lines += ["", h.target_line(data["targets"][0])]
    lines += h.note_lines(r for recs in data["results"].values() for r in recs)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size", type=int, default=SIZE, help=f"object size (default {SIZE})")
    parser.add_argument("--align", type=int, default=ALIGN, help=f"alignment (default {ALIGN})")
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    if args.size < 1:
        raise SystemExit("--size must be positive")
    if args.align < 1 or args.align & (args.align - 1):
        raise SystemExit("--align must be a power of two")
    if allocinfo.is_tracing():
        raise SystemExit("allocinfo is on (KMEMCACHE_ALLOCINFO?): 'off' could not be measured")
    kmemcache.debug.set_debug(None)  # the fast path, as a user's cache has it

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    groups = {key: build_candidates(key, args.size, args.align) for key, _ in OPERATIONS}
    steps = sum((repeats + 1) * sum(c.ok for c in cands) for cands in groups.values())
    progress = h.progress_for(args, steps, "bench_allocinfo")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for key, cands in groups.items():
            progress.prefix = f"bench_allocinfo {key}"
            h.run_round_robin(cands, repeats, number, target_ns, progress)
            base = next((c for c in cands if c.key.endswith("_off") and c.samples_ns), None)
            results[key] = [h.candidate_record(c, base) for c in cands]
            h.release(cands)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "allocinfo",
        "op": "alloc+free of one object, allocinfo off and on",
        "baseline": "off",
        "unit": "ns/op",
        "size": args.size,
        "align": args.align,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache"]),
        "results": results,
        "targets": [evaluate_target(results)],
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
