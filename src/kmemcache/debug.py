"""slub_debug for Python: which caches are debugged, who owns each object, what
happens when damage is found.

Debug options are SLUB's letters (Documentation/mm/slub.rst)::

    F  CONSISTENCY_CHECKS  check the touched slab's counters on every alloc and free
    Z  RED_ZONE            guard bytes after every object (0xcc live, 0xbb free)
    P  POISON              free objects hold 0x6b...0xa5, new ones 0x5a
    U  STORE_USER          remember where (Python stack), when and by which
                           thread each object was allocated and freed

``KMEMCACHE_DEBUG`` takes them in slub_debug's syntax, read once at import
(``set_debug`` changes them later); they apply to every cache created
afterwards, the kmalloc caches included::

    FZPU                 all caches
    ZP,task_ctx          ZP for task_ctx only; the rest as by default (off)
    FZ,cache_a,kmalloc-* a list of names; a trailing * matches a prefix
    FZ;-,hot_cache       blocks separated by ';': FZ for all but hot_cache
    ,task_ctx            no options before the list: all of them (FZPU)
    (empty)              all options for all caches, as a bare slub_debug
    -                    off

The last block without a list sets the options of every cache; a cache named
in a list takes the options of the first block that names it instead. A bad
value warns and leaves debugging off. SLUB's T, A and O are accepted and
ignored with a warning.

``KMEMCACHE_ON_ERROR`` (or ``set_on_error``) says what a detected error does:
``raise`` (the default), ``warn`` (a ``SlabWarning`` carrying the report, and
the operation goes on as SLUB does after its "FIX" line), or ``abort`` (the
report on stderr, then ``os.abort()``, to stop under a debugger).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import CacheBusyError, SlabError, SlabWarning, make_error
from .flags import DEBUG_FLAGS, Flags

if TYPE_CHECKING:
    from .cache import Cache

__all__ = [
    "POLICIES",
    "LiveObject",
    "Track",
    "debug_flags",
    "get_debug",
    "get_on_error",
    "leaks",
    "load_environment",
    "set_debug",
    "set_on_error",
]

#: What a detected error can do.
POLICIES = ("raise", "warn", "abort")

#: Python frames kept per alloc or free (SLUB keeps 16 return addresses).
TRACK_DEPTH = 8

#: Live objects listed in a "Objects remaining" report.
MAX_LISTED = 16

_LETTERS = {
    "f": Flags.CONSISTENCY_CHECKS,
    "z": Flags.RED_ZONE,
    "p": Flags.POISON,
    "u": Flags.STORE_USER,
}
_IGNORED = {"t": "trace", "a": "failslab", "o": "higher-order disable"}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# --- options ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A parsed KMEMCACHE_DEBUG value."""

    text: str | None
    everywhere: Flags  # options of caches no block names
    blocks: tuple[tuple[Flags, tuple[str, ...]], ...]  # (options, names), in order

    def flags_for(self, name: str) -> Flags:
        for flags, names in self.blocks:
            if any(_name_matches(name, pattern) for pattern in names):
                return flags
        return self.everywhere


_OFF = _Spec(None, Flags(0), ())


def _name_matches(name: str, pattern: str) -> bool:
    star = pattern.find("*")
    if star >= 0:
        return name.startswith(pattern[:star])
    return name == pattern


def _parse_options(options: str, value: str) -> Flags:
    flags = Flags(0)
    for letter in options:
        low = letter.lower()
        if low == "-":
            flags = Flags(0)
        elif low in _LETTERS:
            flags |= _LETTERS[low]
        elif low in _IGNORED:
            warnings.warn(
                f"KMEMCACHE_DEBUG={value!r}: option {letter!r} ({_IGNORED[low]}) "
                "is not supported by kmemcache; ignored",
                RuntimeWarning,
                stacklevel=4,
            )
        else:
            raise ValueError(f"KMEMCACHE_DEBUG={value!r}: unknown option {letter!r}")
    return flags


