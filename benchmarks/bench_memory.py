"""Memory per live object: kmemcache against its peers, from the process's RSS.

For each object size and alignment, and each N from 1e3 to 1e7, every allocator
runs in a fresh process: it makes N objects, zero-filled or touched so that their
pages are resident, keeping them in a container made beforehand, and the growth of
the resident set (/proc/self/smaps_rollup, else /proc/self/statm) over N is the
memory per live object. The floor is the ideal, the size rounded up to the
alignment. At small N the figures for Python objects run low: the interpreter
first reuses memory it already holds.

kmemcache is measured twice: through the Python API (a ``kmemcache.Object`` handle
per object) and through the engine's C functions called with ctypes (no handle).
The first minus the second is the handle's cost, reported on its own; the second is
what the engine spends per object, which the target compares with the ideal. For
peers whose buffer sits behind a Python object (bytearray, ndarray, mmap) the
object's fixed part is estimated from ``sys.getsizeof`` (see holders.py).

One target is checked and reported as a PASS/MISS line (never asserted): at 1e6
live objects the engine's memory per object is within 5% of the ideal, for every
size measured at that N.

Large N is only run where it fits: by default no single run may need more than
3 GB (``--max-gb``); to keep the run short, allocators that take a microsecond or
more per object from Python stop at 1e5, the kmalloc family and numpy.zeros at
1e6 (``--max-n`` raises the cap for all), and mmap at 1e4 (one mapping per object;
Linux allows 65530). Skipped cells say why.

    python benchmarks/bench_memory.py                  # Markdown tables on stdout
    python benchmarks/bench_memory.py --json out.json  # also machine-readable results
    python benchmarks/bench_memory.py --quick          # 1e3 objects of 64 B: checks it runs
    python benchmarks/bench_memory.py --config 1472:64:1e3,1e5

The default run takes about a minute and needs about 3 GB of free memory.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import _harness as h
import holders
import peers

from kmemcache.demo import measure as m

#: (size, align, N values) in the default run: the 64-byte cache line, perf's x86_lbr
#: task context (1512 bytes at 64), and a page at page alignment.
CONFIGS: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (64, 64, (10**3, 10**4, 10**5, 10**6, 10**7)),
    (1512, 64, (10**3, 10**5, 10**6)),
    (4096, 4096, (10**3, 10**5)),
)
QUICK_CONFIGS: tuple[tuple[int, int, tuple[int, ...]], ...] = ((64, 64, (10**3,)),)
MAX_GB = 3.0
#: Children expected to need more than this run one at a time.
BIG_BYTES = 500 << 20
CHILD_TIMEOUT = 600.0

TARGET_N = 10**6
TARGET_MAX = 1.05

#: Sizes whose slab layout is checked against the ideal (no allocation needed).
LAYOUT_SIZES = tuple(range(8, 8193, 8)) + tuple(1 << k for k in range(14, 23))
LAYOUT_ALIGNS = (8, 64, 4096)


def ideal_bytes(size: int, align: int) -> int:
    step = max(align, 1)
    return -(-size // step) * step


# --- the child: one allocator, one N, a fresh process -------------------------------


def child_main(key: str, size: int, align: int, n: int) -> int:
    holder = holders.holder(key)
    try:
        fill, inspect = holder.prepare(size, align, n)
    except peers.PeerUnavailable as exc:
        print(json.dumps({"status": "not installed", "note": str(exc)}))
        return 0
    gc.collect()
    gc.disable()
    before = h.rss_bytes()
    started = time.perf_counter()
    fill()
    seconds = time.perf_counter() - started
    after = h.rss_bytes()
    info = inspect()
    addresses = info.pop("addresses", [])
    record = {
        "status": "ok",
        "rss_before": before,
        "rss_after": after,
        "bytes_per_object": (after - before) / n,
        "seconds": seconds,
        "aligned": bool(addresses) and all(a % max(align, 1) == 0 for a in addresses),
        **info,
    }
    print(json.dumps(record))
    sys.stdout.flush()
    os._exit(0)  # freeing millions of objects one by one would take longer than the run


# --- the parent ------------------------------------------------------------------------


def measure(key: str, size: int, align: int, n: int) -> dict[str, Any]:
    argv = [os.path.abspath(__file__), "--child", key, str(size), str(align), str(n)]
    try:
        return h.run_child(argv, CHILD_TIMEOUT)
    except Exception as exc:
        return {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}


def skip_reason(holder: holders.Holder, size: int, align: int, n: int, args: Any) -> str | None:
    cap = args.max_n if args.max_n is not None else holder.max_n
    if n > cap:
        if holder.key == "mmap":
            return f"not run above N={m.fmt_count(cap)}: one mapping per object (--max-n)"
        return f"not run above N={m.fmt_count(cap)}, to keep the default run short (--max-n)"
    need = holders.estimated_bytes(holder, size, align, n)
    if need > args.max_gb * 1e9:
        return f"not run: would need about {need / 1e9:.1f} GB (--max-gb {args.max_gb:g})"
    return None


def derive(runs: dict[str, dict[int, dict[str, Any]]], size: int, align: int) -> None:
    """Split each measurement into memory and handle, and compare with the ideal."""
    ideal = ideal_bytes(size, align)
    engine = runs.get("kmemcache_engine", {})
    for key, by_n in runs.items():
        how = holders.holder(key).handle
        for n, rec in by_n.items():
            if rec["status"] != "ok":
                continue
            total = rec["bytes_per_object"]
            handle: float | None = None
            if how == "none":
                handle = 0.0
            elif how == "header":
                handle = float(rec.get("handle_sizeof", 0))
            elif how == "measured":
                base = engine.get(n)
                if base and base["status"] == "ok":
                    handle = total - base["bytes_per_object"]
            rec["handle_bytes"] = handle
            rec["handle_how"] = how if handle is not None else "unknown"
            if handle is not None:
                memory = total - handle
                rec["memory_bytes"] = memory
                rec["memory_vs_ideal"] = memory / ideal
            if "engine" in rec and rec["engine"].get("active_objs"):
                stats = rec["engine"]
                rec["committed_per_object"] = stats["committed_bytes"] / stats["active_objs"]


def layout_check() -> dict[str, Any]:
    """What the slab layout spends per object by design, for many sizes: slab size /
    objects per slab against the ideal. No object is allocated."""
    try:
        import kmemcache
    except ImportError as exc:
        return {"status": "not installed", "note": str(exc)}
    worst: dict[str, Any] = {"ratio": 0.0}
    over = checked = 0
    for align in LAYOUT_ALIGNS:
        for size in LAYOUT_SIZES:
            cache = kmemcache.Cache("bench-layout", size, align)
            s = cache.stats()
            cache.destroy()
            ratio = s.slab_size / s.objperslab / ideal_bytes(size, align)
            checked += 1
            over += ratio > TARGET_MAX
            if ratio > worst["ratio"]:
                worst = {
                    "ratio": ratio,
                    "size": size,
                    "align": align,
                    "slab_size": s.slab_size,
                    "objperslab": s.objperslab,
                }
    return {
        "status": "ok",
        "checked": checked,
        "over_target": over,
        "sizes": "8 to 8192 in steps of 8, then powers of two to 4 MiB",
        "aligns": list(LAYOUT_ALIGNS),
        "worst": worst,
    }


def evaluate_targets(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for cfg in configs:
        if TARGET_N not in cfg["ns"]:
            continue
        size, align = cfg["size"], cfg["align"]
        t = h.make_target(
            f"memory.engine_{size}_{align}",
            f"memory per live object at {m.fmt_count(TARGET_N)} objects of {m.fmt_size(size)} "
            f"at align {align}, without the handle, within {TARGET_MAX - 1:.0%} of the ideal "
            f"{cfg['ideal']} B (ratio engine / ideal)",
            TARGET_MAX,
            "lower",
        )
        rec = cfg["runs"].get("kmemcache_engine", {}).get(TARGET_N)
        if rec is None or rec["status"] != "ok":
            h.skip_target(t, (rec or {}).get("note") or "not measured")
        else:
            h.judge_target(t, rec["memory_vs_ideal"])
            handles = cfg["runs"].get("kmemcache", {}).get(TARGET_N, {})
            if handles.get("handle_bytes") is not None:
                t["detail"] = f"the handle adds {handles['handle_bytes']:.0f} B per object"
        targets.append(t)
    return targets


# --- report ----------------------------------------------------------------------------


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} B" if value >= 100 else f"{value:.1f} B"


def render(data: dict[str, Any]) -> str:
    lines = [
        "Bytes of resident memory per live object, each cell a fresh process holding N "
        "objects (RSS growth / N). Ideal: the size rounded up to the alignment. Small N "
        "is coarse: one 4 KiB page is 4 B per object at 1e3. "
        + h.environment_sentence(data["environment"]),
    ]
    if data["quick"]:
        lines.append("\n(--quick: one small N; the numbers mean little.)")
    notes: set[str] = set()
    for cfg in data["configs"]:
        size, align, ideal, ns = cfg["size"], cfg["align"], cfg["ideal"], cfg["ns"]
        lines += [
            "",
            f"#### {m.fmt_size(size)} objects at alignment {align} (ideal {ideal} B)",
            "",
        ]
        headers = ["allocator", "handle"] + [f"N={m.fmt_count(n)}" for n in ns]
        rows = []
        for key, by_n in cfg["runs"].items():
            hol = holders.holder(key)
            cells = []
            for n in ns:
                rec = by_n.get(str(n)) or by_n.get(n) or {"status": "-"}
                if rec["status"] == "ok":
                    cells.append(fmt_bytes(rec["bytes_per_object"]))
                else:
                    cells.append("-")
                    if rec.get("note"):
                        notes.add(f"{hol.label}: {rec['note']}")
            rows.append([hol.label, hol.handle] + cells)
        lines.append(m.markdown_table(headers, rows, set(range(2, len(headers)))))
        # the breakdown: each allocator at the target N, or the largest N it reached
        engine = cfg["runs"].get("kmemcache_engine", {})
        limit = TARGET_N if TARGET_N in ns else max(ns)
        lines += [
            "",
            f"Split at N={m.fmt_count(limit)} (or the largest N run below it): memory "
            "without the handle, against the ideal:",
            "",
        ]
        headers = ["allocator", "aligned", "N", "total", "handle", "memory", "memory / ideal"]
        rows = []
        for key, by_n in cfg["runs"].items():
            done = [n for n in ns if n <= limit and (by_n.get(n) or {}).get("status") == "ok"]
            if not done:
                continue
            rec = by_n[max(done)]
            handle = rec.get("handle_bytes")
            how = {"header": " (est.)", "measured": " (meas.)"}.get(rec.get("handle_how", ""), "")
            vs = rec.get("memory_vs_ideal")
            rows.append(
                [
                    holders.holder(key).label,
                    "yes" if rec["aligned"] else "no",
                    m.fmt_count(max(done)),
                    fmt_bytes(rec["bytes_per_object"]),
                    fmt_bytes(handle) + how if handle else "0 B" if handle == 0 else "-",
                    fmt_bytes(rec.get("memory_bytes")),
                    "-" if vs is None else f"{vs:.3f}x",
                ]
            )
        lines.append(m.markdown_table(headers, rows, {2, 3, 4, 5, 6}))
        at = limit
        eng = engine.get(at, {})
        if "committed_per_object" in eng:
            lines.append(
                f"\nCross-check: the engine's own count, committed slab bytes / live objects, "
                f"is {eng['committed_per_object']:.1f} B; RSS says "
                f"{eng['bytes_per_object']:.1f} B (the rest: slab descriptors, free bitmaps, "
                "page rounding)."
            )
    layout = data.get("layout", {})
    if layout.get("status") == "ok":
        w = layout["worst"]
        lines.append(
            f"\nSlab layout by design ({layout['checked']} size/alignment pairs: "
            f"{layout['sizes']}, at {', '.join(map(str, layout['aligns']))}): "
            f"{layout['over_target']} spend more than {TARGET_MAX - 1:.0%} over the ideal per "
            f"object; the worst is {m.fmt_size(w['size'])} at {w['align']}, "
            f"{w['ratio']:.3f}x ({w['objperslab']} objects in a {m.fmt_size(w['slab_size'])} "
            "slab). Slabs may waste up to 1/32 of themselves (SLUB: 1/16)."
        )
    lines += [""] + [h.target_line(t) for t in data["targets"]]
    if notes:
        lines += ["", *[f"- {n}" for n in sorted(notes)]]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def parse_config(text: str) -> tuple[int, int, tuple[int, ...]]:
    """``SIZE:ALIGN:N1,N2,...``"""
    try:
        size, align, ns = text.split(":")
        values = (int(size, 0), int(align, 0), tuple(h.int_list(ns)))
    except Exception:
        raise SystemExit(
            f"--config wants SIZE:ALIGN:N1,N2,... (e.g. 64:64:1e3,1e6), not {text!r}"
        ) from None
    if values[0] < 1 or values[1] < 1 or values[1] & (values[1] - 1) or min(values[2]) < 1:
        raise SystemExit(f"--config {text!r}: size >= 1, align a power of two, N >= 1")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        key, size, align, n = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        return child_main(key, size, align, n)

    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--config",
        action="append",
        metavar="SIZE:ALIGN:N,...",
        help="an object size, its alignment and the N values to run; repeatable "
        "(default: 64:64:1e3,1e4,1e5,1e6,1e7 1512:64:1e3,1e5,1e6 4096:4096:1e3,1e5)",
    )
    parser.add_argument(
        "--max-gb", type=float, default=MAX_GB, help="skip runs needing more (default 3)"
    )
    parser.add_argument("--max-n", type=float, help="largest N for every allocator")
    parser.add_argument(
        "--jobs", type=int, default=2, help="measuring processes at once (default 2)"
    )
    parser.add_argument("--holders", help="comma-separated allocator keys (default: all)")
    args = parser.parse_args(argv)
    if args.max_n is not None:
        args.max_n = int(args.max_n)
    if args.config:
        configs = [parse_config(c) for c in args.config]
    else:
        configs = list(QUICK_CONFIGS if args.quick else CONFIGS)
    chosen = holders.HOLDERS
    if args.holders:
        keys = args.holders.split(",")
        unknown = set(keys) - {x.key for x in holders.HOLDERS}
        if unknown:
            parser.error(f"unknown --holders {', '.join(sorted(unknown))}")
        chosen = tuple(x for x in holders.HOLDERS if x.key in keys)

    # Every (config, allocator, N) is one child. Children only read their own RSS,
    # so --jobs of them run side by side; those needing more than BIG_BYTES take
    # turns, so that two big ones never add up on a shared machine.
    results: dict[tuple[int, str, int], dict[str, Any]] = {}
    jobs = []
    for ci, (size, align, ns) in enumerate(configs):
        for hol in chosen:
            for n in ns:
                reason = skip_reason(hol, size, align, n, args)
                if reason is not None:
                    results[ci, hol.key, n] = {"status": "skipped", "note": reason}
                else:
                    jobs.append((ci, hol, n))
    progress = h.progress_for(args, len(jobs), "bench_memory")
    big = threading.Semaphore(1)

    def run(job: tuple[int, holders.Holder, int]) -> dict[str, Any]:
        ci, hol, n = job
        size, align, _ = configs[ci]
        if holders.estimated_bytes(hol, size, align, n) > BIG_BYTES:
            with big:
                return measure(hol.key, size, align, n)
        return measure(hol.key, size, align, n)

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = {pool.submit(run, job): job for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                ci, hol, n = futures[future]
                size, align, _ = configs[ci]
                results[ci, hol.key, n] = future.result()
                progress.step(f"{hol.key} {m.fmt_size(size)}/{align} N={m.fmt_count(n)}")
    finally:
        progress.close()

    out_configs = []
    for ci, (size, align, ns) in enumerate(configs):
        runs = {hol.key: {n: results[ci, hol.key, n] for n in ns} for hol in chosen}
        derive(runs, size, align)
        out_configs.append(
            {
                "size": size,
                "align": align,
                "ideal": ideal_bytes(size, align),
                "ns": list(ns),
                "runs": runs,
            }
        )

    data: dict[str, Any] = {
        "benchmark": "memory",
        "unit": "bytes per live object",
        "quick": args.quick,
        "max_gb": args.max_gb,
        "environment": {
            **h.environment(["kmemcache", "numpy", "pyfftw"]),
            "clock": None,  # nothing is timed here
        },
        "configs": out_configs,
        "layout": layout_check(),
        "targets": evaluate_targets(out_configs),
    }
    text = render(data)
    if args.json:
        # JSON keys are strings: N as a string key, records unchanged
        for cfg in data["configs"]:
            cfg["runs"] = {k: {str(n): r for n, r in v.items()} for k, v in cfg["runs"].items()}
        h.write_json(args.json, data)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
