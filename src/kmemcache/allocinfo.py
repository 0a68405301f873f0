"""Bytes by call site, as Linux's ``/proc/allocinfo`` counts them per source line.

While it is on, every object kmemcache hands out is recorded with the Python
line that asked for it, and forgotten when it is freed::

    from kmemcache import allocinfo

    allocinfo.start()              # or KMEMCACHE_ALLOCINFO=1 in the environment
    ...
    for site in allocinfo.snapshot()[:5]:
        print(f"{site.file}:{site.line} ({site.function}): {site.bytes} bytes")

The doors recorded: ``Cache.alloc``, ``zalloc`` and ``alloc_bulk`` (of a
``SharedCache`` too), the kmalloc family (``krealloc`` counts as the object's
allocation), and NumPy's arrays under ``kmemcache.numpy``'s handler. The call
site is the innermost Python frame outside the kmemcache package. An array
that NumPy allocates without holding the GIL is counted under the file
``"<no Python frame>"``, line 0. Zero-length objects, which all share one
address, are not counted. The counts are exact, not sampled.

While it is on, a ``MemoryLimitError``'s ``report`` also names the group's
largest call sites, and a process that publishes its statistics
(``KMEMCACHE_PUBLISH=1``) publishes its largest sites for ``kmemcache top
--sites`` and ``kmemcache slabinfo --sites``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

from . import _kmemcache as _core

__all__ = ["Site", "is_tracing", "snapshot", "start", "stop"]

#: The file of objects allocated with no Python frame to name.
NO_FRAME = "<no Python frame>"

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclasses.dataclass(frozen=True)
class Site:
    """One Python source line and the objects it allocated that are live now:
    ``file``, ``line`` and ``function`` name it, ``bytes`` and ``count`` are
    theirs (bytes as asked for, ``len()`` of each)."""

    file: str
    line: int
    function: str
    bytes: int
    count: int


def start() -> None:
    """Start recording the call site of every object allocated from now on.
    Starting again while on changes nothing."""
    _core._allocinfo_start(_PACKAGE)


def stop() -> None:
    """Stop recording and forget every record: objects allocated before do not
    count after a new ``start()``."""
    _core._allocinfo_stop()


def is_tracing() -> bool:
    """Whether call sites are being recorded."""
    return _core._allocinfo_tracing()


def snapshot() -> list[Site]:
    """One entry per source line whose objects, allocated while recording was
    on, are live now: their bytes (as asked for, ``len()``) and number, largest
    first. RuntimeError when recording is off, as ``tracemalloc.take_snapshot``."""
    if not is_tracing():
        raise RuntimeError("kmemcache.allocinfo is not on: call kmemcache.allocinfo.start()")
    merged: dict[tuple[str, int, str], list[int]] = {}
    for file, line, function, nbytes, count in _core._allocinfo_sites():
        key = (NO_FRAME, 0, "") if file is None else (file, line, function or "")
        entry = merged.setdefault(key, [0, 0])
        entry[0] += nbytes
        entry[1] += count
    sites = [Site(f, ln, fn, b, c) for (f, ln, fn), (b, c) in merged.items()]
    sites.sort(key=lambda s: (-s.bytes, -s.count, s.file, s.line))
    return sites


def _from_environment() -> None:
    value = os.environ.get("KMEMCACHE_ALLOCINFO", "").strip().lower()
    if value in ("", "0", "no", "off", "false"):
        return
    if value in ("1", "yes", "on", "true"):
        start()
        return
    warnings.warn(
        f"KMEMCACHE_ALLOCINFO={value!r}: not 1 or 0; call sites are not recorded",
        RuntimeWarning,
        stacklevel=2,
    )