def _parse(value: str) -> _Spec:
    """Parse slub_debug's syntax; ValueError on a bad value."""
    text = value.strip()
    if not text:
        return _Spec(value, DEBUG_FLAGS, ())  # a bare slub_debug: everything
    everywhere: Flags | None = None
    blocks: list[tuple[Flags, tuple[str, ...]]] = []
    parts = [part for part in text.split(";") if part]
    for part in parts or [""]:
        options, comma, names = part.partition(",")
        flags = DEBUG_FLAGS if comma and not options else _parse_options(options, value)
        if not comma:
            everywhere = flags  # the last such block wins
            continue
        listed = tuple(names.split(","))
        for pattern in listed:
            if not pattern or "*" in pattern[:-1]:
                raise ValueError(
                    f"KMEMCACHE_DEBUG={value!r}: bad cache name {pattern!r} "
                    "(names are separated by single commas; '*' may only end one)"
                )
        blocks.append((flags, listed))
    return _Spec(value, everywhere if everywhere is not None else Flags(0), tuple(blocks))


_spec: _Spec = _OFF
_policy: str = "raise"


def set_debug(value: str | None) -> str | None:
    """Set the debug options of caches created from now on.

    ``value`` is in ``KMEMCACHE_DEBUG``'s syntax (see the module's doc), or
    None for no debugging. Raises ValueError on a bad value, changing nothing.
    Returns the previous value, so that ``set_debug(previous)`` restores it.
    """
    global _spec
    new = _OFF if value is None else _parse(value)
    old, _spec = _spec.text, new
    return old


def get_debug() -> str | None:
    """The current debug options, as given, or None."""
    return _spec.text


def debug_flags(name: str) -> Flags:
    """The debug options a cache called ``name`` gets when created now."""
    return _spec.flags_for(name)


def set_on_error(policy: str) -> str:
    """Choose what a detected error does: "raise", "warn" or "abort".

    Returns the previous policy. ValueError for anything else.
    """
    global _policy
    if policy not in POLICIES:
        raise ValueError(f"on-error policy must be one of {', '.join(POLICIES)}: {policy!r}")
    old, _policy = _policy, policy
    return old


def get_on_error() -> str:
    """The current on-error policy."""
    return _policy


def load_environment() -> None:
    """(Re-)read ``KMEMCACHE_DEBUG`` and ``KMEMCACHE_ON_ERROR``.

    Done once at import. A bad value warns (RuntimeWarning) and leaves that
    setting at its default (no debugging; raise), as mimalloc treats its
    options. An unset variable means the default.
    """
    global _spec, _policy
    value = os.environ.get("KMEMCACHE_DEBUG")
    try:
        _spec = _OFF if value is None else _parse(value)
    except ValueError as exc:
        _spec = _OFF
        warnings.warn(f"{exc}; debugging stays off", RuntimeWarning, stacklevel=2)
    policy = os.environ.get("KMEMCACHE_ON_ERROR", "raise").strip().lower() or "raise"
    if policy in POLICIES:
        _policy = policy
    else:
        _policy = "raise"
        warnings.warn(
            f"KMEMCACHE_ON_ERROR={policy!r}: not one of {', '.join(POLICIES)}; using 'raise'",
            RuntimeWarning,
            stacklevel=2,
        )


# --- owner tracking (STORE_USER) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Track:
    """Where, when and by which thread an object was allocated or freed."""

    frames: tuple[tuple[str, int, str], ...]  #: (file, line, function), innermost first
    thread_id: int
    thread_name: str
    when: float  #: time.monotonic() at the event

    @property
    def site(self) -> str:
        """``function file:line`` of the innermost frame."""
        if not self.frames:
            return "?"
        file, line, func = self.frames[0]
        return f"{func} {file}:{line}"

    def age(self, now: float | None = None) -> float:
        """Seconds since the event."""
        return (time.monotonic() if now is None else now) - self.when

    def format(self, what: str, now: float | None = None) -> list[str]:
        """SLUB's "Allocated in ... age=..." line, then the stack."""
        age_ms = max(0, round(self.age(now) * 1000))
        lines = [f"{what} in {self.site} age={age_ms}ms thread={self.thread_name}"]
        lines += [f"    {file}:{line} {func}" for file, line, func in self.frames]
        return lines


