"""What each debug option costs: kmemcache zalloc+free with debugging off and with
each of SLUB's options F, Z, P, U, then all four.

Measures, in one run, the ns per ``o = cache.zalloc(); o.free()`` of one object of
64, 1472 and 4096 bytes at alignment 64, for six caches that differ only in their
debug flags: none, CONSISTENCY_CHECKS (F), RED_ZONE (Z), POISON (P), STORE_USER
(U) and FZPU. The ratio is flagged median / debugging-off median from the same
run: 1.00x means the option costs nothing on this path. KMEMCACHE_DEBUG is
ignored here: every cache gets exactly the flags its row names.

Run from the repository root, with kmemcache installed (``pip install -e .``)::

    python benchmarks/bench_debug.py                  # Markdown table on stdout
    python benchmarks/bench_debug.py --json out.json  # also machine-readable results
    python benchmarks/bench_debug.py --quick          # tiny counts: checks it runs

It takes about fifteen seconds; progress goes to stderr. Only the ratios mean
anything beyond the machine they were measured on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import _harness as h
import peers

import kmemcache
from kmemcache import Flags
from kmemcache.demo import measure as m

SIZES = (64, 1472, 4096)
ALIGN = 64
BASELINE = "off"

#: (key, label, flags), in table order.
VARIANTS = (
    ("off", "off", Flags(0)),
    ("F", "F (consistency checks)", Flags.CONSISTENCY_CHECKS),
    ("Z", "Z (red zone)", Flags.RED_ZONE),
    ("P", "P (poison)", Flags.POISON),
    ("U", "U (store user)", Flags.STORE_USER),
    (
        "FZPU",
        "FZPU (all)",
        Flags.CONSISTENCY_CHECKS | Flags.RED_ZONE | Flags.POISON | Flags.STORE_USER,
    ),
)


def build_candidates(size: int, align: int) -> list[h.Candidate]:
    out = []
    for key, label, flags in VARIANTS:
        cand = h.Candidate(key=key, label=label, aligned=True, zeroed=True)
        try:
            cand.op = peers.make_kmemcache_zalloc_free(size, align, flags)
        except Exception as exc:  # report it and measure the rest
            cand.fail(exc)
        out.append(cand)
    return out


def render(data: dict[str, Any]) -> str:
    sizes, align = data["sizes"], data["align"]
    headers = ["debug options"]
    for size in sizes:
        headers += [f"{size} B: ns/op (min-max)", "ratio"]
    rows = []
    for i, (_key, label, _flags) in enumerate(VARIANTS):
        row = [label]
        for size in sizes:
            rec = data["results"][str(size)][i]
            if "median_ns" in rec:
                low, high = m.fmt_ns(rec["min_ns"]), m.fmt_ns(rec["max_ns"])
                row.append(f"{m.fmt_ns(rec['median_ns'])} ({low}-{high})")
            else:
                row.append(rec["status"])
            row.append(m.fmt_ratio(rec.get("ratio")))
        rows.append(row)
    env, loop = data["environment"], data["loop_overhead"]
    lines = [
        f"Median ns per zalloc+free of one object at alignment {align}, "
        f"{data['repeats']} repeats (min-max); ratio = median with the option / median "
        "with debugging off, in the same run. Every number includes "
        f"{m.fmt_ns(loop['empty_op_call_ns'])} ns of loop and call overhead. "
        + h.environment_sentence(env),
    ]
    lines += h.quick_lines(data)
    lines += ["", m.markdown_table(headers, rows, set(range(1, len(headers))))]
    notes = [
        f"- {rec['label']} at {size} B: {rec['status']}: {rec['note']}"
        for size in sizes
        for rec in data["results"][str(size)]
        if rec.get("note")
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="comma-separated object sizes"
    )
    parser.add_argument("--align", type=int, default=ALIGN, help=f"alignment (default {ALIGN})")
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit("--sizes needs positive integers, e.g. 64,1472,4096")
    if args.align < 1 or args.align & (args.align - 1):
        raise SystemExit("--align must be a power of two")
    kmemcache.debug.set_debug(None)  # exactly the flags each row names

    loop = h.measure_loop_overhead(repeats, number, target_ns)
    groups = {size: build_candidates(size, args.align) for size in sizes}
    steps = sum((repeats + 1) * sum(c.ok for c in cands) for cands in groups.values())
    progress = h.progress_for(args, steps, "bench_debug")
    results: dict[int, list[dict[str, Any]]] = {}
    try:
        for size, cands in groups.items():
            progress.prefix = f"bench_debug {size} B"
            h.run_round_robin(cands, repeats, number, target_ns, progress)
            base = next((c for c in cands if c.key == BASELINE and c.samples_ns), None)
            results[size] = [h.candidate_record(c, base) for c in cands]
            h.release(cands)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "debug",
        "op": "zalloc+free of one object",
        "baseline": BASELINE,
        "unit": "ns/op",
        "sizes": sizes,
        "align": args.align,
        "repeats": repeats,
        "quick": args.quick,
        "loop_overhead": loop,
        "environment": h.environment(["kmemcache"]),
        "results": {str(size): recs for size, recs in results.items()},
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
