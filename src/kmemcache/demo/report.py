"""What a demo run prints: a Markdown table with its notes and claim lines, or JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from .config import FAULT_CHECK_MISALIGN
from .expectations import claims
from .lbr_layout import LBR_ENTRIES, X86_LBR_CACHE_SIZE, XSAVE_AREA_OFFSET
from .measure import markdown_table, quartiles
from .workload import DemoResult, OptionResult

#: The table's columns: heading, right-aligned, cell.
_COLUMNS: tuple[tuple[str, bool, Callable[[OptionResult], str]], ...] = (
    ("option", False, lambda o: f"{o.option} {o.label}"),
    ("asks for (B)", True, lambda o: f"{o.requested_bytes}"),
    ("memory per context (B)", True, lambda o: f"{o.bytes_per_object:.0f}"),
    ("ns per alloc+free", True, lambda o: f"{o.ns_per_alloc_free:.0f}"),
    ("vs option 3", True, lambda o: f"{o.alloc_free_vs_option_3:.2f}x"),
    ("ns per task", True, lambda o: f"{o.ns_per_task:.0f}"),
    ("misaligned", True, lambda o: f"{o.misaligned}"),
    ("XSAVE", False, lambda o: o.xsave),
    ("struct pmu (B)", True, lambda o: f"{o.pmu_struct_bytes}"),
    ("Python heap per task (B)", True, lambda o: f"{o.python_bytes_per_task:.0f}"),
)


def _table(result: DemoResult, width: int | None) -> str:
    """One row per option; or, when that is wider than ``width`` (a terminal's
    columns), one row per measure and a column per option, under a legend."""
    wide = markdown_table(
        [head for head, _, _ in _COLUMNS],
        [[cell(o) for _, _, cell in _COLUMNS] for o in result.options],
        {i for i, (_, right, _) in enumerate(_COLUMNS) if right},
    )
    if width is None or max(len(line) for line in wide.splitlines()) <= width:
        return wide
    legend = [f"option {o.option}: {o.label}" for o in result.options]
    narrow = markdown_table(
        ["option", *[f"{o.option}" for o in result.options]],
        [[head, *[cell(o) for o in result.options]] for head, _, cell in _COLUMNS[1:]],
        set(range(1, len(result.options) + 1)),
    )
    return "\n".join([*legend, "", narrow])


def format_table(result: DemoResult, width: int | None = None) -> str:
    """The results as a Markdown table with a heading and notes; the table turned
    so that its rows are the measures when it would be wider than ``width``."""
    cfg = result.config
    lines = [
        f"perf task context data: {cfg.size} bytes, {cfg.align}-byte aligned"
        + (f" (Arch LBR, {LBR_ENTRIES} entries)" if cfg.size == X86_LBR_CACHE_SIZE else ""),
        f"{cfg.live} tasks alive per option; {cfg.steps_per_round * cfg.rounds} tasks "
        f"created and exited, and as many alloc+free, per option; "
        f"medians of {cfg.rounds} rounds",
        "",
        _table(result, width),
        "",
    ]
    for o in result.options:
        if o.xsave_note:
            lines.append(f"XSAVE, option {o.option}: {o.xsave_note}")
    if result.xsave_supported:
        lines.append(
            f"XSAVE on a {result.xsave_area_size}-byte area {FAULT_CHECK_MISALIGN} bytes past "
            f"a 64-byte boundary, in a child process: {result.fault_check}"
        )
    else:
        lines.append("XSAVE: not supported on this CPU or OS; checks skipped")
    for c in claims(result):
        lines.append(f"{'PASS' if c.holds else 'MISS'}  {c.text}: {c.evidence}")
    return "\n".join(lines)


def rounded_quartiles(samples: Sequence[float]) -> list[float]:
    """[q1, median, q3] of the samples to 0.1, or [] for none."""
    return [round(x, 1) for x in quartiles(samples)] if samples else []


def option_json(option: OptionResult) -> dict[str, Any]:
    """One option's fields as JSON values, with quartiles instead of the raw samples."""
    out = {
        k: v
        for k, v in dataclasses.asdict(option).items()
        if k not in ("alloc_free_samples", "task_samples")
    }
    out["ns_per_alloc_free_quartiles"] = rounded_quartiles(option.alloc_free_samples)
    out["ns_per_task_quartiles"] = rounded_quartiles(option.task_samples)
    return out


def result_json(result: DemoResult) -> dict[str, Any]:
    """``{"options": [...], "config", "xsave", "claims", "seconds"}``."""
    return {
        "options": [option_json(o) for o in result.options],
        "config": dataclasses.asdict(result.config),
        "xsave": {
            "supported": result.xsave_supported,
            "area_size": result.xsave_area_size,
            "area_offset": XSAVE_AREA_OFFSET,
            "misaligned_by": FAULT_CHECK_MISALIGN,
            "misaligned_result": result.fault_check,
        },
        "claims": [dataclasses.asdict(c) for c in claims(result)],
        "seconds": round(result.seconds, 2),
    }


def to_json(result: DemoResult) -> str:
    """The results as JSON: ``{"options": [...], ...}``."""
    return json.dumps(result_json(result), indent=2)


__all__ = ["format_table", "option_json", "result_json", "to_json"]