@dataclasses.dataclass(frozen=True)
class LiveObject:
    """A live object of a cache, as ``cache.leaks()`` lists it."""

    address: int
    offset: int  #: from the start of its slab (SLUB's "@offset=")
    size: int
    alloc: Track | None  #: None unless the cache has ``Flags.STORE_USER``

    def format(self, now: float | None = None) -> list[str]:
        lines = [f"Object 0x{self.address:x} @offset={self.offset}"]
        if self.alloc is not None:
            lines += ["  " + line for line in self.alloc.format("Allocated", now)]
        return lines


# A record as stored on every event, cheap to make: ((code, instruction offset),
# ...), thread id, thread name, time. It becomes a Track when read.
_Raw = tuple[tuple[tuple[Any, int], ...], int, str, float]


def _capture() -> _Raw:
    # 0: here, 1: the tracker, 2: the Python code that called the C method
    # (none when a handle dies during interpreter shutdown).
    first = sys._getframe(1).f_back
    frame = first
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # skip kmemcache's own frames (kmalloc, ...)
    if frame is None:
        frame = first
    # (code, instruction offset): the line number is found only when a report
    # needs it, as computing it here would cost more than the rest together.
    frames = []
    for _ in range(TRACK_DEPTH):
        if frame is None:
            break
        frames.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    thread = threading.current_thread()
    return (tuple(frames), thread.ident or 0, thread.name, time.monotonic())


