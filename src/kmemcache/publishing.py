"""Publishing a process's cache statistics, for ``kmemcache top`` and
``kmemcache slabinfo --pid``.

A process's private caches live in its own memory: another process can only
see them if the process writes their counters where others can read them.
That is opt-in, because it costs a thread and a file: set
``KMEMCACHE_PUBLISH=1`` in the environment (read at import), or call
``publish()``. A background thread then rewrites, about once a second, the
file ``<pid>.json`` in this user's statistics folder (``stats_dir()``, mode
0700): every live cache's counters, the process's pid and start time, and
while ``kmemcache.allocinfo`` is on, its largest call sites. The
file goes when the process exits normally; readers ignore (and remove) the
files of processes that are gone, telling a reused pid by its start time.

What is read there is untrusted: the folder must be this user's and writable
by nobody else, each file a regular file of this user's, and a file that is
not a statistics document of this format is skipped with a warning. Another
user's file is never removed.
Shared caches need none of this: their counters are in their regions, which
``kmemcache top`` reads directly.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import stat
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

from . import allocinfo
from .cache import SlabStats
from .slabinfo import all_stats

__all__ = [
    "DEFAULT_INTERVAL",
    "published",
    "publish",
    "publishing",
    "read",
    "sites_of",
    "stats_dir",
]

#: Seconds between two writes of the statistics file.
DEFAULT_INTERVAL = 1.0
FORMAT = 1
#: Call sites a process publishes (its largest), and the most a reader accepts.
SITES_PUBLISHED = 20
SITES_MAX = 100
#: The longest file or function name a reader accepts in a published site.
SITE_NAME_MAX = 4096

_lock = threading.Lock()
_thread: threading.Thread | None = None
_stop: threading.Event | None = None
_interval = DEFAULT_INTERVAL
_fork_hook = False


def stats_dir() -> str:
    """This user's statistics folder: ``$KMEMCACHE_STATS_DIR``, else
    ``/dev/shm/kmemcache-stats.<uid>`` (tmpfs, gone at reboot), else the same
    name under the temporary folder."""
    given = os.environ.get("KMEMCACHE_STATS_DIR")
    if given:
        return given
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"kmemcache-stats.{os.getuid()}")


def _untrusted(st: os.stat_result, kind: str) -> str | None:
    """Why a file or folder with status ``st`` is not to be trusted, or None."""
    if (kind == "folder" and not stat.S_ISDIR(st.st_mode)) or (
        kind == "file" and not stat.S_ISREG(st.st_mode)
    ):
        return f"not a {'folder' if kind == 'folder' else 'regular file'}"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"mode {stat.S_IMODE(st.st_mode):04o}: other users may write to it"
    return None


def _own_dir(create: bool, warn: bool = False) -> str | None:
    """The statistics folder if it is a real folder of this user's that nobody
    else may write to (made when ``create``), else None (with a warning when
    ``warn``): another user's folder of that name is never used."""
    path = stats_dir()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    why = _untrusted(st, "folder")
    if why is not None:
        if warn:
            warnings.warn(
                f"kmemcache statistics folder {path} is not used: {why}",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return path


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _snapshot() -> dict[str, Any]:
    from . import shared

    shared_names = {c.name for c in shared._attachments()}
    caches = []
    for s in all_stats():
        entry = dataclasses.asdict(s)
        entry["shared"] = s.name in shared_names
        caches.append(entry)
    data: dict[str, Any] = {
        "format": FORMAT,
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "command": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
        "time": time.time(),
        "caches": caches,
    }
    if allocinfo.is_tracing():
        try:
            sites = allocinfo.snapshot()[:SITES_PUBLISHED]
        except RuntimeError:  # stopped meanwhile by another thread
            sites = None
        if sites is not None:
            data["sites"] = [dataclasses.asdict(site) for site in sites]
    return data


def _path(folder: str, pid: int) -> str:
    return os.path.join(folder, f"{pid}.json")


def _tmp_path(folder: str, pid: int) -> str:
    """The one temporary file of process ``pid``: a name of its own, so that one
    left by a write cut short is overwritten by the next, and removed at exit or
    by the reader that finds the process gone."""
    return os.path.join(folder, f".tmp-{pid}")


def _write_once() -> None:
    folder = _own_dir(create=True)
    if folder is None:
        return
    data = json.dumps(_snapshot()).encode()
    tmp = _tmp_path(folder, os.getpid())
    done = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, _path(folder, os.getpid()))
        done = True
    finally:
        if not done:
            _unlink_quietly(tmp)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_own() -> None:
    folder = _own_dir(create=False)
    if folder is not None:
        _unlink_quietly(_path(folder, os.getpid()))
        _unlink_quietly(_tmp_path(folder, os.getpid()))


