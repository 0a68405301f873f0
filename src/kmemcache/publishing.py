"""Publishing a process's cache statistics, for ``kmemcache top`` and
``kmemcache slabinfo --pid``.

A process's private caches live in its own memory: another process can only
see them if the process writes their counters where others can read them.
That is opt-in, because it costs a thread and a file: set
``KMEMCACHE_PUBLISH=1`` in the environment (read at import), or call
``publish()``. A background thread then rewrites, about once a second, the
file ``<pid>.json`` in this user's statistics folder (``stats_dir()``, mode
0700): every live cache's counters, the process's pid and start time. The
file goes when the process exits normally; readers ignore (and remove) the
files of processes that are gone, telling a reused pid by its start time.
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
from typing import Any

from .slabinfo import all_stats

__all__ = ["DEFAULT_INTERVAL", "published", "publish", "publishing", "read", "stats_dir"]

#: Seconds between two writes of the statistics file.
DEFAULT_INTERVAL = 1.0
FORMAT = 1

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


def _own_dir(create: bool) -> str | None:
    """The statistics folder if it is a real folder of this user's (made when
    ``create``), else None: another user's folder of that name is never used."""
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
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
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

    shared_names = {c.name for c in list(shared._known.values()) if not c.destroyed}
    caches = []
    for s in all_stats():
        entry = dataclasses.asdict(s)
        entry["shared"] = s.name in shared_names
        caches.append(entry)
    return {
        "format": FORMAT,
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "command": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
        "time": time.time(),
        "caches": caches,
    }


def _path(folder: str, pid: int) -> str:
    return os.path.join(folder, f"{pid}.json")


def _write_once() -> None:
    folder = _own_dir(create=True)
    if folder is None:
        return
    data = json.dumps(_snapshot())
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, _path(folder, os.getpid()))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _remove_own() -> None:
    folder = _own_dir(create=False)
    if folder is not None:
        try:
            os.unlink(_path(folder, os.getpid()))
        except OSError:
            pass


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
            atexit.register(_remove_own)


def publishing() -> bool:
    """Whether this process publishes its statistics now."""
    return _thread is not None


def read(pid: int) -> dict[str, Any] | None:
    """What process ``pid`` published, or None (it does not publish, or it is
    gone: then its file is removed)."""
    folder = _own_dir(create=False)
    if folder is None:
        return None
    path = _path(folder, pid)
    try:
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
    except (OSError, ValueError):
        return None
    start = _start_time(pid)
    if start is None or (data.get("start") is not None and data["start"] != start):
        try:
            os.unlink(path)  # a dead process's, or a reused pid's
        except OSError:
            pass
        return None
    return data


def published() -> list[dict[str, Any]]:
    """What every living process of this user publishes, by pid."""
    folder = _own_dir(create=False)
    if folder is None:
        return []
    out = []
    for entry in sorted(os.listdir(folder)):
        stem, dot, ext = entry.partition(".")
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
