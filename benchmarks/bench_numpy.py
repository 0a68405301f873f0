"""NumPy on kmemcache: np.empty and np.zeros under the kmemcache.numpy handler.

Measures, in one run, the ns per ``np.empty(n, np.uint8)`` and ``np.zeros(n, np.uint8)``
(made and dropped) for n = 64 B, 4 KiB, 64 KiB and 1 MiB under three NEP 49
data-memory handlers, each installed once per timed loop with the same call
(``kmemcache.numpy.set_handler``): NumPy's default allocator (with its cache of small
blocks), kmemcache's handler at alignment 64, and a C handler over glibc's
``aligned_alloc`` at alignment 64 (``benchmarks/c/aligned_alloc_handler.c``, built
here: the best a user can write without kmemcache). Then, under each handler, the
share of arrays aligned to 64 among those a small workload makes: ``empty``,
``zeros``, ufunc outputs and temporaries, copies, concatenations, sorts, reductions.

Targets, reported as PASS/MISS lines (never asserted): under kmemcache's handler
every size costs no more than NumPy's default (ratio <= 1.0), costs less than the
aligned_alloc handler (ratio < 1.0), and 100% of the arrays are aligned.

    python benchmarks/bench_numpy.py                   # Markdown tables on stdout
    python benchmarks/bench_numpy.py --json out.json   # also machine-readable results
    python benchmarks/bench_numpy.py --quick           # tiny counts: checks it runs

About half a minute; needs NumPy, and a C compiler for the aligned_alloc handler.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _harness as h
import peers

from kmemcache.demo import measure as m

SIZES = (64, 4096, 65536, 1 << 20)
QUICK_SIZES = (64, 65536)
ALIGN = 64
#: (key, label); the first is every ratio's baseline.
HANDLERS = (
    ("default", "NumPy's default allocator"),
    ("kmemcache", "kmemcache.numpy handler"),
    ("aligned_alloc", "C aligned_alloc handler"),
)
FUNCS = ("empty", "zeros")


def _handler(name: str) -> Any:
    return None if name == "default" else peers.numpy_handler(name, ALIGN)


@dataclass(frozen=True)
class NumpyOp:
    """``np.<func>(n, np.uint8)`` under one handler, for ``peers.build_candidates``."""

    func: str
    handler: str
    label: str

    @property
    def key(self) -> str:
        return f"{self.func}_{self.handler}"

    @property
    def zeroed(self) -> bool:
        return self.func == "zeros"

    @property
    def baseline(self) -> str:
        return f"{self.func}_default"

    @property
    def make(self) -> Callable[[int, int], peers.Op]:
        def make(size: int, align: int) -> peers.Op:
            np = peers._require("numpy")
            new, uint8 = getattr(np, self.func), np.uint8

            def op() -> None:
                new(size, uint8)

            return peers.with_handler(op, _handler(self.handler))

        return make

    @property
    def aligned(self) -> Callable[[int, int], bool]:
        def aligned(size: int, align: int) -> bool:
            return aligned_share(self.handler, (size,))[0] == 1.0

        return aligned


OPS = tuple(NumpyOp(f, k, f"np.{f}(n) under {label}") for f in FUNCS for k, label in HANDLERS)


def workload(np: Any, n: int) -> list[Any]:
    """Arrays of n bytes or so, made the ways programs make them."""
    a = np.empty(n, np.uint8)
    z = np.zeros(max(n // 8, 1))
    two = np.ones((max(n // 64, 1), 8))
    return [
        a,
        z,
        np.sin(z),  # a ufunc output
        z * 2 + 1,  # a temporary and an output
        np.add(z, z),
        z[::2].copy(),
        np.concatenate([a, a]),
        np.sort(a),
        two.sum(axis=1),
        two.T.copy(),
        np.arange(max(n // 8, 1)),
        np.frombuffer(bytes(n), np.uint8).copy(),
    ]


def aligned_share(handler: str, sizes: Sequence[int]) -> tuple[float, int]:
    """(share of the arrays owning their data that start on a multiple of ALIGN, how
    many) among the workload's arrays for each size, made under ``handler``."""
    np = peers._require("numpy")
    knp = peers._require("kmemcache.numpy")
    previous = knp.set_handler(_handler(handler))
    try:
        arrays = [x for n in sizes for x in workload(np, n)]
    finally:
        knp.set_handler(previous)
    owning = [x for x in arrays if x.flags.owndata]
    ok = sum(x.ctypes.data % ALIGN == 0 for x in owning)
    return ok / len(owning), len(owning)


def _records(
    results: dict[int, list[dict[str, Any]]], key: str
) -> list[tuple[int, dict[str, Any]]]:
    return [(size, r) for size, recs in results.items() for r in recs if r["key"] == key]


def kmemcache_vs_c(results: dict[int, list[dict[str, Any]]]) -> dict[str, dict[int, float]]:
    """kmemcache's median / the aligned_alloc handler's, per function and size."""
    out: dict[str, dict[int, float]] = {}
    for func in FUNCS:
        for size, recs in results.items():
            by = {r["key"]: r for r in recs}
            k, c = by.get(f"{func}_kmemcache", {}), by.get(f"{func}_aligned_alloc", {})
            if "median_ns" in k and "median_ns" in c:
                out.setdefault(func, {})[size] = k["median_ns"] / c["median_ns"]
    return out


