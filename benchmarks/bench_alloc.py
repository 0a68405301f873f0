"""What one aligned, zeroed buffer costs: kmemcache zalloc+free against its peers.

Measures, in one run, the ns per alloc+free of a single buffer of 64, 1472 and 4096
bytes at alignment 64: kmemcache's ``o = cache.zalloc(); o.free()`` (the cache made
once, outside the loop; plus its zalloc+drop and non-zeroing alloc+free variants)
side by side with ``bytearray(n)`` create+drop, NumPy over-allocate-and-slice (and
plain ``np.zeros`` / ``np.empty``), ``pyfftw.zeros_aligned`` / ``empty_aligned``,
``posix_memalign`` + ``memset`` + ``free`` through ctypes, ``mmap.mmap(-1, n)``
create+close, and an aligned numpy-allocator handler. Each row says whether the
memory it returned was actually aligned and whether it comes zero-filled; the
ratio is peer median / kmemcache zalloc+free median from the same run, so higher
means kmemcache is faster.

Two targets are checked and reported as PASS/MISS lines (never asserted): at 64 bytes,
zalloc+free costs no more than ``bytearray(64)`` (ratio >= 1.0) and is at least 15x
faster than ``pyfftw.zeros_aligned``.

Run from the repository root, with kmemcache installed (``pip install -e .``) and
optionally the ``bench`` extra (``pip install -e .[bench]``); missing optional peers
are listed as "not installed"::

    python benchmarks/bench_alloc.py                  # Markdown table on stdout
    python benchmarks/bench_alloc.py --json out.json  # also machine-readable results
    python benchmarks/bench_alloc.py --quick          # tiny counts: checks it runs

It takes a few seconds; progress goes to stderr. Only the ratios mean anything
beyond the machine they were measured on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import _harness as h
import peers

SIZES = (64, 1472, 4096)
ALIGN = 64


# (peer key, minimum ratio peer/kmemcache, what it means) at TARGET_SIZE and ALIGN.
TARGET_SIZE = 64
TARGETS = (
    ("bytearray", 1.0, "costs no more than bytearray({size}) create+drop"),
    ("pyfftw_zeros", 15.0, "is at least 15x faster than pyfftw.zeros_aligned"),
)


def build_candidates(size: int, align: int) -> list[h.Candidate]:
    """One candidate per peer; unavailable or broken peers are recorded, not raised."""
    out = []
    for p in peers.PEERS:
        cand = h.Candidate(key=p.key, label=p.label, zeroed=p.zeroed)
        try:
            cand.aligned = p.aligned(size, align)
            cand.op = p.make(size, align)
        except peers.PeerUnavailable as exc:
            cand.status, cand.note = "not installed", str(exc)
        except Exception as exc:  # report the broken peer and measure the rest
            cand.fail(exc)
        out.append(cand)
    return out


def evaluate_targets(results: dict[int, list[dict[str, Any]]], align: int) -> list[dict[str, Any]]:
    """PASS/MISS/SKIP for each target from the JSON records."""
    out = []
    for key, threshold, text in TARGETS:
        target: dict[str, Any] = {
            "description": f"{TARGET_SIZE} B zalloc+free at align {ALIGN} "
            + text.format(size=TARGET_SIZE),
            "size": TARGET_SIZE,
            "align": ALIGN,
            "peer": key,
            "threshold": threshold,
            "ratio": None,
        }
        records = {r["key"]: r for r in results.get(TARGET_SIZE, [])}
        record, base = records.get(key), records.get(peers.BASELINE)
        if align != ALIGN or not records:
            target["status"], target["reason"] = "SKIP", "not measured in this run"
        elif base is None or "median_ns" not in base:
            target["status"], target["reason"] = "SKIP", f"kmemcache {base and base['status']}"
        elif record is None or "ratio" not in record:
            reason = record.get("note") or record["status"] if record else "no such peer"
            target["status"], target["reason"] = "SKIP", reason
        else:
            target["ratio"] = record["ratio"]
            target["status"] = "PASS" if record["ratio"] >= threshold else "MISS"
        out.append(target)
    return out


def aligned_cell(records: Sequence[dict[str, Any]]) -> str:
    seen = {r["size"]: r["aligned"] for r in records if r["aligned"] is not None}
    if not seen:
        return "-"
    if all(seen.values()):
        return "yes"
    if not any(seen.values()):
        return "no"
    return "at " + ", ".join(f"{s} B" for s, ok in seen.items() if ok)


def time_cell(record: dict[str, Any]) -> str:
    if "median_ns" not in record:
        return record["status"]
    low, high = h.fmt_ns(record["min_ns"]), h.fmt_ns(record["max_ns"])
    return f"{h.fmt_ns(record['median_ns'])} ({low}-{high})"


def render(data: dict[str, Any]) -> str:
    """The Markdown report: a sentence of context, the table, the target lines."""
    sizes, align = data["sizes"], data["align"]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for size in sizes:
        for rec in data["results"][str(size)]:
            by_key.setdefault(rec["key"], []).append({**rec, "size": size})

    headers = ["allocator", "zeroed", f"aligned to {align}"]
    for size in sizes:
        headers += [f"{size} B: ns/op (min-max)", "ratio"]
    right = set(range(3, len(headers)))
    rows = []
    for recs in by_key.values():
        row = [recs[0]["label"], "yes" if recs[0]["zeroed"] else "no", aligned_cell(recs)]
        for rec in recs:
            row += [time_cell(rec), h.fmt_ratio(rec.get("ratio"))]
        rows.append(row)

    env, loop = data["environment"], data["loop_overhead"]
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    lines = [
        f"Median ns per alloc+free of one buffer at alignment {align}, "
        f"{data['repeats']} repeats (min-max); ratio = peer median / kmemcache zalloc+free "
        "median in the same run (higher: kmemcache faster). Every number includes "
        f"{h.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        f"{env['implementation']} {env['python']}, {env['system']} {env['machine']}, "
        f"{env['cpu_count']} CPUs; {pkgs}.",
    ]
    if data["cpu_share_min"] < 0.8:
        lines.append(
            f"\nOther load took the CPU away for up to {1 - data['cpu_share_min']:.0%} of "
            "a timed loop in this run; ratios compare ops timed side by side, but "
            "consider running again on a quieter machine."
        )
    if data["quick"]:
        lines.append("\n(--quick: counts far too small for the numbers to mean anything.)")
    lines += ["", h.markdown_table(headers, rows, right), ""]
    for target in data["targets"]:
        ratio = "-" if target["ratio"] is None else h.fmt_ratio(target["ratio"])
        goal = f"target >= {target['threshold']:g}x"
        line = f"- {target['status']}: {target['description']}: {ratio} ({goal})"
        if target["status"] == "SKIP":
            line += f" [{target['reason']}]"
        lines.append(line)
    notes = sorted(
        {
            # Unavailable peers share one line per reason; failures name their row.
            f"{rec['label']}: " * (rec["status"] == "failed") + f"{rec['status']}: {rec['note']}"
            for recs in by_key.values()
            for rec in recs
            if rec.get("note")
        }
    )
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit("--sizes needs positive integers, e.g. 64,1472,4096")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="comma-separated buffer sizes in bytes"
    )
    parser.add_argument("--align", type=int, default=ALIGN, help=f"alignment (default {ALIGN})")
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    sizes = parse_sizes(args.sizes)
    if args.align < 1 or args.align & (args.align - 1):
        raise SystemExit("--align must be a power of two")

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    groups = {size: build_candidates(size, args.align) for size in sizes}
    steps = sum((repeats + 1) * sum(c.ok for c in cands) for cands in groups.values())
    progress = h.Progress(steps, "bench_alloc", enabled=not args.no_progress)
    results: dict[int, list[dict[str, Any]]] = {}
    try:
        for size, cands in groups.items():
            progress.prefix = f"bench_alloc {size} B"
            h.run_round_robin(cands, repeats, number, target_ns, progress)
            base = next((c for c in cands if c.key == peers.BASELINE and c.samples_ns), None)
            results[size] = [h.candidate_record(c, base) for c in cands]
            h.release(cands)
    finally:
        progress.done()

    data: dict[str, Any] = {
        "benchmark": "alloc",
        "op": "alloc+free of one buffer",
        "baseline": peers.BASELINE,
        "unit": "ns/op",
        "sizes": sizes,
        "align": args.align,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache", "numpy", "pyfftw", "numpy-allocator"]),
        "results": {str(size): recs for size, recs in results.items()},
        "targets": evaluate_targets(results, args.align),
        "cpu_share_min": min(
            (r["cpu_share_min"] for recs in results.values() for r in recs if "cpu_share_min" in r),
            default=1.0,
        ),
    }
    if args.json:
        h.write_json(args.json, data)
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