def _line(code: types.CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line or 0
    return code.co_firstlineno


def _track(raw: _Raw | None) -> Track | None:
    if raw is None:
        return None
    frames, ident, name, when = raw
    return Track(
        tuple((code.co_filename, _line(code, lasti), code.co_name) for code, lasti in frames),
        ident,
        name,
        when,
    )


class _Tracker:
    """The per-cache STORE_USER hook: address -> [alloc record, free record]."""

    __slots__ = ("name", "records", "cache", "__weakref__")

    def __init__(self, cache: Cache) -> None:
        self.name = cache.name
        self.records: dict[int, list[_Raw | None]] = {}
        self.cache = weakref.ref(cache)

    def __call__(self, event: str, address: int) -> None:
        raw = _capture()
        if event == "alloc":
            self.records[address] = [raw, None]
        else:
            entry = self.records.get(address)
            if entry is None:
                self.records[address] = [None, raw]
            else:
                entry[1] = raw

    def tracks(self, address: int) -> tuple[Track | None, Track | None]:
        entry = self.records.get(address)
        if entry is None:
            return None, None
        return _track(entry[0]), _track(entry[1])


_caches: weakref.WeakSet[Cache] = weakref.WeakSet()
_trackers: weakref.WeakKeyDictionary[Cache, _Tracker] = weakref.WeakKeyDictionary()


def cache_flags(name: str, flags: int, has_ctor: bool = False) -> int:
    """The flags a new cache is created with: its own plus the debug options.

    POISON from the debug options is not applied to a cache with a ctor
    (poisoning freed objects would undo the ctor's work; SLUB skips it too),
    and a RuntimeWarning says so. Asked for in ``flags`` it is a ValueError,
    raised by ``Cache`` itself.
    """
    debug = _spec.flags_for(name)
    if has_ctor and debug & Flags.POISON:
        debug &= ~Flags.POISON
        warnings.warn(
            f"KMEMCACHE_DEBUG={_spec.text!r}: POISON is not applied to cache {name!r}: "
            "it has a ctor, whose work poisoning would undo",
            RuntimeWarning,
            stacklevel=3,
        )
    return int(flags) | int(debug)


def attach(cache: Cache) -> None:
    """Called by ``Cache.__init__``: register the cache for reports, and
    install the owner tracker when it has ``Flags.STORE_USER``."""
    _caches.add(cache)
    if cache.flags & Flags.STORE_USER:
        tracker = _Tracker(cache)
        _trackers[cache] = tracker
        cache._set_track(tracker)


def leaks(cache: Cache) -> list[LiveObject]:
    """Every live object of ``cache``, lowest address first, with where it was
    allocated when the cache has ``Flags.STORE_USER``."""
    tracker = _trackers.get(cache)
    slab_size = cache._stats()["slab_size"]
    out = []
    for address in cache._live_addresses():
        alloc = tracker.tracks(address)[0] if tracker is not None else None
        out.append(LiveObject(address, address & (slab_size - 1), cache.size, alloc))
    return out


# --- reports -----------------------------------------------------------------


def _live_caches(name: str) -> list[Cache]:
    return [c for c in list(_caches) if not c.destroyed and c.name == name]


def _tracker_for(name: str, address: int) -> _Tracker | None:
    """The tracker that knows ``address`` in a cache called ``name``; one of a
    live cache first (a destroyed cache's tracker may remember the address)."""
    found = [t for t in list(_trackers.values()) if t.name == name and address in t.records]
    for tracker in found:
        cache = tracker.cache()
        if cache is not None and not cache.destroyed:
            return tracker
    return found[0] if found else None


def _busy_details(report: dict[str, Any]) -> tuple[list[str], list[LiveObject]]:
    address = report.get("address") or 0
    candidates = _live_caches(report.get("cache", ""))
    if len(candidates) > 1:
        candidates = [c for c in candidates if address in c._live_addresses()]
    if not candidates:
        return [], []
    objects = leaks(candidates[0])
    now = time.monotonic()
    lines = []
    for obj in objects[:MAX_LISTED]:
        lines += obj.format(now)
    if len(objects) > MAX_LISTED:
        lines.append(f"... and {len(objects) - MAX_LISTED} more")
    return lines, objects


def _sites(report: dict[str, Any]) -> tuple[Track | None, Track | None]:
    address = report.get("address") or 0
    message = str(report.get("message", ""))
    if not address or message.startswith("Padding") or report.get("kind") == "metadata corrupted":
        return None, None  # the address is a slab's, not an object's
    tracker = _tracker_for(report.get("cache", ""), address)
    if tracker is None:
        return None, None
    return tracker.tracks(address)


def _lines(tracks: Iterable[tuple[str, Track | None]]) -> list[str]:
    now = time.monotonic()
    out: list[str] = []
    for what, track in tracks:
        if track is not None:
            out += track.format(what, now)
    return out


def report_error(cls: type[SlabError], report: dict[str, Any]) -> SlabError | None:
    """The error factory the C core calls for every error it detects.

    Builds the exception with SLUB's words, the hex dump, the owner's alloc and
    free sites (STORE_USER) or the objects left (CacheBusyError), then applies
    the on-error policy: return the exception to raise, or None to go on.
    """
    alloc = free = None
    objects: list[LiveObject] = []
    try:
        if issubclass(cls, CacheBusyError):
            extra, objects = _busy_details(report)
        else:
            alloc, free = _sites(report)
            extra = _lines((("Allocated", alloc), ("Freed", free)))
    except Exception as details_error:  # the report itself must never be lost
        extra = [f"(owner details unavailable: {type(details_error).__name__}: {details_error})"]
    exc = make_error(cls, report, extra)
    exc.alloc_track = alloc
    exc.free_track = free
    exc.objects = objects
    if _policy == "raise":
        return exc
    text = f"{cls.__name__}: {exc}"
    if _policy == "warn":
        warning = SlabWarning(text)
        warning.report = report
        warning.error = exc
        warnings.warn(warning, stacklevel=2)
        return None
    rule = "=" * 77
    sys.stderr.write(f"{rule}\nkmemcache: {text}\n{rule}\nkmemcache: aborting (on-error policy)\n")
    sys.stderr.flush()
    os.abort()


load_environment()
