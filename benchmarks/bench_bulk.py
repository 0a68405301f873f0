"""alloc_bulk / free_bulk against a Python loop of single calls.

Measures, in one run, the ns per object of allocating n objects of 64 B at
alignment 64 and freeing them again, for n = 16, 256 and 4096:

* bulk: ``objs = cache.alloc_bulk(n, zero=...)`` then ``cache.free_bulk(objs)``;
* loop: ``objs = [cache.zalloc() for _ in range(n)]`` (or ``alloc``) then
  ``for o in objs: o.free()``;
* for reference, ``[bytearray(64) for _ in range(n)]`` then dropping the list.

The ratio is loop / bulk from the same run: how much faster the bulk calls are.
No target is set for it.

    python benchmarks/bench_bulk.py                  # Markdown table on stdout
    python benchmarks/bench_bulk.py --json out.json  # also machine-readable results
    python benchmarks/bench_bulk.py --quick          # tiny counts: checks it runs

It takes about ten seconds.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import _harness as h
import peers

from kmemcache.demo import measure as m

SIZE, ALIGN = 64, 64
COUNTS = (16, 256, 4096)
#: (key, label), in table order; the first of each zeroing kind is the baseline
KINDS = (
    ("bulk", "alloc_bulk + free_bulk"),
    ("loop", "loop of alloc/zalloc + loop of free"),
    ("bytearray", "list of bytearray(64), dropped"),
)

_ids = itertools.count()


def make_op(kind: str, n: int, zero: bool) -> tuple[m.Op, Any]:
    if kind == "bytearray":

        def op_bytearray() -> None:
            objs = [bytearray(SIZE) for _ in range(n)]
            del objs

        return op_bytearray, None
    cache = peers._kmemcache().Cache(f"bench-bulk-{next(_ids)}", SIZE, ALIGN)
    if kind == "bulk":
        alloc_bulk, free_bulk = cache.alloc_bulk, cache.free_bulk

        def op_bulk() -> None:
            free_bulk(alloc_bulk(n, zero))

        return op_bulk, cache
    alloc = cache.zalloc if zero else cache.alloc
    counter = range(n)

    def op_loop() -> None:
        objs = [alloc() for _ in counter]
        for o in objs:
            o.free()

    return op_loop, cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--counts", type=h.int_list, default=list(COUNTS), help="objects per call (16,256,4096)"
    )
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    counts = args.counts
    if min(counts) < 1:
        parser.error("--counts must be positive")

    cands: list[h.Candidate] = []
    meta: dict[str, dict[str, Any]] = {}
    caches = []
    for zero in (True, False):
        for n in counts:
            for kind, label in KINDS:
                if kind == "bytearray" and not zero:
                    continue  # bytearray always zeroes
                key = f"{kind}-{'zero' if zero else 'nozero'}-{n}"
                cand = h.Candidate(key=key, label=label, zeroed=zero)
                try:
                    cand.op, cache = make_op(kind, n, zero)
                    caches.append(cache)
                except peers.PeerUnavailable as exc:
                    cand.status, cand.note = "not installed", str(exc)
                cands.append(cand)
                meta[key] = {"kind": kind, "n": n, "zero": zero}

    progress = h.progress_for(args, (repeats + 1) * sum(c.ok for c in cands), "bench_bulk")
    try:
        h.run_round_robin(cands, repeats, number, target_ns, progress)
    finally:
        progress.close()

    by_key = {c.key: c for c in cands}
    results = []
    for cand in cands:
        m = meta[cand.key]
        base = by_key.get(f"bulk-{'zero' if m['zero'] else 'nozero'}-{m['n']}")
        rec = h.candidate_record(cand, None)
        rec.update(m)
        if "median_ns" in rec:
            rec["ns_per_object"] = rec["median_ns"] / m["n"]
            if base is not None and base.samples_ns:
                # loop / bulk: how many times faster the bulk calls are
                rec["ratio"] = rec["median_ns"] / statistics.median(base.samples_ns)
        results.append(rec)
    for cache in caches:
        if cache is not None:
            cache.destroy()

    data: dict[str, Any] = {
        "benchmark": "bulk",
        "unit": "ns/object",
        "size": SIZE,
        "align": ALIGN,
        "counts": counts,
        "repeats": repeats,
        "quick": args.quick,
        "environment": h.environment(["kmemcache"]),
        "results": results,
        "targets": [],
        "cpu_share_min": h.min_cpu_share(results),
    }
    return h.finish(args, data, render)


def render(data: dict[str, Any]) -> str:
    counts = data["counts"]
    lines = [
        f"Median ns per object to allocate n objects of {data['size']} B (align "
        f"{data['align']}) and free them again, {data['repeats']} repeats; in brackets, "
        "that cost / the bulk calls' cost in the same run (higher: bulk faster). "
        + h.environment_sentence(data["environment"]),
    ]
    lines += h.noise_lines(data)
    headers = ["zeroed", "calls"] + [f"n={n}" for n in counts]
    rows = []
    for zero in (True, False):
        for kind, label in KINDS:
            recs = {r["n"]: r for r in data["results"] if r["kind"] == kind and r["zero"] is zero}
            if not recs:
                continue
            cells = []
            for n in counts:
                rec = recs.get(n, {})
                if "ns_per_object" not in rec:
                    cells.append(rec.get("status", "-"))
                    continue
                cell = m.fmt_ns(rec["ns_per_object"])
                if kind != "bulk" and "ratio" in rec:
                    cell += f" ({m.fmt_ratio(rec['ratio'])})"
                cells.append(cell)
            rows.append(["yes" if zero else "no", label] + cells)
    lines += ["", m.markdown_table(headers, rows, set(range(2, len(headers))))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
