"""The steady pool from Python: a random live buffer freed and replaced, again and again.

The seed's workload, and the way most programs use an object cache: N buffers
live (N = 4,096 and 100,000), then, in the timed loop, a random one of them is
freed and a new one takes its place. Measured, in one run and taking turns:
kmemcache's ``pool[j].free(); pool[j] = cache.alloc()`` (and ``zalloc()``, and
``kzalloc(n, align=64)``) on a cache made once with alignment 64, against
``pool[j] = bytearray(n)``, ``numpy.zeros(n, uint8)`` and
``pyarrow.allocate_buffer(n)`` (the replaced buffer is dropped, which frees it).
The random indices come from one precomputed sequence that every allocator
walks, so each pays the same for them.

The ratio is peer median / kmemcache alloc+free median (higher: kmemcache
faster); bytearray and NumPy zero their buffers, so the zeroed rows are also
given against kmemcache's zalloc. Targets (PASS/MISS, never asserted):
alloc+free <= 1.0x ``bytearray(n)`` at 64 B and 1512 B for both pool sizes.

    python benchmarks/bench_pool.py                  # Markdown table on stdout
    python benchmarks/bench_pool.py --json out.json  # also machine-readable results
    python benchmarks/bench_pool.py --quick          # tiny counts: checks it runs

The default run takes about two minutes; progress goes to stderr.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h

import kmemcache
from kmemcache.demo import measure as m

SIZES = (64, 1512, 4096)
LIVES = (4096, 100_000)
QUICK_LIVES = (256, 4096)
ALIGN = 64
#: bytearray(n) against kmemcache alloc+free at these sizes, every pool size.
TARGET_SIZES, TARGET_MIN = (64, 1512), 1.0


def _address(buf: Any) -> int:
    """Where a buffer starts: kmemcache objects and pyarrow buffers say so,
    NumPy arrays through ``ctypes``, a bytearray through a ctypes view."""
    if hasattr(buf, "address"):
        return int(buf.address)
    if hasattr(buf, "ctypes"):
        return int(buf.ctypes.data)
    view = (ctypes.c_char * len(buf)).from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def _indices(live: int) -> list[int]:
    rng = random.Random(live)
    return [rng.randrange(live) for _ in range(1 << 16)]


def _replacing(new: Callable[[], Any], live: int) -> m.Op:
    """An op that drops a random buffer of a pool of ``live`` and makes a new one."""
    pool = [new() for _ in range(live)]
    order = itertools.cycle(_indices(live))

    def op(pool: list[Any] = pool, order: Any = order, new: Callable[[], Any] = new) -> None:
        pool[next(order)] = new()

    op.pool = pool  # type: ignore[attr-defined]
    return op


def _freeing(new: Callable[[], Any], live: int) -> m.Op:
    """An op that frees a random object of a pool of ``live`` and allocates another."""
    pool = [new() for _ in range(live)]
    order = itertools.cycle(_indices(live))

    def op(pool: list[Any] = pool, order: Any = order, new: Callable[[], Any] = new) -> None:
        j = next(order)
        pool[j].free()
        pool[j] = new()

    op.pool = pool  # type: ignore[attr-defined]
    return op


def candidates(size: int, live: int) -> list[h.Candidate]:
    cache = kmemcache.Cache(f"pool-{size}", size, align=ALIGN)
    cands = [
        h.Candidate("alloc", "kmemcache alloc+free", _freeing(cache.alloc, live), True, False),
        h.Candidate("zalloc", "kmemcache zalloc+free", _freeing(cache.zalloc, live), True, True),
        h.Candidate(
            "kzalloc",
            f"kmemcache kzalloc({size}, align={ALIGN})+free",
            _freeing(lambda: kmemcache.kzalloc(size, align=ALIGN), live),
            True,
            True,
        ),
        h.Candidate("bytearray", f"bytearray({size})", _replacing(lambda: bytearray(size), live)),
    ]
    try:
        import numpy as np

        zeros = _replacing(lambda: np.zeros(size, np.uint8), live)
        cands.append(h.Candidate("numpy", f"numpy.zeros({size}, uint8)", zeros))
    except ImportError:
        cands.append(h.Candidate("numpy", "numpy.zeros", status="not installed"))
    try:
        import pyarrow as pa

        cands.append(
            h.Candidate(
                "pyarrow",
                f"pyarrow.allocate_buffer({size})",
                _replacing(lambda: pa.allocate_buffer(size), live),
            )
        )
    except ImportError:
        cands.append(h.Candidate("pyarrow", "pyarrow.allocate_buffer", status="not installed"))
    for cand in cands:
        if cand.ok and cand.aligned is None:
            pool = cand.op.pool  # type: ignore[union-attr]
            cand.aligned = all(_address(b) % ALIGN == 0 for b in pool[:64])
        if cand.ok:
            cand.zeroed = cand.zeroed if cand.zeroed is not None else True
    cands[0].cache = cache  # type: ignore[attr-defined]
    return cands


def release(cands: Sequence[h.Candidate]) -> None:
    for cand in cands:
        pool = getattr(cand.op, "pool", None)
        if pool is not None and cand.key in ("alloc", "zalloc", "kzalloc"):
            for obj in pool:
                obj.free()
        if pool is not None:
            pool.clear()
    cache = getattr(cands[0], "cache", None)
    if cache is not None:
        cache.destroy()
    gc.collect()


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Median ns per free+alloc of one buffer in a steady pool, {data['repeats']} repeats, "
        "allocators taking turns. The kmemcache alloc+free column is ns; every other "
        "cell is peer median / kmemcache alloc+free median from the same run (higher: "
        "kmemcache faster). " + h.environment_sentence(data["environment"]),
    ]
    lines += h.noise_lines(data)
    keys = [c["key"] for c in data["rows"][0]["records"]]
    labels = {c["key"]: c["label"].split("(")[0] for c in data["rows"][0]["records"]}
    headers = ["size", "live"] + [labels[k] for k in keys]
    rows = []
    for row in data["rows"]:
        cells = []
        for rec in row["records"]:
            if rec["key"] == "alloc" and "median_ns" in rec:
                cells.append(f"{m.fmt_ns(rec['median_ns'])} ns")
            elif "ratio" in rec:
                cells.append(m.fmt_ratio(rec["ratio"]))
            else:
                cells.append(rec.get("status", "-"))
        rows.append([m.fmt_size(row["size"]), f"{row['live']:,}"] + cells)
    lines += ["", m.markdown_table(headers, rows, set(range(2, len(headers))))]
    lines += [""] + [h.target_line(t) for t in data["targets"]]
    return "\n".join(lines)


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    t = h.make_target(
        "pool.bytearray",
        "steady-pool free+alloc costs no more than bytearray(n) at "
        + " and ".join(m.fmt_size(s) for s in TARGET_SIZES)
        + ", every pool size (lowest ratio bytearray / kmemcache)",
        TARGET_MIN,
        "higher",
    )
    points = [
        (row, rec["ratio"])
        for row in rows
        if row["size"] in TARGET_SIZES
        for rec in row["records"]
        if rec["key"] == "bytearray" and "ratio" in rec
    ]
    if not points:
        h.skip_target(t, "bytearray not measured")
    else:
        row, worst = min(points, key=lambda p: p[1])
        h.judge_target(t, worst)
        t["where"] = f"{m.fmt_size(row['size'])} with {row['live']:,} live"
    return [t]


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    lives = QUICK_LIVES if args.quick else LIVES
    progress = h.progress_for(args, len(SIZES) * len(lives), "bench_pool")
    rows = []
    try:
        for size in SIZES:
            for live in lives:
                progress.step(f"{m.fmt_size(size)}, {live:,} live")
                cands = candidates(size, live)
                h.run_round_robin(cands, repeats, number, target_ns)
                base = cands[0]
                records = [h.candidate_record(c, base if c is not base else None) for c in cands]
                rows.append({"size": size, "live": live, "records": records})
                release(cands)
    finally:
        progress.close()
    data: dict[str, Any] = {
        "benchmark": "pool",
        "op": "free a random live buffer and allocate its replacement",
        "unit": "ns/op",
        "align": ALIGN,
        "repeats": repeats,
        "quick": args.quick,
        "environment": h.environment(["kmemcache", "numpy", "pyarrow"]),
        "rows": rows,
        "targets": evaluate_targets(rows),
        "cpu_share_min": h.min_cpu_share(r for row in rows for r in row["records"]),
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