def _at_exit() -> None:
    """Stop the thread (so that no write of it starts after), then remove our files."""
    stop, thread = _stop, _thread
    if stop is not None:
        stop.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=5)
    _remove_own()


def _run(stop: threading.Event, interval: float) -> None:
    while True:
        try:
            _write_once()
        except Exception:  # a statistics file must never break the program
            pass
        if stop.wait(interval):
            return


def _start(interval: float) -> None:
    global _thread, _stop, _interval
    _interval = interval
    _stop = threading.Event()
    _thread = threading.Thread(
        target=_run, args=(_stop, interval), name="kmemcache-publish", daemon=True
    )
    _thread.start()


def _after_fork() -> None:
    global _thread
    if _thread is not None:  # the thread did not come along: one of our own
        _thread = None
        _start(_interval)


def publish(enabled: bool = True, interval: float = DEFAULT_INTERVAL) -> None:
    """Start (or with ``enabled=False`` stop) publishing this process's cache
    statistics every ``interval`` seconds (0.1 to 60) for ``kmemcache top`` and
    ``kmemcache slabinfo --pid``. A forked child publishes its own."""
    global _fork_hook, _stop, _thread
    if not 0.1 <= interval <= 60:
        raise ValueError(f"interval must be from 0.1 to 60 seconds, not {interval!r}")
    with _lock:
        if _stop is not None:
            _stop.set()
            _remove_own()
        _stop = _thread = None
        if not enabled:
            return
        _start(interval)
        if not _fork_hook:
            _fork_hook = True
            os.register_at_fork(after_in_child=_after_fork)
            atexit.register(_at_exit)


def publishing() -> bool:
    """Whether this process publishes its statistics now."""
    return _thread is not None


#: SlabStats' fields and the name of their type ("int" or "str").
_FIELDS = {
    f.name: f.type if isinstance(f.type, str) else f.type.__name__
    for f in dataclasses.fields(SlabStats)
}


def _malformed(data: Any, pid: int) -> str | None:
    """What is wrong with statistics document ``data`` of process ``pid``, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("format", FORMAT) != FORMAT:
        return f"format {data['format']!r}, not {FORMAT}"
    if type(data.get("pid")) is not int or data["pid"] != pid:
        return f"pid {data.get('pid')!r} in the file of process {pid}"
    if data.get("start") is not None and type(data["start"]) is not int:
        return "start is not an int"
    if not isinstance(data.get("command", ""), str):
        return "command is not a string"
    caches = data.get("caches")
    if not isinstance(caches, list):
        return "caches is not a list"
    for i, entry in enumerate(caches):
        if not isinstance(entry, dict):
            return f"cache {i} is not a JSON object"
        for name, kind in _FIELDS.items():
            value: Any = entry.get(name)
            if type(value).__name__ != kind or (kind == "int" and value < 0):
                return f"cache {i}: {name} is {value!r}, not a {kind} (of 0 or more)"
    return _malformed_sites(data.get("sites", []))


#: A published site's fields and their types.
_SITE_FIELDS = {"file": str, "line": int, "function": str, "bytes": int, "count": int}


def _malformed_sites(sites: Any) -> str | None:
    """What is wrong with a document's call sites (absent: none), or None."""
    if not isinstance(sites, list):
        return "sites is not a list"
    if len(sites) > SITES_MAX:
        return f"{len(sites)} sites, more than {SITES_MAX}"
    for i, entry in enumerate(sites):
        if not isinstance(entry, dict):
            return f"site {i} is not a JSON object"
        for name, kind in _SITE_FIELDS.items():
            value: Any = entry.get(name)
            if type(value) is not kind:
                return f"site {i}: {name} is {value!r:.80}, not a {kind.__name__}"
            if isinstance(value, int) and value < 0:
                return f"site {i}: {name} is {value}, below 0"
            if isinstance(value, str) and len(value) > SITE_NAME_MAX:
                return f"site {i}: {name} is longer than {SITE_NAME_MAX} characters"
    return None


