"""/proc/slabinfo for kmemcache's caches."""

from __future__ import annotations

from . import _kmemcache as _core
from .cache import SlabStats

HEADER = (
    "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
    " : tunables <limit> <batchcount> <sharedfactor>"
    " : slabdata <active_slabs> <num_slabs> <sharedavail>"
)


def all_stats() -> list[SlabStats]:
    """Every live cache's counters, oldest first."""
    return [SlabStats.from_dict(raw) for raw in _core._caches()]


def format_slabinfo(stats: list[SlabStats]) -> str:
    """Caches' counters in /proc/slabinfo's "slabinfo - version: 2.1" format.

    As SLUB does, the tunables (which SLUB has none of) print as 0.
    """
    lines = ["slabinfo - version: 2.1", HEADER]
    for s in stats:
        lines.append(
            f"{s.name:<17} {s.active_objs:6} {s.num_objs:6} {s.objsize:6} "
            f"{s.objperslab:4} {s.pagesperslab:4} : tunables {0:4} {0:4} {0:4}"
            f" : slabdata {s.active_slabs:6} {s.num_slabs:6} {0:6}"
        )
    return "\n".join(lines) + "\n"


def slabinfo() -> str:
    """Every live cache of this process in /proc/slabinfo's format (version 2.1)."""
    return format_slabinfo(all_stats())
