"""Dask: kmemcache objects and arrays between workers, and arrays that land aligned.

Nothing needs registering for the sending side. A ``kmemcache.Object`` goes
through Dask's "pickle" serializer under protocol 5 (``kmemcache.pickling``): its
frame is a memoryview of the object itself. A NumPy array, whoever allocated it,
goes through Dask's own array serializer: its frame is a memoryview of its data.
Dask's TCP comm then writes frames of a message of 128 KiB or more as they are;
a smaller message is joined into one ``bytes`` first (Dask's choice for small
messages: one copy).

The receiving side is where alignment is lost. Dask reads a message into one
``np.empty`` buffer, the header and the first large frame together, so an array
received lands a few hundred bytes into that buffer (the header's length),
whatever NumPy allocator the worker has installed. Importing this module
replaces Dask's deserializer of ``numpy.ndarray`` by one that, once
:func:`receive_aligned` was called in the process (by the :class:`AlignedArrays`
worker plugin on every worker), gives back an array aligned to that many bytes:
the received one where it is aligned already, otherwise a copy of it into an
array of kmemcache's NEP 49 handler (one copy on the receiving side)::

    from distributed import Client
    import kmemcache.dask

    client = Client(scheduler_address)
    client.register_plugin(kmemcache.dask.AlignedArrays(64))

A received ``kmemcache.Object`` is aligned already: it is unpickled into a cache
registered with ``kmemcache.pickling`` or a kmalloc object of its alignment.
Arrays inside another pickled object (a list pickled whole, a custom class) are
NumPy's own pickles and not covered; a task returning an array, or a list, tuple
or dict of arrays, is.

Needs ``distributed`` (``pip install 'kmemcache[dask]'``) and NumPy 1.22 or later.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from distributed import WorkerPlugin
from distributed.protocol.serialize import dask_deserialize as _dask_deserialize

from . import numpy as _numpy

__all__ = ["AlignedArrays", "receive_aligned", "receiving_align"]

# Dask registers its NumPy serializers lazily, when the first array is
# (de)serialized; importing the module registers them now, so that ours, made
# below, replaces Dask's instead of being replaced by it.
importlib.import_module("distributed.protocol.numpy")
_registry: Any = _dask_deserialize  # a dask.utils.Dispatch, untyped
_dask_deserialize_ndarray = _registry.dispatch(np.ndarray)

_align = 0  # the alignment received arrays get in this process; 0: as Dask leaves them


def receive_aligned(align: int = _numpy.DEFAULT_ALIGN) -> None:
    """Make every NumPy array this process receives through Dask ``align``-byte
    aligned (a power of two from 16 bytes to 2 MiB); 0 undoes it."""
    global _align
    if not isinstance(align, int) or isinstance(align, bool):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if align:
        _numpy.handler(align)  # ValueError for an alignment kmemcache has no handler for
    _align = align  # one store: a deserializer running meanwhile sees the old or the new


def receiving_align() -> int:
    """The alignment :func:`receive_aligned` set in this process, 0 if none."""
    return _align


class AlignedArrays(WorkerPlugin):
    """A worker plugin: :func:`receive_aligned` on every worker, now and on those
    that join later (``Client.register_plugin``); undone when it is removed."""

    def __init__(self, align: int = _numpy.DEFAULT_ALIGN) -> None:
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0:
            raise ValueError(f"align must be a positive int, not {align!r}")
        _numpy.handler(align)  # ValueError here, in the client, for a bad alignment
        self.align = align
        self.name = f"kmemcache-aligned-arrays-{align}"

    def setup(self, worker: Any) -> None:
        receive_aligned(self.align)

    def teardown(self, worker: Any) -> None:
        if receiving_align() == self.align:
            receive_aligned(0)


def _aligned_copy(x: np.ndarray[Any, Any], align: int) -> np.ndarray[Any, Any]:
    with _numpy.aligned(align):
        out = np.empty_like(x, order="K")
    out[...] = x
    if not x.flags.writeable:
        out.flags.writeable = False
    return out


def _deserialize_ndarray(header: dict[str, Any], frames: list[Any]) -> Any:
    x = _dask_deserialize_ndarray(header, frames)
    align = _align
    if (
        align
        and isinstance(x, np.ndarray)
        and x.size
        and x.ctypes.data % align
        and (x.flags.c_contiguous or x.flags.f_contiguous)
    ):
        return _aligned_copy(x, align)
    return x


_registry.register(np.ndarray, _deserialize_ndarray)
