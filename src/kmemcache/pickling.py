"""Objects pickled by value, and the caches that take them back in.

A ``kmemcache.Object`` pickles by value (a ``SharedObject`` by reference): under
protocol 5 its bytes travel out of band as one ``pickle.PickleBuffer`` of the
object itself, with no copy on the sending side; older protocols carry them in
band. The pickle names the object's length, alignment and cache. Unpickled, it is
an object of a cache of the same name registered here for the purpose, when that
cache has the same layout (object size and alignment), otherwise a kmalloc object
of the same length and alignment::

    import pickle
    from kmemcache import Cache, pickling

    frames = Cache("frames", 1512, align=64)
    pickling.register(frames)          # in the receiving process
    frame = pickle.loads(data, buffers=buffers)   # an object of frames

A pickle is untrusted input: its length must be its data's, its alignment a power
of two, or nothing is allocated and ``ValueError`` (``TypeError`` for the wrong
types) is raised.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from . import cache as _cache
from ._kmemcache import kmalloc
from .cache import Cache, Object

__all__ = ["register", "registered", "unregister"]

_lock = threading.Lock()
_caches: weakref.WeakValueDictionary[str, Cache] = weakref.WeakValueDictionary()


def register(cache: Cache) -> None:
    """Unpickle objects pickled from a cache named like ``cache`` into ``cache``
    (when the layout matches) instead of kmalloc. One cache per name; the
    registry holds it weakly, and a destroyed cache is passed over."""
    if not isinstance(cache, Cache):
        raise TypeError(f"register() takes a kmemcache.Cache, not {type(cache).__name__}")
    name = cache.name
    with _lock:
        held = _caches.get(name)
        if held is not None and held is not cache:
            raise ValueError(f"a cache named {name!r} is registered already")
        _caches[name] = cache


def unregister(cache: Cache) -> None:
    """Undo :func:`register`; a cache that is not registered is left as it is."""
    with _lock:
        for name, held in list(_caches.items()):  # by identity: a destroyed cache has no name
            if held is cache:
                del _caches[name]


def registered() -> list[Cache]:
    """The caches registered now, by name."""
    with _lock:
        return [_caches[name] for name in sorted(_caches)]


def _target(name: Any, length: int, align: int) -> Cache | None:
    if not isinstance(name, str):
        return None
    with _lock:
        cache = _caches.get(name)
    if cache is None or cache.destroyed:
        return None
    return cache if cache.size == length and cache.align == align else None


def _unpickle_object(data: Any, length: int, align: int, cache: Any = None) -> Object:
    """What a pickled ``kmemcache.Object`` becomes (the function its pickle names)."""
    if not isinstance(length, int) or not isinstance(align, int):
        raise TypeError("a pickled kmemcache object: length and align must be ints")
    with memoryview(data) as view:
        if view.nbytes != length:
            raise ValueError(f"a pickled kmemcache object of {length} bytes carries {view.nbytes}")
        target = _target(cache, length, align)
        obj = target.alloc() if target is not None else kmalloc(length, align=align)
        if length:
            with memoryview(obj) as dest:
                dest[:] = view.cast("B")
    return obj


_cache._Facade.unpickle_object = staticmethod(_unpickle_object)
