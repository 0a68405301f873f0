"""NumPy arrays allocated by kmemcache: aligned, and checked by KMEMCACHE_DEBUG.

A NEP 49 data-memory handler (NumPy >= 1.22) in C, on the kmalloc family: while it
is NumPy's current handler, the data of every array NumPy allocates (``np.empty``,
``np.zeros``, ufunc outputs, temporaries, ``resize``) comes from kmemcache's
``kmalloc-*`` caches, or pages above 8 KiB, aligned to ``align`` bytes::

    import numpy as np
    import kmemcache.numpy

    with kmemcache.numpy.aligned(64):
        a = np.zeros(1000)
        b = np.sin(a) + 1          # every array made here is 64-byte aligned
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0

``handler(align=64)``
    The handler's capsule (named "mem_handler"), one per alignment: any power of
    two from 16 bytes to 2 MiB.
``install(align=64)``
    Make it the current handler; returns the previous one, for ``set_handler``.
``aligned(align=64)``
    The same as a context manager, restoring the previous handler at exit.
``set_handler(handler)``, ``get_handler()``
    NumPy's ``PyDataMem_SetHandler`` / ``GetHandler``, for any NEP 49 capsule
    (None: NumPy's default allocator).

Arrays keep the handler that allocated them: those made before stay NumPy's
and are freed by NumPy's allocator, those made while kmemcache's was current
are freed by kmemcache whenever they die. NumPy keeps the current handler in a
context variable, so it is the current thread's (and asyncio task's): a thread
started afterwards begins with NumPy's default.

The handler runs without the GIL, as NumPy calls it. ``free`` finds the object
from its address, not from the size NumPy passes; ``realloc`` moves the data
across size classes; ``calloc`` of a size served by pages takes them fresh
from the OS, or zeroed by the OS from 256 KiB, rather than writing zeros.
With ``KMEMCACHE_DEBUG=Z,kmalloc-*`` (red zones; ``FZPU`` for all checks),
a write past an array's end is reported when the array is freed (or by
``validate()`` of the class's cache), under the on-error policy of
``kmemcache.debug``; a free cannot raise, so the report is written as
unraisable (``sys.unraisablehook``) and the memory is freed.

Memory groups (``kmemcache.MemoryGroup``) charge arrays made inside ``with group:``;
when a group's limit refuses one, NumPy raises its own MemoryError, which carries
kmemcache's report as a note (``__notes__``: the group, its limit, its largest
consumers).

tracemalloc: NumPy traces every array's data itself (domain 389047), so the
handler does not trace it again in kmemcache's domain.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import _kmemcache as _core

if TYPE_CHECKING:
    from typing_extensions import CapsuleType

__all__ = ["aligned", "get_handler", "handler", "handler_align", "install", "set_handler"]

_NEEDS = "kmemcache.numpy needs NumPy 1.22 or later (NEP 49's data-memory handlers)"


def _check_numpy() -> None:
    """ImportError, saying what is missing, unless NumPy 1.22 or later imports."""
    try:
        numpy = importlib.import_module("numpy")
    except ImportError as exc:
        raise ImportError(f"{_NEEDS}, which is not installed: pip install numpy") from exc
    version = tuple(int(p) if p.isdigit() else 0 for p in numpy.__version__.split(".")[:2])
    if version < (1, 22):
        raise ImportError(f"{_NEEDS}, not {numpy.__version__}")


_check_numpy()


def _note_limit_failures() -> None:
    """Give NumPy's MemoryError a note with kmemcache's report when a memory group's
    limit refused the array: NumPy raises its own error after the handler returns
    NULL, so the note is added as NumPy makes that error."""
    numpy = importlib.import_module("numpy")
    module = "numpy._core._exceptions" if hasattr(numpy, "_core") else "numpy.core._exceptions"
    try:
        cls = importlib.import_module(module)._ArrayMemoryError
    except (ImportError, AttributeError):  # pragma: no cover - every NumPy since 1.17 has it
        return
    if getattr(cls.__init__, "_kmemcache", False):
        return
    init = cls.__init__

    def __init__(self: BaseException, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        note = _core._numpy_limit_note()
        if note is not None:
            notes = getattr(self, "__notes__", None)
            if notes is None:
                notes = []
                self.__notes__ = notes  # what add_note does, also before 3.11
            notes.append(note)

    __init__._kmemcache = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


_note_limit_failures()

#: The alignment ``handler()``, ``install()`` and ``aligned()`` use by default: the
#: cache line, and AVX-512's vector.
DEFAULT_ALIGN = 64


def handler(align: int = DEFAULT_ALIGN) -> CapsuleType:
    """kmemcache's NEP 49 handler for arrays aligned to ``align`` bytes (a power of two
    from 16 to 2 MiB); the same capsule every time for one alignment."""
    return _core._numpy_handler(align)


def set_handler(new: CapsuleType | None) -> CapsuleType:
    """Make ``new`` (a "mem_handler" capsule; None: NumPy's default) NumPy's current
    data-memory handler; return the previous one."""
    return _core._numpy_set_handler(new)


def get_handler() -> CapsuleType:
    """NumPy's current data-memory handler."""
    return _core._numpy_get_handler()


def handler_align(h: object) -> int:
    """The alignment of a kmemcache handler, 0 for any other object."""
    return _core._numpy_handler_align(h)


def install(align: int = DEFAULT_ALIGN) -> CapsuleType:
    """Make kmemcache's handler for ``align`` the current one; return the previous."""
    return set_handler(handler(align))


@contextmanager
def aligned(align: int = DEFAULT_ALIGN) -> Iterator[CapsuleType]:
    """Within the block, NumPy allocates through kmemcache, aligned to ``align``; the
    previous handler is back at exit. Yields the handler."""
    new = handler(align)
    previous = set_handler(new)
    try:
        yield new
    finally:
        set_handler(previous)
