"""The demo's plot: memory, time and misaligned contexts of the four options and the reference."""

from __future__ import annotations

from .measure import quartiles
from .workload import DemoResult

_SHORT = {
    0: "kzalloc",
    1: "kzalloc+align,\nround up",
    2: "per-PMU\ncallbacks",
    3: "kmem_cache\n(the change)",
    4: "bytearray\n(reference)",
}


def plot(result: DemoResult, path: str) -> None:
    """Draw the comparison into a PNG (needs matplotlib: the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = result.options
    names = [f"{o.option}: {_SHORT.get(o.option, o.name)}" for o in opts]
    colors = ["#9e9e9e", "#e08a3c", "#c95c5c", "#3c7fc0", "#7fae5a"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    cfg = result.config

    ax = axes[0]
    bars = ax.bar(names, [o.bytes_per_object for o in opts], color=colors)
    ax.axhline(cfg.size, color="black", linestyle="--", linewidth=1)
    ax.text(-0.45, cfg.size, f"size {cfg.size}", va="bottom", ha="left", fontsize=8)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_title("memory per live context (bytes)")

    ax = axes[1]
    meds = [o.ns_per_alloc_free for o in opts]
    lows, highs = [], []
    for o in opts:
        q = quartiles(o.alloc_free_samples or [o.ns_per_alloc_free])
        lows.append(max(o.ns_per_alloc_free - q[0], 0))
        highs.append(max(q[2] - o.ns_per_alloc_free, 0))
    bars = ax.bar(names, meds, color=colors, yerr=[lows, highs], capsize=3)
    ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=6)
    ax.set_title("ns per alloc+free (median, quartiles)")

    ax = axes[2]
    bars = ax.bar(names, [o.misaligned for o in opts], color=colors)
    ax.bar_label(bars, labels=[f"{o.misaligned}\nXSAVE {o.xsave}" for o in opts], fontsize=8)
    ax.set_title(f"misaligned contexts (of {cfg.live})")
    ax.set_ylim(0, cfg.live)

    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(y=0.15)
    fig.suptitle(
        f"perf task context data, {cfg.size} bytes aligned to {cfg.align}: "
        f"{cfg.live} live tasks, {cfg.steps_per_round * cfg.rounds} created and exited per option",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["plot"]
