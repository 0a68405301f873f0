"""PNG plots of the benchmarks' JSON, with matplotlib (optional).

``plot_all(results, folder)`` draws what it has data for and returns the files
written; ``available()`` says whether matplotlib can be imported. Every plot reads
only the JSON, so old results can be drawn again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

#: One colour per family of allocator, the same in every plot; kmemcache in black.
FAMILIES = (
    ("kmemcache_engine", "black"),
    ("kmemcache_zalloc_drop", "#555555"),
    ("kmemcache", "black"),
    ("kmalloc", "#9467bd"),
    ("bytearray", "#ff7f0e"),
    ("numpy_slice", "#1f77b4"),
    ("numpy_zeros", "#17becf"),
    ("numpy_empty", "#17becf"),
    ("numpy_kmemcache", "#bcbd22"),
    ("numpy_c_handler", "#e377c2"),
    ("pyfftw", "#d62728"),
    ("posix_memalign", "#2ca02c"),
    ("mmap", "#8c564b"),
)


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _Colours:
    def __call__(self, key: str) -> str:
        for prefix, colour in FAMILIES:
            if key.startswith(prefix):
                return colour
        return "#7f7f7f"


def _size_label(n: float) -> str:
    n = int(n)
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _plain_log_axis(axis: Any, unit: str) -> None:
    """Label a log axis 1x, 2x, 5x (or 100 B, 200 B...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
    axis.set_minor_formatter(NullFormatter())


def _size_axis(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([_size_label(s) for s in sizes], rotation=45, fontsize=8)
    ax.minorticks_off()


def _kmemcache_style(key: str) -> dict[str, Any]:
    if key == "kmemcache_zalloc_drop":
        return {"linewidth": 1.4, "linestyle": ":", "zorder": 5}
    if key.startswith("kmemcache"):
        return {"linewidth": 2.6, "zorder": 5}
    if key.startswith("kmalloc"):
        return {"linewidth": 1.8, "linestyle": "--", "zorder": 4}
    return {"linewidth": 1.2, "alpha": 0.9}


def _finish(
    fig: Any,
    path: Path,
    title: str | None = None,
    handles: dict[str, Any] | None = None,
    bottom: float = 0.0,
) -> None:
    """Title the figure, put the legend of ``handles`` (label -> line) below the plots
    in the ``bottom`` share of the height, write the PNG and free the figure."""
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles.keys()),
            loc="lower center",
            ncol=3,
            fontsize=8,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=12)
    # room for the legend below, and above for the title over a legend's rows
    fig.tight_layout(rect=(0, bottom, 1, 0.97 if bottom else 1))
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_alloc(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    sizes, aligns = data["sizes"], data["aligns"]
    colours = _Colours()
    fig, axes = plt.subplots(2, len(aligns), figsize=(5 * len(aligns), 9), squeeze=False)
    handles: dict[str, Any] = {}
    for col, align in enumerate(aligns):
        for row, zeroed in enumerate((True, False)):
            ax = axes[row][col]
            series: dict[str, tuple[str, list[int], list[float]]] = {}
            for size in sizes:
                for rec in data["results"][str(align)][str(size)]:
                    if rec["zeroed"] is not zeroed or "median_ns" not in rec:
                        continue
                    label, xs, ys = series.setdefault(rec["key"], (rec["label"], [], []))
                    xs.append(size)
                    ys.append(rec["median_ns"])
            for key, (label, xs, ys) in series.items():
                (line,) = ax.plot(
                    xs, ys, marker="o", markersize=3, color=colours(key), **_kmemcache_style(key)
                )
                handles.setdefault(label, line)
            ax.set_yscale("log")
            _size_axis(ax, sizes)
            kind = "zeroed (zalloc+free)" if zeroed else "contents undefined (alloc+free)"
            ax.set_title(f"align {align}: {kind}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if col == 0:
                ax.set_ylabel("ns per alloc+free (median, log)")
    _finish(
        fig, path, "One buffer: alloc+free time by size (lower is faster)", handles, bottom=0.12
    )


def plot_memory(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    import holders  # labels

    configs = data["configs"]
    colours = _Colours()
    keys = [h.key for h in holders.HOLDERS if any(h.key in c["runs"] for c in configs)]
    fig = plt.figure(figsize=(5.2 * len(configs) + 3.5, 10))
    grid = fig.add_gridspec(2, len(configs) + 1, width_ratios=[1.0] * len(configs) + [0.0001])
    handles: dict[str, Any] = {}
    bar_axes = []
    for col, cfg in enumerate(configs):
        ax = fig.add_subplot(grid[0, col])
        ideal = cfg["ideal"]
        for key in keys:
            by_n = cfg["runs"].get(key, {})
            xs = [int(n) for n, r in by_n.items() if r.get("status") == "ok"]
            ys = [by_n[str(n)]["bytes_per_object"] for n in xs]
            if not xs:
                continue
            style = {k: v for k, v in _kmemcache_style(key).items() if k != "linestyle"}
            (line,) = ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                color=colours(key),
                linestyle=":" if key == "kmemcache_engine" else "-",
                **style,
            )
            handles.setdefault(holders.holder(key).label, line)
        floor = ax.axhline(ideal, color="green", linestyle="--", linewidth=1)
        handles.setdefault("ideal: size rounded up to the alignment", floor)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # below half the ideal is the interpreter reusing memory it held (small N)
        ax.set_ylim(bottom=ideal / 2)
        _plain_log_axis(ax.yaxis, " B")
        ax.set_title(f"{_size_label(cfg['size'])} at align {cfg['align']}", fontsize=10)
        ax.set_xlabel("live objects N")
        ax.grid(True, which="major", alpha=0.3)
        if col == 0:
            ax.set_ylabel("resident bytes per live object (log)")

        # the split at 1e6 (or the largest N run): memory and handle, over the ideal
        ax = fig.add_subplot(grid[1, col], sharey=bar_axes[0] if bar_axes else None)
        bar_axes.append(ax)
        ns = cfg["ns"]
        limit = 10**6 if 10**6 in ns else max(ns)
        for y, key in enumerate(keys):
            by_n = cfg["runs"].get(key, {})
            done = [n for n in ns if n <= limit and by_n.get(str(n), {}).get("status") == "ok"]
            rec = by_n[str(max(done))] if done else {}
            if rec.get("memory_bytes") is None:
                continue
            mem = rec["memory_bytes"] / ideal
            han = (rec.get("handle_bytes") or 0) / ideal
            ax.barh(y, mem, color=colours(key))
            if han > 0:
                ax.barh(y, han, left=mem, color="white", edgecolor=colours(key), hatch="///")
            n_text = f"{max(done):.0e}".replace("e+0", "e")
            ax.text(mem + han, y, f" {mem:.2f}x  N={n_text}", va="center", fontsize=7)
        ax.axvline(1.0, color="green", linestyle="--", linewidth=1)
        ax.axvline(1.05, color="green", linestyle=":", linewidth=1)
        ax.set_yticks(range(len(keys)))
        if col == 0:
            ax.set_yticklabels([holders.holder(k).label for k in keys], fontsize=8)
        else:
            ax.tick_params(labelleft=False)
        ax.set_ylim(len(keys) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.set_xlim(0.8, None)
        _plain_log_axis(ax.xaxis, "x")
        ax.set_xlabel("per object / ideal: memory (solid), handle (hatched)", fontsize=9)
        limit_text = f"{limit:.0e}".replace("e+0", "e")
        ax.set_title(f"split at N={limit_text}, or the largest N run below", fontsize=9)
        ax.grid(True, axis="x", which="major", alpha=0.3)
    _finish(
        fig,
        path,
        "Memory per live object, from RSS (lower is better; dashed: the ideal, dotted: ideal + 5%)",
        handles,
        bottom=0.08,
    )


def plot_scaling(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    levels = data["levels"]
    colours = {"kmemcache": "black", "kmalloc": "#9467bd", "bytearray": "#ff7f0e"}
    labels = {
        "kmemcache": "kmemcache Cache",
        "kmalloc": "kmemcache kzalloc",
        "bytearray": "bytearray(64)",
    }
    styles = {"lifo": "-", "random": "--", "touch": ":"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for key, res in data["results"].items():
        if res.get("status") != "ok":
            continue
        for pattern in data["patterns"]:
            rows = res[pattern]
            xs = [n for n in levels if "median_ns" in rows.get(str(n), {})]
            if not xs:
                continue
            kw = {
                "color": colours.get(key, "grey"),
                "linestyle": styles[pattern],
                "marker": "o",
                "markersize": 3,
                "linewidth": 2.2 if key == "kmemcache" else 1.3,
                "label": f"{labels.get(key, key)}: {pattern}",
            }
            axes[0].plot(xs, [rows[str(n)]["median_ns"] for n in xs], **kw)
            if pattern != "touch":
                axes[1].plot(xs, [rows[str(n)].get("ratio", float("nan")) for n in xs], **kw)
    axes[0].set_ylabel("ns per op (median, log)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel(f"cost(N) / cost(N={levels[0]:.0e})".replace("+0", ""))
    axes[1].axhline(1.3, color="green", linestyle="--", linewidth=1, label="target 1.3x")
    axes[1].set_yscale("log")
    _plain_log_axis(axes[1].yaxis, "x")
    _plain_log_axis(axes[0].yaxis, "")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("live objects N")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    axes[0].set_title("lifo: alloc+free one more; random: replace a random live one", fontsize=9)
    axes[1].set_title("growth from the smallest N (touch: the random walk alone)", fontsize=9)
    _finish(fig, path, "Scaling with live objects (flat is O(1))")


def plot_bulk_threads(bulk: dict[str, Any] | None, threads: dict[str, Any] | None, path: Path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    if bulk:
        colours = {"bulk": "black", "loop": "#1f77b4", "bytearray": "#ff7f0e"}
        for zero, style in ((True, "-"), (False, "--")):
            for kind in ("bulk", "loop", "bytearray"):
                recs = [
                    r
                    for r in bulk["results"]
                    if r["kind"] == kind and r["zero"] is zero and "ns_per_object" in r
                ]
                if not recs:
                    continue
                axes[0].plot(
                    [r["n"] for r in recs],
                    [r["ns_per_object"] for r in recs],
                    color=colours[kind],
                    linestyle=style,
                    marker="o",
                    linewidth=2 if kind == "bulk" else 1.3,
                    label=f"{kind}{'' if zero else ', not zeroed'}",
                )
        counts = bulk["counts"]
        axes[0].set_xscale("log", base=2)
        axes[0].set_xticks(counts)
        axes[0].set_xticklabels([str(n) for n in counts])
        axes[0].minorticks_off()
        axes[0].set_xlabel("objects per call")
        axes[0].set_ylabel("ns per object (alloc + free)")
        axes[0].set_title("alloc_bulk/free_bulk against a loop of single calls", fontsize=10)
        axes[0].grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
    if threads:
        recs = [r for r in threads["results"] if "median_ops_per_s" in r]
        ys = range(len(recs))
        axes[1].barh(
            ys,
            [r["median_ops_per_s"] / 1e6 for r in recs],
            xerr=[
                [(r["median_ops_per_s"] - r["min_ops_per_s"]) / 1e6 for r in recs],
                [(r["max_ops_per_s"] - r["median_ops_per_s"]) / 1e6 for r in recs],
            ],
            color=[
                "black"
                if r["allocator"] == "kmemcache"
                else "#9467bd"
                if r["allocator"] == "kmalloc"
                else "#ff7f0e"
                for r in recs
            ],
            alpha=0.85,
        )
        axes[1].set_yticks(list(ys))
        axes[1].set_yticklabels([f"{r['label']}, {r['threads']} thr." for r in recs], fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set_xlabel("million alloc+free per second, all threads (median, min-max)")
        axes[1].set_title(f"1 and 2 Python threads ({threads['gil']})", fontsize=10)
        axes[1].grid(True, axis="x", alpha=0.3)
    _finish(fig, path)


def plot_engine(data: dict[str, Any], path: Path) -> None:
    """ns per alloc+free by pattern for each allocator, one panel per size, and the
    2-thread scaling."""
    plt = _pyplot()
    sizes = data["sizes"]
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5 * len(sizes) + 4, 5))
    colours = {
        "kmemcache": "black",
        "mimalloc": "#1f77b4",
        "jemalloc": "#2ca02c",
        "glibc": "#ff7f0e",
    }
    by = {(r["size"], r["pattern"], r["allocator"]): r for r in data["results"]}
    order = ["pair"] + [f"{k} {n}" for n in (1, 10, 100, 1000) for k in ("batch", "shuffled")]
    present = {r["pattern"] for r in data["results"]}
    patterns = [p for p in [*order, "remote"] if p in present]
    allocs = [a for a in colours if any(r["allocator"] == a for r in data["results"])]
    width = 0.8 / max(len(allocs), 1)
    handles = {}
    for ax, size in zip(axes[:-1], sizes, strict=True):
        for i, a in enumerate(allocs):
            ys = [by.get((size, p, a), {}).get("median", float("nan")) for p in patterns]
            bars = ax.barh(
                [j + i * width for j in range(len(patterns))], ys, height=width, color=colours[a]
            )
            handles[a] = bars
        ax.set_yticks([j + width * (len(allocs) - 1) / 2 for j in range(len(patterns))])
        ax.set_yticklabels(patterns, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis, "ns")
        ax.set_xlabel("ns per alloc+free (remote: per object)")
        ax.set_title(f"{size} B at alignment {data['align']}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    ax = axes[-1]
    for i, a in enumerate(allocs):
        ys = []
        for size in sizes:
            one = by.get((size, "threads 1", a), {}).get("median")
            two = by.get((size, "threads 2", a), {}).get("median")
            ys.append(two / one if one and two else float("nan"))
        ax.bar([j + i * width for j in range(len(sizes))], ys, width=width, color=colours[a])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks([j + width * (len(allocs) - 1) / 2 for j in range(len(sizes))])
    ax.set_xticklabels([_size_label(s) for s in sizes])
    ax.set_ylabel("2 threads' throughput / 1 thread's")
    ax.set_title("two threads on one allocator", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    _finish(fig, path, "The engine from C against glibc, mimalloc and jemalloc", handles, 0.08)


def plot_all(results: dict[str, Any], folder: Path) -> list[Path]:
    """Draw every plot the results allow into ``folder``; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    jobs = [
        ("alloc.png", "alloc", plot_alloc),
        ("memory.png", "memory", plot_memory),
        ("scaling.png", "scaling", plot_scaling),
        ("engine.png", "engine", plot_engine),
    ]
    for name, key, draw in jobs:
        data = results.get(key)
        if data and data.get("status", "ok") == "ok" and "environment" in data:
            draw(data, folder / name)
            written.append(folder / name)
    bulk, threads = results.get("bulk"), results.get("threads")
    bulk = bulk if bulk and "environment" in bulk else None
    threads = threads if threads and "environment" in threads else None
    if bulk or threads:
        plot_bulk_threads(bulk, threads, folder / "bulk_threads.png")
        written.append(folder / "bulk_threads.png")
    return written
