"""What ``kmemcache top`` shows: every cache this user can see, as slabtop does.

The shared caches of the machine are read from their regions (without
attaching: ``kmemcache.shared.peek``); the private caches of running processes
from what they publish (``kmemcache.publish()``, opt-in). Each row is one cache:
its objects, the active ones, the object size, slabs, and the memory its slabs
take, which is what rows are sorted by unless asked otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import publishing as _publish
from . import shared as _shared
from .cache import SlabStats

__all__ = ["SORT_KEYS", "Row", "render", "rows", "sort_rows", "to_json"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One cache as top shows it."""

    name: str
    where: str  #: "shared", or the pid of the process whose private cache it is
    pid: int | None  #: that pid; None for a shared cache
    command: str  #: the process's program ("" for a shared cache)
    processes: int  #: processes attached (1 for a private cache)
    stats: SlabStats

    @property
    def objects(self) -> int:
        return self.stats.num_objs

    @property
    def active(self) -> int:
        return self.stats.active_objs

    @property
    def objsize(self) -> int:
        return self.stats.objsize

    @property
    def memory(self) -> int:
        """Bytes its slabs take (committed), metadata aside."""
        return self.stats.committed_bytes


#: --sort's choices: each a key and whether the largest comes first.
SORT_KEYS: dict[str, tuple[Any, bool]] = {
    "memory": (lambda r: r.memory, True),
    "objects": (lambda r: r.objects, True),
    "active": (lambda r: r.active, True),
    "size": (lambda r: r.objsize, True),
    "name": (lambda r: r.name, False),
    "where": (lambda r: (r.pid is not None, r.pid or 0), False),
}


def _stats(raw: dict[str, Any]) -> SlabStats:
    return SlabStats.from_dict(raw)


def rows() -> list[Row]:
    """Every cache visible now: shared regions first, then published ones."""
    out = []
    for name in _shared.regions():
        try:
            stats, info = _shared.peek(name)
        except (OSError, ValueError):
            continue  # being made, removed meanwhile, or not ours to read
        out.append(Row(name, "shared", None, "", int(info["processes"]), stats))
    for data in _publish.published():
        for raw in data.get("caches", []):
            if raw.get("shared"):
                continue  # its region's row says it all
            try:
                stats = _stats(raw)
            except (KeyError, TypeError):
                continue  # another version's file
            pid = int(data["pid"])
            out.append(Row(stats.name, str(pid), pid, data.get("command", ""), 1, stats))
    return out


def sort_rows(found: list[Row], key: str = "memory") -> list[Row]:
    get, reverse = SORT_KEYS[key]
    return sorted(found, key=lambda r: (get(r), r.name), reverse=reverse)


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(found: list[Row], now: float | None = None) -> str:
    """A slabtop frame: the totals, then one line a cache."""
    objs = sum(r.objects for r in found)
    active = sum(r.active for r in found)
    slabs = sum(r.stats.num_slabs for r in found)
    active_slabs = sum(r.stats.active_slabs for r in found)
    memory = sum(r.memory for r in found)
    active_memory = sum(r.active * r.objsize for r in found)

    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.1f}%" if b else "0.0%"

    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [
        f" kmemcache top - {stamp}, {len(found)} caches "
        f"({sum(r.pid is None for r in found)} shared)",
        f" Active / Total Objects (% used)    : {active} / {objs} ({pct(active, objs)})",
        f" Active / Total Slabs (% used)      : {active_slabs} / {slabs} "
        f"({pct(active_slabs, slabs)})",
        f" Active / Total Size (% used)       : {_size(active_memory)} / {_size(memory)} "
        f"({pct(active_memory, memory)})",
        "",
        f"{'OBJS':>8} {'ACTIVE':>8} {'USE':>4} {'OBJ SIZE':>8} {'SLABS':>6} {'OBJ/SLAB':>8} "
        f"{'CACHE SIZE':>10} {'WHERE':>8} {'PROCS':>5} NAME",
    ]
    for r in found:
        use = f"{100 * r.active // r.objects}%" if r.objects else "0%"
        lines.append(
            f"{r.objects:8} {r.active:8} {use:>4} {_size(r.objsize):>8} {r.stats.num_slabs:6} "
            f"{r.stats.objperslab:8} {_size(r.memory):>10} {r.where:>8} {r.processes:5} {r.name}"
        )
    return "\n".join(lines)


def to_json(found: list[Row], now: float | None = None) -> dict[str, Any]:
    return {
        "time": time.time() if now is None else now,
        "caches": [
            {
                "name": r.name,
                "where": r.where,
                "pid": r.pid,
                "command": r.command,
                "processes": r.processes,
                "objects": r.objects,
                "active": r.active,
                "objsize": r.objsize,
                "memory": r.memory,
                "stats": dataclasses.asdict(r.stats),
            }
            for r in found
        ],
    }
