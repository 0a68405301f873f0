"""Caches shared between processes: objects passed by reference.

``SharedCache`` is the C type; this module gives it what is easier said in
Python: attaching the region a reference names when this process has no
attachment of it yet (the C type finds those it has, without Python code),
the hooks that give back a process's free objects when it exits, and helpers
for the command line (``regions``, ``peek``).

Who holds an object (the rules the engine keeps, see ``csrc/engine/kmc.h``):

* the process that allocates it holds it;
* ``free()`` ends it for every process; freeing it again anywhere, with the
  same reference, is a ``DoubleFreeError``, also after the slot was reused;
* dropping the last handle of it in a process lets that process go of it;
  the object is freed when no process holds it and no pickle of it is in
  flight;
* pickling it hands out a reference that keeps it alive until a process
  unpickles it (and so becomes a holder), whoever dies meanwhile; a pickle
  that is never loaded keeps its object until it is freed or
  ``reclaim(pickled=True)`` is called;
* a process that exits or dies holds nothing once it is found dead
  (``reclaim()``, ``validate()``, the next attach, or a full region): what it
  alone held is freed then, not at exit, so that nothing it writes while
  exiting reaches another process's object.
"""

from __future__ import annotations

import atexit
import copyreg
import os
from typing import Any

from . import _kmemcache as _core
from . import cache as _cache
from . import debug as _debug
from .cache import SlabStats
from .errors import StaleObjectError

__all__ = [
    "DEFAULT_PROCESSES",
    "MAX_PROCESSES",
    "SharedCache",
    "SharedObject",
    "peek",
    "region_name",
    "regions",
    "unlink",
]

#: A cache whose objects live in a shared-memory region (the C type itself, so
#: that its methods take CPython's fast path; see its docstring).
SharedCache = _core.SharedCache
#: One object of a SharedCache: a kmemcache.Object that pickles as a reference.
SharedObject = _core.SharedObject

#: Processes attached to one shared cache at once, at most, and by default.
MAX_PROCESSES: int = _core.SHARED_MAX_PROCS
DEFAULT_PROCESSES: int = _core.SHARED_DEFAULT_PROCS

_SHM_DIR = "/dev/shm"

_hooks_installed = False


def _attachments() -> list[SharedCache]:
    """This process's live attachments (those not detached)."""
    found: list[SharedCache] = _core._shared_attachments()
    return found


def _exiting_all() -> None:
    """At exit: give back the free objects this process keeps in every shared
    cache. What it holds stays held until it is gone and found dead: its daemon
    threads and later exit handlers may still write through its handles, and an
    object let go of now could already be another process's."""
    for cache in _attachments():
        if not cache.destroyed:  # detached by an earlier one's Python code
            cache._exiting()


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_exiting_all)
    # multiprocessing's children end with os._exit(), after its own finalizers
    # but without atexit's: one of those finalizers lets go too.
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _exiting_all, exitpriority=-100)


def _register(cache: SharedCache) -> None:
    """Called by SharedCache's constructor and attach() (the C type lists the
    attachment for references itself)."""
    _debug.attach(cache)
    _install_exit_hooks()


def _lookup(name: str, nonce: int, ctor: Any = None) -> SharedCache:
    """This process's attachment of shared cache ``name`` made with ``nonce``,
    attaching it if there is none yet. An attachment made here is kept after
    this process holds nothing of it, so that a worker receiving objects one by
    one does not attach and detach for each: the most recently used few only,
    so that one that sees many short-lived regions keeps a bounded number of
    descriptors and mappings (one let go of lives on while handles of its
    objects do)."""
    cache: SharedCache | None = _core._shared_find(name, nonce)
    if cache is not None:
        return cache
    cache = SharedCache.attach(name, ctor=ctor)
    if cache.nonce != nonce:
        cache.close()
        raise StaleObjectError(
            f"shared cache {name!r} was made again since this reference was taken: "
            "the object it named is gone"
        )
    _core._shared_keep(cache)
    return cache


def _attach_pickled(name: str, nonce: int, ctor: Any) -> SharedCache:
    """Unpickle a SharedCache: the attachment this process has, or a new one."""
    return _lookup(name, nonce, ctor)


def unlink(name: str) -> None:
    """Remove the name of shared cache ``name`` (FileNotFoundError if none).

    Processes attached keep working; new attaches fail; the memory goes back
    when the last process detaches.
    """
    _core._shared_unlink(name)


def region_name(name: str) -> str:
    """The POSIX shared-memory name of shared cache ``name``:
    ``/kmemcache.<uid>.<name>``, a file of ``/dev/shm``."""
    return str(_core._shared_region_name(name))


def regions() -> list[str]:
    """The names of this user's shared caches on this machine, sorted."""
    prefix = region_name("x")[1:-1]  # "kmemcache.<uid>."
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    return sorted(e[len(prefix) :] for e in entries if e.startswith(prefix))


def peek(name: str) -> tuple[SlabStats, dict[str, Any]]:
    """Shared cache ``name``'s counters and region, read without attaching.

    Nothing is locked: what other processes are doing at that moment may show
    a count or two off.
    """
    raw, info = _core._shared_peek(name)
    return SlabStats.from_dict(raw), info


_cache._Facade.shared_lookup = staticmethod(_lookup)
# A pickler looks in copyreg's table before it looks for __reduce_ex__: the
# reference costs one lookup less there (SharedObject.__reduce__ is the same).
copyreg.pickle(SharedObject, _core._shared_reduce)
_cache._Facade.shared_attach_pickled = staticmethod(_attach_pickled)
