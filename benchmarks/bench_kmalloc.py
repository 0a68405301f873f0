"""What the kmalloc family costs: time per kmalloc+kfree, and memory per live object.

Time: the ns per alloc+free of one buffer of 8 B to 64 KiB, in one run:
``kfree(kzalloc(n))`` against ``bytearray(n)`` create+drop and ``posix_memalign`` +
``memset`` + ``free`` through ctypes (zeroed buffers), and ``kfree(kmalloc(n))``
against ``posix_memalign`` + ``free`` (contents undefined). posix_memalign is asked
for the alignment kmalloc guarantees at that size (16 B from 16 bytes up, the size
itself for powers of two, the page for large requests); the "aligned" column says
whether bytearray happened to give it. Each ratio is peer median / kmemcache median
from the same run, so higher means kmemcache is faster. Sizes up to 8 KiB come from
the size classes; above, every kmalloc maps and unmaps pages.

Memory: for each size class, and for a few large sizes, the bytes the allocator holds
per live object when many are live, against the size asked for, at the class's
smallest request (its worst fit) and at its own size (its best): slab memory per
object from the engine's counters (for large objects, their pages), plus the
allocator's metadata, kept outside object memory (a 16-byte descriptor per slab and
one bit per object; for large objects, their share of the address table). Python's
handle objects are not counted.

Run from the repository root, with kmemcache installed (``pip install -e .``)::

    python benchmarks/bench_kmalloc.py                  # Markdown tables on stdout
    python benchmarks/bench_kmalloc.py --json out.json  # also machine-readable results
    python benchmarks/bench_kmalloc.py --quick          # tiny counts: checks it runs
    python benchmarks/bench_kmalloc.py --sizes 64,4096

It takes about half a minute; progress goes to stderr. Only the ratios mean anything
beyond the machine they were measured on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import _harness as h
import peers

import kmemcache
from kmemcache import _kmemcache as _core
from kmemcache import kfree, kmalloc, kzalloc
from kmemcache.demo import measure as m
from kmemcache.kmalloc import LARGE_THRESHOLD, SIZE_CLASSES, large_stats, size_class

SIZES = (8, 16, 64, 96, 256, 1024, 4096, 8192, 16384, 65536)
QUICK_SIZES = (64, 16384)
#: Large sizes in the memory table.
LARGE_SIZES = (8193, 12288, 16384, 65536)
#: Live objects per memory measurement: this many bytes' worth, within bounds,
#: which fills dozens of slabs of every class.
MEMORY_BYTES = 16 << 20
QUICK_MEMORY_BYTES = 1 << 20
MIN_LIVE, MAX_LIVE = 64, 16384

PAGE_SIZE = kmemcache.PAGE_SIZE


def guaranteed_align(size: int) -> int:
    """The alignment kmalloc(size) guarantees, as the engine says (kmc.h's rule)."""
    return int(_core._kmalloc_align(size, 0))


# --- the ops ---------------------------------------------------------------------


def make_kzalloc(size: int, align: int) -> m.Op:
    def op() -> None:
        kfree(kzalloc(size))

    return op


def make_kmalloc(size: int, align: int) -> m.Op:
    def op() -> None:
        kfree(kmalloc(size))

    return op


def aligned_kmalloc(size: int, align: int) -> bool:
    objs = [kmalloc(size) for _ in range(peers.ALIGN_SAMPLES)]
    try:
        return all(o.address % align == 0 for o in objs)
    finally:
        for o in objs:
            kfree(o)


class Op(NamedTuple):
    """One way of allocating, as listed in the time table."""

    key: str
    label: str
    zeroed: bool
    baseline: str  # the kmemcache op its ratio is taken against
    make: Callable[[int, int], m.Op]  # (size, align) -> op
    aligned: Callable[[int, int], bool]  # (size, align) -> all samples aligned


OPS: tuple[Op, ...] = (
    Op("kzalloc", "kfree(kzalloc(n))", True, "kzalloc", make_kzalloc, aligned_kmalloc),
    Op(
        "bytearray",
        "bytearray(n) create+drop",
        True,
        "kzalloc",
        peers.make_bytearray,
        peers.aligned_bytearray,
    ),
    Op(
        "posix_memalign",
        "posix_memalign+memset+free (ctypes)",
        True,
        "kzalloc",
        peers.make_posix_memalign,
        peers.aligned_posix_memalign,
    ),
    Op("kmalloc", "kfree(kmalloc(n))", False, "kmalloc", make_kmalloc, aligned_kmalloc),
    Op(
        "posix_memalign_nozero",
        "posix_memalign+free (ctypes)",
        False,
        "kmalloc",
        peers.make_posix_memalign_nozero,
        peers.aligned_posix_memalign,
    ),
)


# --- memory per live object --------------------------------------------------------


def cache_of(name: str) -> _core.Cache:
    for cache in _core._kmalloc_caches():
        if cache is not None and cache.name == name:
            return cache
    raise LookupError(name)


def measure_memory(request: int, budget: int) -> dict[str, Any]:
    """Bytes held per live object while ``count`` objects of ``request`` bytes live."""
    cls = size_class(request)
    slot = cls.size if cls is not None else request
    count = min(MAX_LIVE, max(MIN_LIVE, budget // slot))
    if cls is None:
        before = large_stats()
        objs = [kmalloc(request) for _ in range(count)]
        after = large_stats()
        held = (after.bytes - before.bytes) / count
        meta = after.table_bytes / after.objects  # the address table's share
        name, objsize = "pages", kmemcache.ksize(objs[0])
    else:
        # Averages over the whole cache, its empty slabs given back first: the
        # slots of the last, partly filled slab count, as they would in use.
        kfree(kmalloc(request))  # the class's cache exists
        cache_of(cls.name).shrink()
        objs = [kmalloc(request) for _ in range(count)]
        s = kmemcache.SlabStats.from_dict(cache_of(cls.name)._stats())
        held = s.committed_bytes / s.active_objs
        meta = s.metadata_bytes / s.active_objs  # descriptors and bitmaps, mapped
        name, objsize = cls.name, s.objsize
    for o in objs:
        kfree(o)
    return {
        "request": request,
        "class": name,
        "objsize": objsize,
        "count": count,
        "bytes_per_object": held,
        "metadata_per_object": meta,
        "ratio": (held + meta) / request,
    }


def memory_table(budget: int) -> list[dict[str, Any]]:
    rows = []
    low = 1
    for cls in SIZE_CLASSES:
        for request in sorted({low, cls.size}):
            rows.append(measure_memory(request, budget))
        low = cls.size + 1
    for request in LARGE_SIZES:
        rows.append(measure_memory(request, budget))
    return rows


# --- report -----------------------------------------------------------------------------


def ratio_cell(rec: dict[str, Any] | None) -> str:
    if rec is None or "median_ns" not in rec:
        return (rec or {}).get("status", "-")
    if rec["key"] == rec["baseline"]:
        return f"{m.fmt_ns(rec['median_ns'])} ns"
    mark = "" if rec["aligned"] in (True, None) else " (unaligned)"
    return m.fmt_ratio(rec.get("ratio")) + mark


def memory_markdown(memory: Sequence[dict[str, Any]]) -> str:
    """One row per class (its worst and best fit), one per large size."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in memory:
        key = row["class"] if row["class"] != "pages" else f"pages ({m.fmt_size(row['request'])})"
        groups.setdefault(key, []).append(row)
    headers = ["served by", "slot", "bytes/object", "metadata/object", "worst fit", "best fit"]
    rows = []
    for name, ms in groups.items():
        worst, best = ms[0], ms[-1]
        rows.append(
            [
                name,
                m.fmt_size(best["objsize"]),
                f"{best['bytes_per_object']:,.1f}",
                f"{best['metadata_per_object']:.2f}",
                f"{m.fmt_size(worst['request'])}: {m.fmt_ratio(worst['ratio'])}",
                f"{m.fmt_size(best['request'])}: {m.fmt_ratio(best['ratio'])}",
            ]
        )
    return m.markdown_table(headers, rows, {1, 2, 3, 4, 5})


def render(data: dict[str, Any]) -> str:
    env, loop = data["environment"], data["loop_overhead"]
    lines = [
        f"Median ns per alloc+free of one buffer, {data['repeats']} repeats, ops taking "
        "turns. kmemcache columns are its median in ns; the others are peer median / "
        "kmemcache median from the same run (higher: kmemcache faster); zeroed peers "
        "against kzalloc, the others against kmalloc. Every number includes "
        f"{m.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        + h.environment_sentence(env),
    ]
    lines += h.quick_lines(data)
    headers = ["size", "kmalloc's alignment"] + [kop.label for kop in OPS]
    rows = []
    for size in data["sizes"]:
        recs = {r["key"]: r for r in data["results"][str(size)]}
        rows.append(
            [m.fmt_size(size), m.fmt_size(data["aligns"][str(size)])]
            + [ratio_cell(recs.get(kop.key)) for kop in OPS]
        )
    lines += ["", m.markdown_table(headers, rows, set(range(1, len(headers)))), ""]

    lines.append(
        "Memory held per live object with many live: slab bytes (for large objects, "
        "pages) and allocator metadata outside object memory, from the engine's "
        "counters; ratio = (bytes + metadata) / size asked for, at the class's smallest "
        "request (its worst fit) and at its own size (its best):"
    )
    lines += ["", memory_markdown(data["memory"])]
    lines += h.note_lines(rec for recs in data["results"].values() for rec in recs)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--sizes",
        help="comma-separated sizes in bytes, 1 to 4 MiB "
        f"(default: {','.join(map(str, SIZES))}; with --quick {','.join(map(str, QUICK_SIZES))})",
    )
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    try:
        sizes = [int(s, 0) for s in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    sizes = sizes or list(QUICK_SIZES if args.quick else SIZES)
    if min(sizes) < 1 or max(sizes) > 4 << 20:
        parser.error("--sizes must be from 1 to 4194304")

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    progress = h.progress_for(args, len(sizes) + 1, "bench_kmalloc")
    results: dict[int, list[dict[str, Any]]] = {}
    try:
        for size in sizes:
            progress.step(m.fmt_size(size))
            cands = peers.build_candidates(OPS, size, guaranteed_align(size))
            h.run_round_robin(cands, repeats, number, target_ns)
            results[size] = peers.records_for(OPS, cands)
            h.release(cands)
        progress.step("memory per object")
        memory = memory_table(QUICK_MEMORY_BYTES if args.quick else MEMORY_BYTES)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "kmalloc",
        "op": "alloc+free of one buffer",
        "unit": "ns/op",
        "sizes": sizes,
        "aligns": {str(size): guaranteed_align(size) for size in sizes},
        "large_threshold": LARGE_THRESHOLD,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache"]),
        "results": {str(size): recs for size, recs in results.items()},
        "memory": memory,
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