def sites_of(data: dict[str, Any]) -> list[allocinfo.Site] | None:
    """The call sites in a document ``read()`` returned (so checked), or None when
    the process does not record them."""
    raw = data.get("sites")
    if raw is None:
        return None
    return [allocinfo.Site(**{k: entry[k] for k in _SITE_FIELDS}) for entry in raw]


def _open_own(path: str) -> Any:
    """Open statistics file ``path`` for reading if it is a regular file of this
    user's that nobody else may write, else None (a FIFO would block: O_NONBLOCK)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        why = _untrusted(os.fstat(fd), "file")
    except OSError:
        why = "cannot be read"
    if why is not None:
        os.close(fd)
        warnings.warn(f"kmemcache: skipping {path}: {why}", RuntimeWarning, stacklevel=3)
        return None
    return os.fdopen(fd, "rb")


def _remove_if_own(path: str) -> None:
    """Remove a dead process's file, never another user's."""
    try:
        if os.lstat(path).st_uid == os.geteuid():
            os.unlink(path)
    except OSError:
        pass


def read(pid: int) -> dict[str, Any] | None:
    """What process ``pid`` published, or None (it does not publish, or it is
    gone: then its file is removed). A malformed file is skipped with a warning."""
    folder = _own_dir(create=False, warn=True)
    if folder is None:
        return None
    path = _path(folder, pid)
    fh = _open_own(path)
    if fh is None:
        return None
    try:
        with fh:
            data = json.loads(fh.read(1 << 24))
    except (OSError, ValueError, RecursionError) as e:
        data = e
    start = _start_time(pid)
    if start is None:
        _remove_if_own(path)  # a dead process's
        _remove_if_own(_tmp_path(folder, pid))
        return None
    if isinstance(data, dict) and type(data.get("start")) is int and data["start"] != start:
        _remove_if_own(path)  # a reused pid's
        return None
    why = _malformed(data, pid) if not isinstance(data, Exception) else f"not JSON ({data})"
    if why is not None:
        warnings.warn(f"kmemcache: skipping {path}: {why}", RuntimeWarning, stacklevel=2)
        return None
    result: dict[str, Any] = data
    return result


def published() -> list[dict[str, Any]]:
    """What every living process of this user publishes, by pid."""
    folder = _own_dir(create=False, warn=True)
    if folder is None:
        return []
    out = []
    for entry in sorted(os.listdir(folder)):
        stem, dot, ext = entry.partition(".")
        if stem == "" and ext.startswith("tmp-") and ext[4:].isdigit():
            if _start_time(int(ext[4:])) is None:
                _remove_if_own(os.path.join(folder, entry))  # a write cut short by death
            continue
        if ext != "json" or not stem.isdigit():
            continue
        data = read(int(stem))
        if data is not None:
            out.append(data)
    return out


def _from_environment() -> None:
    value = os.environ.get("KMEMCACHE_PUBLISH", "").strip().lower()
    if value in ("", "0", "no", "off", "false"):
        return
    if value in ("1", "yes", "on", "true"):
        publish()
        return
    try:
        interval = float(value)
    except ValueError:
        interval = -1.0
    if 0.1 <= interval <= 60:
        publish(interval=interval)
    else:
        import warnings

        warnings.warn(
            f"KMEMCACHE_PUBLISH={value!r}: not 1, 0 or an interval of 0.1 to 60 seconds; "
            "not publishing",
            RuntimeWarning,
            stacklevel=2,
        )
