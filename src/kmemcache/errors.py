"""The allocator's exceptions and the report each one carries.

Every error the engine detects arrives here as a report (cache, address,
offset, bytes found and expected, a dump of the bytes around the damage) and
becomes an exception whose message reads like SLUB's.
"""

from __future__ import annotations

from typing import Any

from ._kmemcache import (
    CacheBusyError,
    CorruptionError,
    DoubleFreeError,
    InvalidFreeError,
    PoisonError,
    RedzoneError,
    SlabError,
    StaleObjectError,
)

__all__ = [
    "CacheBusyError",
    "CorruptionError",
    "DoubleFreeError",
    "InvalidFreeError",
    "PoisonError",
    "RedzoneError",
    "SlabError",
    "SlabWarning",
    "StaleObjectError",
    "hexdump",
    "make_error",
]


class SlabWarning(RuntimeWarning):
    """An error the allocator detected, reported as a warning because the
    on-error policy is "warn" (``kmemcache.debug.set_on_error``). ``report``
    is the engine's report and ``error`` the exception that was not raised."""

    report: dict[str, Any]
    error: SlabError


def hexdump(data: bytes, start: int, mark: int | None = None) -> str:
    """Lines of 16 bytes as SLUB prints them: address, hex bytes, ASCII.

    ``mark``, an address inside the dump, is pointed at with ``^^``.
    """
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {start + off:016x}: {hexes:<47}  {text}")
        if mark is not None and start + off <= mark < start + off + 16:
            col = (mark - start - off) * 3
            lines.append("  " + " " * 18 + " " * col + "^^")
    return "\n".join(lines)


def format_report(report: dict[str, Any], extra: list[str] | None = None) -> str:
    """The message of an exception: SLUB's one-line summary, then details."""
    lines = [str(report["message"])]
    if report.get("dump"):
        bad = report["address"] + report["offset"] if report.get("found", -1) >= 0 else None
        lines.append(hexdump(report["dump"], report["dump_start"], bad))
    lines.extend(extra or [])
    return "\n".join(lines)


def make_error(
    cls: type[SlabError], report: dict[str, Any], extra: list[str] | None = None
) -> SlabError:
    """Build the exception for an engine report, with the report attached.

    ``extra`` lines (owner tracking, for one) follow the hex dump.
    """
    exc = cls(format_report(report, extra))
    exc.report = report
    exc.cache = report.get("cache")
    exc.address = report.get("address")
    exc.offset = report.get("offset")
    exc.problems = report.get("problems", 0)
    return exc