def evaluate_targets(
    results: dict[int, list[dict[str, Any]]], shares: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    targets = []
    t = h.make_target(
        "numpy.vs_default",
        "np.empty and np.zeros under kmemcache's handler cost no more than under NumPy's "
        "default allocator, at every size (highest ratio kmemcache / default)",
        1.0,
        "lower",
    )
    points = [
        (size, r["key"], r["ratio"])
        for func in FUNCS
        for size, r in _records(results, f"{func}_kmemcache")
        if "ratio" in r
    ]
    if points:
        size, key, worst = max(points, key=lambda p: p[2])
        h.judge_target(t, worst)
        t["where"] = f"np.{key.split('_')[0]}({m.fmt_size(size)})"
    else:
        h.skip_target(t, "kmemcache's handler or NumPy's default not measured")
    targets.append(t)

    t = h.make_target(
        "numpy.vs_aligned_alloc",
        "kmemcache's handler is faster than a C aligned_alloc handler, at every size "
        "(highest ratio kmemcache / aligned_alloc)",
        1.0,
        "lower",
    )
    ratios = [(f, s, r) for f, by in kmemcache_vs_c(results).items() for s, r in by.items()]
    if ratios:
        func, size, worst = max(ratios, key=lambda p: p[2])
        h.judge_target(t, worst)
        t["where"] = f"np.{func}({m.fmt_size(size)})"
    else:
        h.skip_target(t, "the aligned_alloc handler not measured")
    targets.append(t)

    t = h.make_target(
        "numpy.aligned_share",
        f"arrays aligned to {ALIGN} under kmemcache's handler, ufunc outputs included (share)",
        1.0,
        "higher",
    )
    share = shares.get("kmemcache", {})
    if "share" in share:
        h.judge_target(t, share["share"])
    else:
        h.skip_target(t, share.get("note", "not measured"))
    targets.append(t)
    return targets


def render(data: dict[str, Any]) -> str:
    sizes = data["sizes"]
    lines = [
        f"Median ns per np.empty / np.zeros of n bytes (dtype uint8), made and dropped, "
        f"{data['repeats']} repeats, the handlers taking turns, each installed once per "
        "timed loop. The first row of each table is NumPy's default allocator in ns; the "
        "others are their median / the default's (lower: faster). "
        + h.environment_sentence(data["environment"]),
    ]
    lines += h.noise_lines(data)
    ratios = kmemcache_vs_c({int(s): r for s, r in data["results"].items()})
    for func in FUNCS:
        lines += ["", f"#### np.{func}(n)", ""]
        rows = []
        for key, label in HANDLERS:
            cells = []
            for size in sizes:
                rec = next(
                    (r for r in data["results"][str(size)] if r["key"] == f"{func}_{key}"), {}
                )
                if key == "default" and "median_ns" in rec:
                    cells.append(f"{m.fmt_ns(rec['median_ns'])} ns")
                elif "ratio" in rec:
                    cells.append(m.fmt_ratio(rec["ratio"]))
                else:
                    cells.append("-")
            rows.append([label, *cells])
        by = ratios.get(func, {})
        rows.append(
            ["kmemcache / aligned_alloc", *[m.fmt_ratio(by[s]) if s in by else "-" for s in sizes]]
        )
        lines.append(
            m.markdown_table(
                ["handler", *[m.fmt_size(s) for s in sizes]], rows, set(range(1, len(sizes) + 1))
            )
        )
    lines += ["", f"Arrays aligned to {ALIGN} bytes among those the workload makes:", ""]
    share_rows = []
    for key, label in HANDLERS:
        s = data["aligned"].get(key, {})
        share_rows.append(
            [label, f"{s['share']:.0%} of {s['arrays']}" if "share" in s else s.get("note", "-")]
        )
    lines.append(m.markdown_table(["handler", "aligned"], share_rows, {1}))
    lines += [""] + [h.target_line(t) for t in data["targets"]]
    lines += h.note_lines(
        (rec for recs in data["results"].values() for rec in recs), label_failed_only=True
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--sizes",
        type=h.int_list,
        help=f"comma-separated sizes in bytes (default: {','.join(map(str, SIZES))})",
    )
    args = parser.parse_args(argv)
    repeats, number, target_ns = h.settings(args)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)

    progress = h.progress_for(args, len(sizes) + 1, "bench_numpy")
    results: dict[int, list[dict[str, Any]]] = {}
    shares: dict[str, dict[str, Any]] = {}
    try:
        for size in sizes:
            progress.step(m.fmt_size(size))
            cands = peers.build_candidates(OPS, size, ALIGN)
            h.run_round_robin(cands, repeats, number, target_ns)
            results[size] = peers.records_for(OPS, cands)
            h.release(cands)
        progress.step("aligned share")
        share_sizes = (1, 7, 64, 100, 1000, 4096, 5000, 65536, 100_000, 1 << 20)
        for key, _ in HANDLERS:
            try:
                share, count = aligned_share(key, share_sizes)
                shares[key] = {"share": share, "arrays": count}
            except peers.PeerUnavailable as exc:
                shares[key] = {"note": f"not installed: {exc}"}
    finally:
        progress.close()

    data: dict[str, Any] = {
        "benchmark": "numpy",
        "op": "np.empty / np.zeros of n bytes, made and dropped",
        "unit": "ns/op",
        "align": ALIGN,
        "sizes": sizes,
        "repeats": repeats,
        "quick": args.quick,
        "environment": h.environment(["kmemcache", "numpy"]),
        "results": {str(size): recs for size, recs in results.items()},
        "aligned": shares,
        "targets": evaluate_targets(results, shares),
        "cpu_share_min": h.min_cpu_share(r for recs in results.values() for r in recs),
    }
    return h.finish(args, data, render)


if __name__ == "__main__":
    sys.exit(main())
