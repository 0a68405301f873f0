"""Memory groups: limits and accounting for what a block of code allocates.

A group is charged for every object a thread allocates while it is inside
``with group:`` (through a Cache, the kmalloc family, NumPy arrays under
``kmemcache.numpy``, or the C API), until the object is freed, by whichever
thread frees it. Groups nest through ``parent``: a child's charges count in
its parents, as memory cgroups do. At the soft limit every cache gives its
free memory back; at the limit the allocation fails with
:class:`MemoryLimitError`, having allocated and charged nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _kmemcache as _core

__all__ = ["GroupEvents", "MemoryGroup", "MemoryLimitError"]

MemoryLimitError = _core.MemoryLimitError


class GroupEvents(NamedTuple):
    """What happened at a group's limits since it was made."""

    #: charges that took the usage across the soft limit (from below)
    soft_limit_hits: int
    #: allocations refused at the limit (MemoryLimitError)
    limit_failures: int
    #: purges those crossings ran (every cache giving its free memory back)
    purges: int


class MemoryGroup(_core.MemoryGroup):
    """A memory group named ``name``, with an optional ``limit`` and ``soft_limit``
    in bytes (``None``: none), counting in ``parent`` (a MemoryGroup, or ``None``).

    ``with group:`` makes it the calling thread's current group until the block
    ends (blocks nest; the group before is put back). What is charged: an
    object's size in its cache (a kmalloc object: its size class; a large one:
    its pages). Objects of shared caches are not charged. ``usage`` is exact
    at every read and a limit is never passed.
    """

    @property
    def events(self) -> GroupEvents:
        """Soft-limit hits, limit failures and purges, counted since creation."""
        return GroupEvents(self._soft_limit_hits, self._limit_failures, self._purges)

    def __repr__(self) -> str:
        limits = "".join(
            f", {k}={v}" for k, v in (("limit", self.limit), ("soft_limit", self.soft_limit)) if v
        )
        return f"<MemoryGroup {self.name!r} usage={self.usage} peak={self.peak}{limits}>"
