"""What memory groups cost from Python: alloc+free outside every group and inside one.

Measures, in one run, the ns per operation of

* ``o = cache.alloc(); o.free()`` on a 64-byte, 64-aligned ``Cache``: on a cache that
  never had an object charged to a group ("never charged"), on one that had
  ("charged before": its frees read the objects' tags from then on), and inside a
  group with a limit ("in a group");
* ``kfree(kmalloc(64, 64))``: outside a group and inside one (the class's cache is
  charged once the group has run, so "no group" is the charged-before case);
* ``np.empty(8)`` and ``np.zeros(1000)`` under ``kmemcache.numpy``'s handler, outside
  a group and inside one.

Each timed loop of an "in a group" op runs inside ``with group:`` (a group with a 1 GiB
limit, entered when the loop begins and left when it ends); the ops take turns,
round-robin. The ratios are medians over the "no group" median of the same operation
(for the Cache: the never-charged one), from the same run.

Targets, reported as PASS/MISS lines (never asserted): inside a group with a limit,
alloc+free <= 1.10x no group, for a Cache and for NumPy's ``np.empty`` / ``np.zeros``
(the issue's "from Python" and "NumPy" targets; its "from C" one is in bench_engine).

Run from the repository root, with kmemcache installed (``pip install -e .``)::

    python benchmarks/bench_groups.py                  # Markdown table on stdout
    python benchmarks/bench_groups.py --json out.json  # also machine-readable results
    python benchmarks/bench_groups.py --quick          # tiny counts: checks it runs
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h

import kmemcache
from kmemcache.demo import measure as m

SIZE = 64
ALIGN = 64
LIMIT = 1 << 30
#: in a group costs at most this much more than no group (median / median)
TARGET = 1.10

#: (key, label), in table order
OPERATIONS = (
    ("cache", "Cache alloc+free"),
    ("kmalloc", "kmalloc+kfree"),
    ("np_empty", "np.empty(8)"),
    ("np_zeros", "np.zeros(1000)"),
)


def _cache_op(name: str, charge_first: bool) -> Callable[[], None]:
    cache = kmemcache.Cache(name, SIZE, ALIGN)
    if charge_first:  # one object charged and freed: the cache's frees read tags from now on
        with kmemcache.MemoryGroup("bench-groups-once"):
            cache.alloc().free()
    alloc = cache.alloc

    def op() -> None:
        alloc().free()

    op.close = cache.destroy  # type: ignore[attr-defined]
    return op


def _kmalloc_op() -> Callable[[], None]:
    kmalloc, kfree = kmemcache.kmalloc, kmemcache.kfree

    def op() -> None:
        kfree(kmalloc(SIZE, ALIGN))

    return op


def _numpy_op(zeros: bool) -> Callable[[], None]:
    import numpy as np

    import kmemcache.numpy as knp

    make = np.zeros if zeros else np.empty
    n = 1000 if zeros else 8
    previous = knp.install(ALIGN)
    knp.set_handler(previous)  # installed per loop, below

    def op() -> None:
        make(n)

    op.enter = lambda: knp.install(ALIGN)  # type: ignore[attr-defined]
    op.exit = knp.set_handler  # type: ignore[attr-defined]
    return op


def _in_group(op: Callable[[], None], group: kmemcache.MemoryGroup) -> Callable[[], None]:
    """``op`` itself, run inside ``group`` for each timed loop."""
    inner_enter = getattr(op, "enter", None)
    inner_exit = getattr(op, "exit", None)

    def enter() -> Any:
        token = inner_enter() if inner_enter else None
        group.__enter__()
        return token

    def leave(token: Any) -> None:
        group.__exit__(None, None, None)
        if inner_exit:
            inner_exit(token)

    op.enter = enter  # type: ignore[attr-defined]
    op.exit = leave  # type: ignore[attr-defined]
    return op


def build_candidates(operation: str, group: kmemcache.MemoryGroup) -> list[h.Candidate]:
    states: list[tuple[str, str, Callable[[], Callable[[], None]], bool]]
    if operation == "cache":
        states = [
            ("never", "no group, never charged", lambda: _cache_op("bench-grp-a", False), False),
            ("before", "no group, charged before", lambda: _cache_op("bench-grp-b", True), False),
            ("group", "in a group", lambda: _cache_op("bench-grp-c", False), True),
        ]
    elif operation == "kmalloc":
        states = [
            ("none", "no group", _kmalloc_op, False),
            ("group", "in a group", _kmalloc_op, True),
        ]
    else:
        zeros = operation == "np_zeros"
        states = [
            ("none", "no group", lambda: _numpy_op(zeros), False),
            ("group", "in a group", lambda: _numpy_op(zeros), True),
        ]
    out = []
    for key, label, make, grouped in states:
        cand = h.Candidate(key=f"{operation}_{key}", label=label)
        try:
            op = make()
            cand.op = _in_group(op, group) if grouped else op
        except Exception as exc:  # report it and measure the rest
            cand.fail(exc)
        out.append(cand)
    return out


def evaluate_target(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    t = h.make_target(
        "groups.in_group_vs_none",
        "in a group with a limit <= 1.10x no group: alloc+free from Python (Cache) and "
        "NumPy's np.empty / np.zeros (the highest ratio)",
        TARGET,
        "lower",
    )
    ratios = {
        op: rec["ratio"]
        for op, recs in results.items()
        for rec in recs
        if op != "kmalloc" and rec["key"].endswith("_group") and "ratio" in rec
    }
    if not ratios:
        h.skip_target(t, "nothing measured")
    else:
        worst = max(ratios, key=lambda op: ratios[op])
        h.judge_target(t, ratios[worst])
        t["where"] = dict(OPERATIONS)[worst]
    return t


def render(data: dict[str, Any]) -> str:
    headers = ["operation", "state", "ns/op (min-max)", "vs no group"]
    rows = []
    for key, label in OPERATIONS:
        for rec in data["results"].get(key, []):
            if "median_ns" in rec:
                low, high = m.fmt_ns(rec["min_ns"]), m.fmt_ns(rec["max_ns"])
                cell = f"{m.fmt_ns(rec['median_ns'])} ({low}-{high})"
            else:
                cell = rec["status"]
            rows.append([label, rec["label"], cell, m.fmt_ratio(rec.get("ratio"))])
    env, loop = data["environment"], data["loop_overhead"]
    lines = [
        f"Median ns per operation, {data['repeats']} repeats (min-max), outside every memory "
        f"group and inside one with a {LIMIT >> 30} GiB limit, in the same run. Every "
        f"number includes {m.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        + h.environment_sentence(env),
    ]
    lines += h.quick_lines(data)
    lines += ["", m.markdown_table(headers, rows, {2, 3})]
    lines += ["", h.target_line(data["targets"][0])]
    lines += h.note_lines(r for recs in data["results"].values() for r in recs)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    if kmemcache.MemoryGroup.current() is not None:
        raise SystemExit("a memory group is current: 'no group' could not be measured")
    kmemcache.debug.set_debug(None)  # the fast path, as a user's cache has it
    try:
        import numpy  # noqa: F401
    except ImportError:
        operations = [op for op in OPERATIONS if not op[0].startswith("np_")]
    else:
        operations = list(OPERATIONS)
    group = kmemcache.MemoryGroup("bench-groups", limit=LIMIT)

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    groups = {key: build_candidates(key, group) for key, _ in operations}
    steps = sum((repeats + 1) * sum(c.ok for c in cands) for cands in groups.values())
    progress = h.progress_for(args, steps, "bench_groups")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for key, cands in groups.items():
            progress.prefix = f"bench_groups {key}"
            h.run_round_robin(cands, repeats, number, target_ns, progress)
            base = next((c for c in cands if c.samples_ns), None)
            results[key] = [h.candidate_record(c, base) for c in cands]
            h.release(cands)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "groups",
        "op": "alloc+free outside every memory group and inside one",
        "baseline": "no group (for the Cache: never charged)",
        "unit": "ns/op",
        "size": SIZE,
        "align": ALIGN,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache", "numpy"]),
        "results": results,
        "targets": [evaluate_target(results)],
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
