"""What ``kmemcache top`` shows: every cache this user can see, as slabtop does.

The shared caches of the machine are read from their regions (without
attaching: ``kmemcache.shared.peek``); the private caches of running processes
from what they publish (``kmemcache.publish()``, opt-in). Each row is one cache:
its objects, the active ones, the object size, slabs, and the memory its slabs
take, which is what rows are sorted by unless asked otherwise. With
``--sites``, each publishing process that records call sites
(``kmemcache.allocinfo``) has its largest ones listed below the table.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import publishing as _publish
from . import shared as _shared
from .allocinfo import Site
from .cache import SlabStats

__all__ = [
    "SORT_KEYS",
    "ProcessSites",
    "Row",
    "process_sites",
    "render",
    "render_sites",
    "rows",
    "sort_rows",
    "to_json",
]


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


@dataclasses.dataclass(frozen=True)
class ProcessSites:
    """The call sites one publishing process records, largest first."""

    pid: int
    command: str
    sites: list[Site]


def process_sites(published: list[dict[str, Any]] | None = None) -> list[ProcessSites]:
    """The call sites of every publishing process that records them (from
    ``published``, what ``publishing.published()`` returned, else read now)."""
    out = []
    for data in _publish.published() if published is None else published:
        sites = _publish.sites_of(data)
        if sites is not None:
            out.append(ProcessSites(int(data["pid"]), str(data.get("command", "")), sites))
    return out


def _printable(text: str) -> str:
    """``text`` with anything a terminal would act on shown as ``?``: what
    another process published is untrusted."""
    return "".join(c if c.isprintable() else "?" for c in text)


def site_line(site: Site) -> str:
    """One call site as top and slabinfo print it."""
    where = f"{_printable(site.file)}:{site.line}"
    function = f" ({_printable(site.function)})" if site.function else ""
    return f"{_size(site.bytes):>10} {site.count:>8}  {where}{function}"


SITES_HEADER = f"{'BYTES':>10} {'OBJS':>8}  CALL SITE"


def render_sites(found: list[ProcessSites], limit: int = 10) -> str:
    """The largest ``limit`` call sites of each process, under a heading each."""
    lines: list[str] = []
    for proc in found:
        lines += ["", f" call sites of {proc.pid} ({_printable(proc.command)}):", SITES_HEADER]
        lines += [site_line(site) for site in proc.sites[:limit]]
        if not proc.sites:
            lines.append("   (no live objects allocated while recording)")
    return "\n".join(lines)


def rows(published: list[dict[str, Any]] | None = None) -> list[Row]:
    """Every cache visible now: shared regions first, then published ones (from
    ``published``, what ``publishing.published()`` returned, else read now)."""
    out = []
    for name in _shared.regions():
        try:
            stats, info = _shared.peek(name)
        except (OSError, ValueError):
            continue  # being made, removed meanwhile, or not ours to read
        out.append(Row(name, "shared", None, "", int(info["processes"]), stats))
    for data in _publish.published() if published is None else published:
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


def to_json(
    found: list[Row], now: float | None = None, sites: list[ProcessSites] | None = None
) -> dict[str, Any]:
    out = {
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
    if sites is not None:
        out["sites"] = [
            {
                "pid": p.pid,
                "command": p.command,
                "sites": [dataclasses.asdict(site) for site in p.sites],
            }
            for p in sites
        ]
    return out
