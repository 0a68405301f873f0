"""Does alloc+free stay O(1)? Its cost with 1e3 to 1e7 objects alive.

One fresh process per allocator fills one container (a kmemcache cache, or the
interpreter's heap for bytearray) per N, all at once, then times ops on each of
them, taking turns round-robin so that every N sees the same machine:

* ``lifo``: allocate one zeroed object and free it again while N others stay
  alive (the pattern of most programs: the object freed last is reused first);
* ``random``: free a live object chosen at random among the N, then allocate
  its replacement, so that frees land anywhere in the heap;
* ``touch``: read a random live object's handle, allocating nothing: what the
  same random walk over N objects costs in cache and TLB misses alone, a floor
  for ``random``.

The figure is cost(N) / cost(1e3) for each pattern. Objects are 64 bytes at
alignment 64. kmemcache is compared with ``bytearray(64)``, which keeps the same
number of Python objects alive. Every N has its own kmemcache cache; bytearray's
N all live in the interpreter's one heap, so its lifo row (which reuses the
block just freed) does not keep them apart, while its random and touch rows do
(each walks its own N objects).

One target is checked per kmemcache pattern and reported as a PASS/MISS line
(never asserted): with 1e7 live objects, an alloc+free costs no more than 1.3x
what it costs with 1e3.

    python benchmarks/bench_scaling.py                  # Markdown table on stdout
    python benchmarks/bench_scaling.py --json out.json  # also machine-readable results
    python benchmarks/bench_scaling.py --quick          # 1e3 and 1e4: checks it runs

The default run needs about 2 GB of free memory and takes about half a minute.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h
import peers

from kmemcache.demo import measure as m

SIZE, ALIGN = 64, 64
LEVELS = (10**3, 10**4, 10**5, 10**6, 10**7)
QUICK_LEVELS = (10**3, 10**4)
PATTERNS = ("lifo", "random", "touch")
#: Random indices per level, cycled: more than a timed loop's worth of distinct
#: objects at every level, few enough to make quickly.
RANDOM_INDICES = 1 << 16
CHILD_TIMEOUT = 900.0

TARGET_MAX = 1.3

#: (key, label). kmalloc is not among the defaults: its size classes are shared by
#: the whole process, so its N cannot be kept apart in one process (its objects are
#: a Cache's, the same engine).
ALLOCATORS = (
    ("kmemcache", "kmemcache Cache zalloc+free"),
    ("bytearray", "bytearray(64)"),
    ("kmalloc", "kmemcache kzalloc+kfree"),
)
DEFAULT_ALLOCATORS = ("kmemcache", "bytearray")


def _cycle_indices(n: int, rng: random.Random) -> Callable[[], int]:
    return itertools.cycle([rng.randrange(n) for _ in range(RANDOM_INDICES)]).__next__


def build_ops(key: str, n: int, rng: random.Random) -> tuple[dict[str, m.Op], Any]:
    """The three ops over n live objects of one allocator; also what keeps them."""
    next_i = _cycle_indices(n, rng)
    if key == "kmemcache":
        cache = peers._kmemcache().Cache(f"bench-scaling-{n}", SIZE, ALIGN)
        zalloc = cache.zalloc
        live = []
        for start in range(0, n, 4096):
            live += cache.alloc_bulk(min(4096, n - start), zero=True)

        def lifo() -> None:
            o = zalloc()
            o.free()

        def rand() -> None:
            i = next_i()
            live[i].free()
            live[i] = zalloc()

    elif key == "kmalloc":
        km = peers._kmalloc()
        kzalloc, kfree = km.kzalloc, km.kfree
        cache = None
        live = [kzalloc(SIZE, ALIGN) for _ in range(n)]

        def lifo() -> None:
            kfree(kzalloc(SIZE, ALIGN))

        def rand() -> None:
            i = next_i()
            kfree(live[i])
            live[i] = kzalloc(SIZE, ALIGN)

    elif key == "bytearray":
        cache = None
        live = [bytearray(SIZE) for _ in range(n)]

        def lifo() -> None:
            bytearray(SIZE)

        def rand() -> None:
            live[next_i()] = bytearray(SIZE)

    else:
        raise KeyError(key)

    def touch() -> None:
        len(live[next_i()])

    return {"lifo": lifo, "random": rand, "touch": touch}, (cache, live)


def child_main(key: str, levels: list[int], repeats: int, number: int | None, target_ns: int):
    try:
        if key == "kmalloc":
            peers._kmalloc()
        else:
            peers._kmemcache()
    except peers.PeerUnavailable as exc:
        print(json.dumps({"status": "not installed", "note": str(exc)}))
        return 0
    rng = random.Random(12345)
    keep = []
    cands = []
    started = time.perf_counter()
    gc.disable()  # millions of objects: no collection may land in a timed loop
    for n in levels:
        ops, kept = build_ops(key, n, rng)
        keep.append(kept)
        for pattern in PATTERNS:
            cands.append(
                h.Candidate(key=f"{pattern}@{n}", label=f"{pattern} N={n}", op=ops[pattern])
            )
    fill_seconds = time.perf_counter() - started
    h.run_round_robin(cands, repeats, number, target_ns)
    records = {c.key: h.candidate_record(c, None) for c in cands}
    print(json.dumps({"status": "ok", "fill_seconds": fill_seconds, "records": records}))
    sys.stdout.flush()
    os._exit(0)  # tearing down 1e7 objects one by one is not part of the measurement


def run_allocator(key: str, levels: list[int], args: Any) -> dict[str, Any]:
    argv = [
        os.path.abspath(__file__),
        "--child",
        key,
        ",".join(map(str, levels)),
        *(["--quick"] if args.quick else []),
        "--repeats",
        str(args.repeats),
        "--target-ms",
        str(args.target_ms),
        *(["--number", str(args.number)] if args.number else []),
        "--clock",
        args.clock,
    ]
    try:
        return h.run_child(argv, CHILD_TIMEOUT)
    except Exception as exc:
        return {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}


def summarize(raw: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """Per pattern: ns per op at every N, and the ratio to the smallest N."""
    out: dict[str, Any] = {"status": raw["status"]}
    if raw.get("note"):
        out["note"] = raw["note"]
    if raw["status"] != "ok":
        return out
    out["fill_seconds"] = raw["fill_seconds"]
    first = levels[0]
    for pattern in PATTERNS:
        rows = {}
        base = raw["records"].get(f"{pattern}@{first}", {})
        for n in levels:
            rec = raw["records"].get(f"{pattern}@{n}", {})
            if "median_ns" not in rec:
                rows[str(n)] = {"status": rec.get("status", "failed"), "note": rec.get("note")}
                continue
            row = {k: rec[k] for k in ("median_ns", "min_ns", "max_ns", "samples_ns", "number")}
            row["status"] = "ok"
            if "median_ns" in base:
                row["ratio"] = rec["median_ns"] / base["median_ns"]
            rows[str(n)] = row
        out[pattern] = rows
    return out


def evaluate_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    levels = data["levels"]
    low, high = levels[0], levels[-1]
    targets = []
    kmc = data["results"].get("kmemcache", {})
    for pattern, text in (
        ("lifo", "zalloc+free, the object freed last reused first"),
        ("random", "free of a random live object, then zalloc of its replacement"),
    ):
        t = h.make_target(
            f"scaling.{pattern}",
            f"{text}: cost with {m.fmt_count(high)} live objects / cost with {m.fmt_count(low)}",
            TARGET_MAX,
            "lower",
        )
        row = kmc.get(pattern, {}).get(str(high), {})
        if kmc.get("status") != "ok":
            h.skip_target(t, kmc.get("note") or "kmemcache not measured")
        elif "ratio" not in row:
            h.skip_target(t, row.get("note") or f"N={high} not measured")
        else:
            h.judge_target(t, row["ratio"])
            # the same measure for the peer, and for the random walk alone
            context = []
            peer = data["results"].get("bytearray", {}).get(pattern, {}).get(str(high), {})
            if "ratio" in peer:
                context.append(f"bytearray {peer['ratio']:.2f}x")
            walk = kmc.get("touch", {}).get(str(high), {})
            if pattern == "random" and "ratio" in walk:
                context.append(f"the random walk alone (touch) {walk['ratio']:.2f}x")
            if context:
                t["detail"] = "in the same run: " + ", ".join(context)
        targets.append(t)
    return targets


def render(data: dict[str, Any]) -> str:
    levels = data["levels"]
    lines = [
        f"Median ns per op with N objects of {SIZE} B (align {ALIGN}) alive, "
        f"{data['repeats']} repeats, the N taking turns in one process per allocator; "
        f"in brackets, cost(N) / cost(N={m.fmt_count(levels[0])}). lifo: alloc+free of "
        "one more object; random: free a random live object and allocate its "
        "replacement; touch: read a random live object's handle, no allocation. "
        + h.environment_sentence(data["environment"]),
    ]
    lines += h.quick_lines(data)
    headers = ["allocator", "op"] + [f"N={m.fmt_count(n)}" for n in levels]
    rows = []
    notes = []
    for key, label in ALLOCATORS:
        if key not in data["results"]:
            continue
        res = data["results"][key]
        if res.get("status") != "ok":
            notes.append(f"{label}: {res.get('status')}: {res.get('note')}")
            continue
        for pattern in PATTERNS:
            cells = []
            for n in levels:
                row = res[pattern].get(str(n), {})
                if "median_ns" not in row:
                    cells.append("-")
                    continue
                cell = f"{m.fmt_ns(row['median_ns'])}"
                if n != levels[0] and "ratio" in row:
                    cell += f" ({row['ratio']:.2f}x)"
                cells.append(cell)
            rows.append([label, pattern] + cells)
    lines += ["", m.markdown_table(headers, rows, set(range(2, len(headers))))]
    lines += [""] + [h.target_line(t) for t in data["targets"]]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--levels",
        type=h.int_list,
        help="comma-separated numbers of live objects (default 1e3,1e4,1e5,1e6,1e7; "
        "with --quick 1e3,1e4)",
    )
    parser.add_argument(
        "--allocators",
        default=",".join(DEFAULT_ALLOCATORS),
        help="comma-separated: kmemcache, bytearray, kmalloc (default: kmemcache,bytearray; "
        "kmalloc's N share its caches, so its rows do not keep N apart)",
    )
    if argv[:1] == ["--child"]:
        key, levels = argv[1], h.int_list(argv[2])
        args = parser.parse_args(argv[3:])
        repeats, number, target_ns = h.settings(args)
        return child_main(key, levels, repeats, number, target_ns)

    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    levels = args.levels or list(QUICK_LEVELS if args.quick else LEVELS)
    if min(levels) < 1:
        parser.error("--levels must be positive")
    keys = args.allocators.split(",")
    unknown = set(keys) - {k for k, _ in ALLOCATORS}
    if unknown:
        parser.error(f"unknown --allocators {', '.join(sorted(unknown))}")

    progress = h.progress_for(args, len(keys), "bench_scaling")
    results = {}
    try:
        for key in keys:
            progress.step(f"{key}: filling {m.fmt_count(sum(levels))} objects, then timing")
            results[key] = summarize(run_allocator(key, levels, args), levels)
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "scaling",
        "unit": "ns/op",
        "size": SIZE,
        "align": ALIGN,
        "levels": levels,
        "patterns": list(PATTERNS),
        "repeats": repeats,
        "quick": args.quick,
        "environment": h.environment(["kmemcache"]),
        "results": results,
    }
    data["targets"] = evaluate_targets(data)
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
