"""What one buffer costs: kmemcache alloc+free and zalloc+free against its peers.

Measures, in one run, the ns per alloc+free of a single buffer for sizes from 8 B to
1 MiB at alignments 8, 64 and 4096: kmemcache's ``o = cache.zalloc(); o.free()`` (the
cache made once, outside the loop; plus zalloc+drop, the non-zeroing alloc+free and
the kmalloc family) side by side with ``bytearray(n)`` create+drop, NumPy
over-allocate-and-slice (and plain ``np.zeros`` / ``np.empty``),
``pyfftw.zeros_aligned`` / ``empty_aligned``, ``pyarrow.allocate_buffer(n)``,
``posix_memalign`` (+ ``memset``) +
``free`` through ctypes, ``mmap.mmap(-1, n)`` create+close, and NumPy under two
aligned NEP 49 handlers installed once: kmemcache.numpy's and one in C over
``aligned_alloc`` (the best a user can write without kmemcache; built by the
benchmark). Each row says whether the memory it returned was actually aligned.
Zeroed buffers are compared with kmemcache zalloc+free, buffers with undefined
contents with kmemcache alloc+free: the ratio is peer median / kmemcache median
from the same run, so higher means kmemcache is faster.

Two targets are checked and reported as PASS/MISS lines (never asserted): 64 B
zalloc+free at alignment 64 costs no more than ``bytearray(64)`` (ratio >= 1.0),
and it is at least 15x faster than ``pyfftw.zeros_aligned`` at every size up to
64 KiB (at every alignment measured).

Run from the repository root, with kmemcache installed (``pip install -e .``) and
optionally the ``bench`` extra (``pip install -e .[bench]``); missing optional peers
are listed as "not installed"::

    python benchmarks/bench_alloc.py                  # Markdown tables on stdout
    python benchmarks/bench_alloc.py --json out.json  # also machine-readable results
    python benchmarks/bench_alloc.py --quick          # tiny counts: checks it runs
    python benchmarks/bench_alloc.py --sizes 64,1472 --aligns 64

The default run takes about a minute; progress goes to stderr. Only the ratios mean
anything beyond the machine they were measured on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import _harness as h
import peers

from kmemcache.demo import measure as m

SIZES = (8, 64, 256, 1024, 4096, 16384, 65536, 262144, 1 << 20)
ALIGNS = (8, 64, 4096)
#: --quick: a small and a large size at two alignments, the targets' 64 B among them.
QUICK_SIZES = (64, 65536)
QUICK_ALIGNS = (64, 4096)

#: 64 B zalloc+free at alignment 64 against bytearray(64).
BYTEARRAY_SIZE, BYTEARRAY_ALIGN, BYTEARRAY_MIN = 64, 64, 1.0
#: pyfftw.zeros_aligned, at every size up to this one.
PYFFTW_MAX_SIZE, PYFFTW_MIN = 64 << 10, 15.0


def _ratio_of(results: dict[int, dict[int, list[dict[str, Any]]]], align: int, size: int, key: str):
    for rec in results.get(align, {}).get(size, []):
        if rec["key"] == key:
            return rec
    return None


def evaluate_targets(results: dict[int, dict[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """PASS/MISS/SKIP for each target from the JSON records."""
    targets = []

    t = h.make_target(
        "alloc.bytearray_64",
        f"{BYTEARRAY_SIZE} B zalloc+free at align {BYTEARRAY_ALIGN} costs no more than "
        f"bytearray({BYTEARRAY_SIZE}) create+drop (ratio bytearray / kmemcache)",
        BYTEARRAY_MIN,
        "higher",
    )
    rec = _ratio_of(results, BYTEARRAY_ALIGN, BYTEARRAY_SIZE, "bytearray")
    if rec is None:
        h.skip_target(t, f"{BYTEARRAY_SIZE} B at align {BYTEARRAY_ALIGN} not measured")
    elif "ratio" not in rec:
        h.skip_target(t, rec.get("note") or "kmemcache or bytearray not measured")
    else:
        h.judge_target(t, rec["ratio"])
    targets.append(t)

    t = h.make_target(
        "alloc.pyfftw_zeros",
        f"zalloc+free is at least {PYFFTW_MIN:g}x faster than pyfftw.zeros_aligned at every "
        f"size up to {m.fmt_size(PYFFTW_MAX_SIZE)} and every alignment measured (lowest ratio)",
        PYFFTW_MIN,
        "higher",
    )
    points = []
    for align, by_size in results.items():
        for size in by_size:
            if size > PYFFTW_MAX_SIZE:
                continue
            rec = _ratio_of(results, align, size, "pyfftw_zeros")
            if rec is not None and "ratio" in rec:
                points.append({"size": size, "align": align, "ratio": rec["ratio"]})
    t["points"] = points
    if not points:
        any_rec = next(
            (
                r
                for by_size in results.values()
                for recs in by_size.values()
                for r in recs
                if r["key"] == "pyfftw_zeros"
            ),
            None,
        )
        h.skip_target(t, (any_rec or {}).get("note") or "pyfftw.zeros_aligned not measured")
    else:
        worst = min(points, key=lambda p: p["ratio"])
        h.judge_target(t, worst["ratio"])
        t["where"] = f"{m.fmt_size(worst['size'])} at align {worst['align']}"
        below = [p for p in points if p["ratio"] < PYFFTW_MIN]
        if below:
            t["detail"] = "below at " + ", ".join(
                f"{m.fmt_size(p['size'])}/{p['align']} ({p['ratio']:.1f}x)"
                for p in sorted(below, key=lambda p: (p["align"], p["size"]))
            )
    targets.append(t)
    return targets


def aligned_cell(records: Sequence[dict[str, Any]]) -> str:
    seen = {r["size"]: r["aligned"] for r in records if r["aligned"] is not None}
    if not seen:
        return "-"
    if all(seen.values()):
        return "yes"
    if not any(seen.values()):
        return "no"
    return "at " + ", ".join(m.fmt_size(s) for s, ok in seen.items() if ok)


def ratio_cell(record: dict[str, Any]) -> str:
    if record["key"] == record["baseline"] and "median_ns" in record:
        return f"{m.fmt_ns(record['median_ns'])} ns"
    if "ratio" in record:
        return m.fmt_ratio(record["ratio"])
    return "-"


def render_table(data: dict[str, Any], align: int, zeroed: bool) -> str:
    sizes = data["sizes"]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for size in sizes:
        for rec in data["results"][str(align)][str(size)]:
            if rec["zeroed"] is zeroed and rec["status"] == "ok":
                by_key.setdefault(rec["key"], []).append({**rec, "size": size})
    headers = ["allocator", f"aligned to {align}"] + [m.fmt_size(s) for s in sizes]
    rows = []
    for recs in by_key.values():
        cells = {r["size"]: ratio_cell(r) for r in recs}
        rows.append([recs[0]["label"], aligned_cell(recs)] + [cells.get(s, "-") for s in sizes])
    return m.markdown_table(headers, rows, set(range(2, len(headers))))


def render(data: dict[str, Any]) -> str:
    """The Markdown report: context, one table per alignment and kind, the targets."""
    env, loop = data["environment"], data["loop_overhead"]
    lines = [
        "Median ns per alloc+free of one buffer, "
        f"{data['repeats']} repeats, peers taking turns. The first row of each table is "
        "kmemcache's median in ns; every other cell is peer median / kmemcache median "
        "from the same run (higher: kmemcache faster). Zeroed buffers are compared with "
        "zalloc+free, unzeroed ones with alloc+free. Every number includes "
        f"{m.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        + h.environment_sentence(env),
    ]
    lines.append(
        "\nmmap gets zero pages from the kernel, which zeroes them at first touch, so "
        "its large sizes do not include the zeroing that kmemcache's zalloc does up "
        "front (nor may numpy.zeros, when calloc hands out fresh pages). No buffer is "
        "touched here."
    )
    lines += h.noise_lines(data)
    for align in data["aligns"]:
        for zeroed in (True, False):
            kind = "zalloc+free, zeroed buffers" if zeroed else "alloc+free, contents undefined"
            lines += ["", f"#### Alignment {align}: {kind}", ""]
            lines.append(render_table(data, align, zeroed))
    lines += [""] + [h.target_line(t) for t in data["targets"]]
    lines += h.note_lines(
        (rec for by_size in data["results"].values() for recs in by_size.values() for rec in recs),
        label_failed_only=True,
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--sizes",
        type=h.int_list,
        help="comma-separated buffer sizes in bytes, 1 to 4 MiB "
        f"(default: {','.join(map(str, SIZES))}; with --quick {','.join(map(str, QUICK_SIZES))})",
    )
    parser.add_argument(
        "--aligns",
        type=h.int_list,
        help="comma-separated alignments, powers of two "
        f"(default: {','.join(map(str, ALIGNS))}; with --quick {','.join(map(str, QUICK_ALIGNS))})",
    )
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    aligns = args.aligns or list(QUICK_ALIGNS if args.quick else ALIGNS)
    if min(sizes) < 1 or max(sizes) > 4 << 20:
        parser.error("--sizes must be from 1 to 4194304")
    if any(a < 1 or a & (a - 1) for a in aligns):
        parser.error("--aligns must be powers of two")

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    progress = h.progress_for(args, len(aligns) * len(sizes), "bench_alloc")
    results: dict[int, dict[int, list[dict[str, Any]]]] = {}
    try:
        for align in aligns:
            for size in sizes:
                progress.step(f"{m.fmt_size(size)} at align {align}")
                cands = peers.build_candidates(peers.PEERS, size, align)
                h.run_round_robin(cands, repeats, number, target_ns)
                results.setdefault(align, {})[size] = peers.records_for(peers.PEERS, cands)
                h.release(cands)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "alloc",
        "op": "alloc+free of one buffer",
        "baselines": {"zeroed": peers.BASELINE, "unzeroed": peers.BASELINE_UNZEROED},
        "unit": "ns/op",
        "sizes": sizes,
        "aligns": aligns,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache", "numpy", "pyfftw", "pyarrow"]),
        "results": {
            str(align): {str(size): recs for size, recs in by_size.items()}
            for align, by_size in results.items()
        },
        "targets": evaluate_targets(results),
        "cpu_share_min": h.min_cpu_share(
            r for by_size in results.values() for recs in by_size.values() for r in recs
        ),
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
