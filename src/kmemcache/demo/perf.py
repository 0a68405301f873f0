"""A model of perf's per-task PMU context data, and of the ways to allocate it.

This is the part of Linux perf that the 2020 change "perf/core: Use kmem_cache
to allocate the PMU specific data" (Kan Liang, merged for Linux 5.9 as commit
217c2a633ebb, part of the Architectural LBR series) touches, rebuilt on
kmemcache's caches and kmalloc family.

What the kernel does (kernel/events/core.c, include/linux/perf_event.h)
-----------------------------------------------------------------------
* ``struct pmu`` describes one performance monitoring unit. It had
  ``task_ctx_size``, the bytes of PMU-specific data each task context needs
  (the LBR call stack state); the change adds ``struct kmem_cache
  *task_ctx_cache``. A later patch of the series ("perf/x86: Remove
  task_ctx_size") drops ``task_ctx_size``, so ``struct pmu`` keeps its size.
* ``alloc_task_ctx_data(pmu)`` returns ``kmem_cache_zalloc(pmu->task_ctx_cache)``
  when the PMU has a cache and ``kzalloc(pmu->task_ctx_size)`` otherwise;
  ``free_task_ctx_data(pmu, data)`` calls ``kmem_cache_free`` when the PMU has a
  cache and the pointer is not NULL, and ``kfree`` otherwise (``kfree(NULL)``
  does nothing). The two helpers were factored out by the patch before it
  ("perf/core: Factor out functions to allocate/free the task_ctx_data").
* Callers: ``find_get_context()`` allocates the data when an event that needs it
  (``PERF_ATTACH_TASK_DATA``, the LBR call stack) is opened on a task and
  attaches it to the task's ``perf_event_context``; ``inherit_event()`` gives a
  child its own data at fork (``perf_event_init_task()``); ``free_ctx()``, the RCU
  callback that runs once the last reference to the context is dropped (after
  ``perf_event_exit_task()``), frees it.
* arch/x86/events/intel/lbr.c creates the cache once at boot with
  ``create_lbr_kmem_cache(size, align)``, a ``kmem_cache_create("x86_lbr", size,
  align, 0, NULL)``: ``sizeof(struct x86_perf_task_context)`` with no alignment
  on Haswell and Skylake, and for Arch LBR the size and ``XSAVE_ALIGNMENT`` of
  :mod:`kmemcache.demo.lbr_layout`, because XSAVES faults on an area that is not
  64-byte aligned and kzalloc promises no such alignment.

The options the change weighed
------------------------------
Its commit message lists three ways to get an aligned buffer. All of them are
here, behind one interface (:class:`TaskCtxAllocator`), so that the same task
code runs on each and they can be measured side by side:

* :data:`PATCH`: the change itself, :func:`alloc_task_ctx_data` and
  :func:`free_task_ctx_data`. With a :class:`Pmu` that has a cache it is the
  aligned cache; with one that has none it is the plain kzalloc fallback.
* :data:`OVERALLOC`: ``kmalloc(size + alignment)`` and round the pointer up.
  Space overhead, and the original pointer has to be kept for kfree (an
  :class:`AlignedSlice` holds both), and ``struct pmu`` needs the alignment
  (:class:`OverallocPmu`).
* :data:`CALLBACKS`: allocate in PMU-specific code through function pointers in
  ``struct pmu`` (:class:`CallbackPmu`): both the generic and the PMU-specific
  structure grow, and every alloc and free takes an extra call. Here the
  PMU-specific code allocates from its own aligned cache
  (:class:`PmuPrivateAllocator`), the only way it could avoid option 1's space
  overhead, so what it adds over :data:`PATCH` is exactly the calls and fields.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, Union

from ..cache import Cache, Object
from ..kmalloc import kfree, kzalloc
from .lbr_layout import X86_LBR_CACHE_ALIGN, X86_LBR_CACHE_SIZE

#: What a task context's PMU data can be: a cache or kmalloc object, an
#: aligned window into an over-allocated one, or (the reference row) a bytearray.
TaskCtxData = Union[Object, "AlignedSlice", bytearray]


_T = TypeVar("_T")


if TYPE_CHECKING:  # a frozen dataclass, for type checkers
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def _struct(cls: type[_T]) -> type[_T]: ...

else:

    def _struct(cls: type[_T]) -> type[_T]:
        """``dataclass(frozen=True, slots=True)``: a frozen struct, one 8-byte slot a field.

        A subclass gets slots for its own fields only, as Python 3.11 and later make
        them. Python 3.10 gives it its bases' slots again, which makes every
        ``OverallocPmu`` and ``CallbackPmu`` 24 bytes larger than its fields, and the
        size of ``struct pmu`` is one of the demo's measurements.
        """
        if sys.version_info >= (3, 11):
            return dataclasses.dataclass(frozen=True, slots=True)(cls)
        made = dataclasses.dataclass(frozen=True)(cls)
        inherited = {name for base in made.__mro__[1:] for name in getattr(base, "__slots__", ())}
        own = tuple(f.name for f in dataclasses.fields(made) if f.name not in inherited)
        namespace = {
            k: v for k, v in made.__dict__.items() if k not in (*own, "__dict__", "__weakref__")
        }
        namespace["__slots__"] = own
        return type(made)(made.__name__, made.__bases__, namespace)


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


def _check_align(value: object) -> int:
    _check_size("task_ctx_align", value)
    assert isinstance(value, int)
    if value & (value - 1):
        raise ValueError(f"task_ctx_align must be a power of two, not {value}")
    return value


@_struct
class Pmu:
    """``struct pmu``, the fields the change touches.

    Args:
        name: the PMU's name ("cpu" for the x86 core PMU).
        task_ctx_size: bytes of PMU-specific data per task context.
        task_ctx_cache: the kmem_cache to allocate that data from, or None to
            fall back to ``kzalloc(task_ctx_size)``. Its object size must be
            ``task_ctx_size``.
    """

    name: str
    task_ctx_size: int
    task_ctx_cache: Cache | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError("a PMU's name must be a non-empty str")
        _check_size("task_ctx_size", self.task_ctx_size)
        cache = self.task_ctx_cache
        if cache is not None:
            if not isinstance(cache, Cache):
                raise TypeError(
                    f"task_ctx_cache must be a kmemcache.Cache or None, not {type(cache).__name__}"
                )
            if cache.destroyed:
                raise ValueError("task_ctx_cache is destroyed")
            if cache.stats().size != self.task_ctx_size:
                raise ValueError(
                    f"task_ctx_cache holds {cache.stats().size}-byte objects, "
                    f"task_ctx_size is {self.task_ctx_size}"
                )


def _check_pmu(pmu: object) -> None:
    if not isinstance(pmu, Pmu):
        raise TypeError(f"expected a kmemcache.demo.perf.Pmu, not {type(pmu).__name__}")


# --- the change ------------------------------------------------------------


def alloc_task_ctx_data(pmu: Pmu) -> Object:
    """Zeroed PMU-specific data for one task context, as Linux 5.9 allocates it.

    ``kmem_cache_zalloc(pmu->task_ctx_cache)`` when the PMU has a cache,
    ``kzalloc(pmu->task_ctx_size)`` otherwise (kernel/events/core.c). Raises
    MemoryError when the memory cannot be had (the kernel returns NULL and the
    caller fails with -ENOMEM), and TypeError when ``pmu`` is not a :class:`Pmu`.
    """
    try:
        cache = pmu.task_ctx_cache
    except AttributeError:
        _check_pmu(pmu)
        raise
    if cache is not None:
        return cache.zalloc()
    return kzalloc(pmu.task_ctx_size)


def free_task_ctx_data(pmu: Pmu, task_ctx_data: Object | None) -> None:
    """Free what :func:`alloc_task_ctx_data` returned for the same ``pmu``.

    ``kmem_cache_free(pmu->task_ctx_cache, data)`` when the PMU has a cache and
    ``data`` is not None, ``kfree(data)`` otherwise; ``None`` is accepted and
    ignored, like ``kfree(NULL)``. A double free raises
    :class:`kmemcache.DoubleFreeError`, data of another cache or PMU
    :class:`kmemcache.InvalidFreeError`, and nothing changes.
    """
    try:
        cache = pmu.task_ctx_cache
    except AttributeError:
        _check_pmu(pmu)
        raise
    if cache is not None and task_ctx_data is not None:
        cache.free(task_ctx_data)
    else:
        kfree(task_ctx_data)


def create_lbr_kmem_cache(size: int, align: int) -> Cache:
    """The "x86_lbr" cache, as arch/x86/events/intel/lbr.c creates it at boot."""
    return Cache("x86_lbr", size, align=align)


def x86_lbr_pmu(
    size: int = X86_LBR_CACHE_SIZE, align: int = X86_LBR_CACHE_ALIGN, cache: bool = True
) -> Pmu:
    """The x86 core PMU ("cpu") set up for Arch LBR call stacks.

    With ``cache`` (what ``intel_pmu_arch_lbr_init()`` does after the change) the
    PMU gets an "x86_lbr" cache of ``size``-byte objects aligned to ``align``;
    the defaults are the kernel's for 32 LBR entries (1512 bytes, 64-byte
    aligned, see :mod:`kmemcache.demo.lbr_layout`). Without, it is the PMU as it was
    before the change: ``task_ctx_size`` only, allocated by kzalloc. The caller
    owns the cache: :func:`release_pmu` destroys it.
    """
    _check_size("size", size)
    _check_align(align)
    return Pmu("cpu", size, create_lbr_kmem_cache(size, align) if cache else None)


# --- option 1: over-allocate and round up ----------------------------------


@_struct
class OverallocPmu(Pmu):
    """``struct pmu`` for option 1: it must also carry the alignment (one more field)."""

    task_ctx_align: int = X86_LBR_CACHE_ALIGN

    def __post_init__(self) -> None:
        Pmu.__post_init__(self)
        _check_align(self.task_ctx_align)
        if self.task_ctx_cache is not None:
            raise ValueError("option 1 allocates with kzalloc: task_ctx_cache must be None")


class AlignedSlice:
    """Option 1's task context data: the aligned part of an over-allocated buffer.

    ``handle`` is what ``kzalloc(size + align)`` returned, kept because kfree
    needs it (in C, one more pointer per context); ``view`` is the ``size``
    bytes that start at the first ``align`` boundary inside it, ``offset``
    bytes into the handle.
    """

    __slots__ = ("handle", "offset", "view")

    def __init__(self, handle: Object, offset: int, view: memoryview) -> None:
        self.handle = handle
        self.offset = offset
        self.view = view

    @property
    def address(self) -> int:
        """Address of the aligned part."""
        return self.handle.address + self.offset

    def __len__(self) -> int:
        return self.view.nbytes


def overalloc_alloc_task_ctx_data(pmu: OverallocPmu) -> AlignedSlice:
    """Option 1: ``kzalloc(size + align)`` and round the address up to ``align``.

    Up to ``align`` bytes at the start are wasted, and rounding the request up
    may also push it into a larger kmalloc class.
    """
    size = pmu.task_ctx_size
    align = pmu.task_ctx_align
    handle = kzalloc(size + align)
    start = -handle.address & (align - 1)
    return AlignedSlice(handle, start, memoryview(handle)[start : start + size])


def overalloc_free_task_ctx_data(pmu: OverallocPmu, task_ctx_data: AlignedSlice | None) -> None:
    """Option 1's free: drop the aligned view, then kfree the original handle."""
    if task_ctx_data is None:
        return
    task_ctx_data.view.release()
    kfree(task_ctx_data.handle)


# --- option 2: per-PMU callbacks --------------------------------------------


@_struct
class CallbackPmu(Pmu):
    """``struct pmu`` for option 2: two more function pointers, called on every alloc and free."""

    alloc_task_ctx: Callable[[Pmu], Object] | None = None
    free_task_ctx: Callable[[Pmu, Object], None] | None = None

    def __post_init__(self) -> None:
        Pmu.__post_init__(self)
        if not callable(self.alloc_task_ctx) or not callable(self.free_task_ctx):
            raise TypeError("a CallbackPmu needs callable alloc_task_ctx and free_task_ctx")


class PmuPrivateAllocator:
    """The PMU-specific side of option 2: the x86 code's own aligned cache.

    Its ``cache`` is a field the PMU-specific structure (``x86_pmu``) would
    have to grow; :meth:`alloc` and :meth:`free` are the callbacks.
    """

    __slots__ = ("cache",)

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def alloc(self, pmu: Pmu) -> Object:
        """The PMU's alloc callback: one zeroed object of its cache."""
        return self.cache.zalloc()

    def free(self, pmu: Pmu, task_ctx_data: Object) -> None:
        """The PMU's free callback."""
        self.cache.free(task_ctx_data)


def callback_pmu(size: int = X86_LBR_CACHE_SIZE, align: int = X86_LBR_CACHE_ALIGN) -> CallbackPmu:
    """An x86 "cpu" PMU for option 2, whose callbacks use a private "x86_lbr_cb" cache."""
    _check_size("size", size)
    _check_align(align)
    private = PmuPrivateAllocator(Cache("x86_lbr_cb", size, align=align))
    return CallbackPmu("cpu", size, None, private.alloc, private.free)


def callback_alloc_task_ctx_data(pmu: CallbackPmu) -> Object:
    """Option 2's generic side: call the PMU's alloc callback."""
    return pmu.alloc_task_ctx(pmu)  # type: ignore[misc]


def callback_free_task_ctx_data(pmu: CallbackPmu, task_ctx_data: Object | None) -> None:
    """Option 2's generic side: call the PMU's free callback (None is ignored)."""
    if task_ctx_data is not None:
        pmu.free_task_ctx(pmu, task_ctx_data)  # type: ignore[misc]


# --- one interface for all of them ------------------------------------------


class TaskCtxAllocator(NamedTuple):
    """A way to allocate and free task context data: the body of the two helpers."""

    name: str
    alloc: Callable[[Any], Any]  #: ``alloc(pmu) -> data``
    free: Callable[[Any, Any], None]  #: ``free(pmu, data)``; ``data`` may be None


#: The change: the PMU's cache if it has one, kzalloc otherwise.
PATCH = TaskCtxAllocator("alloc_task_ctx_data", alloc_task_ctx_data, free_task_ctx_data)
#: Option 1: over-allocate and round up (use with an :class:`OverallocPmu`).
OVERALLOC = TaskCtxAllocator(
    "overalloc_task_ctx_data", overalloc_alloc_task_ctx_data, overalloc_free_task_ctx_data
)
#: Option 2: per-PMU callbacks (use with a :class:`CallbackPmu`).
CALLBACKS = TaskCtxAllocator(
    "callback_task_ctx_data", callback_alloc_task_ctx_data, callback_free_task_ctx_data
)


def bytearray_alloc_task_ctx_data(pmu: Pmu) -> bytearray:
    """The reference: ``bytearray(task_ctx_size)``, what a Python program uses
    without kmemcache (Python's own allocator, zeroed, no alignment promise)."""
    _check_pmu(pmu)
    return bytearray(pmu.task_ctx_size)


def bytearray_free_task_ctx_data(pmu: Pmu, task_ctx_data: bytearray | None) -> None:
    """Nothing to do: the caller drops its reference, and Python frees the bytes."""
    _check_pmu(pmu)


#: The reference row: Python's own allocator (use with a PMU without a cache).
BYTEARRAY = TaskCtxAllocator(
    "bytearray_task_ctx_data", bytearray_alloc_task_ctx_data, bytearray_free_task_ctx_data
)


def task_ctx_view(task_ctx_data: TaskCtxData) -> memoryview:
    """A new writable view of the ``task_ctx_size`` bytes a task context's data holds.

    Release it (or use it in a ``with`` block) before the data is freed.
    """
    if isinstance(task_ctx_data, AlignedSlice):
        return memoryview(task_ctx_data.view)
    return memoryview(task_ctx_data)


def release_pmu(pmu: Pmu) -> None:
    """Destroy the cache a PMU made for its task context data, if any.

    Raises :class:`kmemcache.CacheBusyError` (and destroys nothing) while task
    contexts still hold its objects.
    """
    _check_pmu(pmu)
    caches = [pmu.task_ctx_cache]
    if isinstance(pmu, CallbackPmu):
        owner = getattr(pmu.alloc_task_ctx, "__self__", None)
        if isinstance(owner, PmuPrivateAllocator):
            caches.append(owner.cache)
    for cache in caches:
        if cache is not None and not cache.destroyed:
            cache.destroy()


# --- tasks -----------------------------------------------------------------


class PerfEventContext:
    """``struct perf_event_context`` for one task, reduced to the PMU data.

    ``allocator`` records how ``task_ctx_data`` was allocated, so that the
    context frees it the same way (the kernel has one way at a time).
    """

    __slots__ = ("allocator", "pmu", "task", "task_ctx_data")

    def __init__(
        self, pmu: Pmu, task: Task, task_ctx_data: Any, allocator: TaskCtxAllocator
    ) -> None:
        self.pmu = pmu
        self.task = task
        self.task_ctx_data = task_ctx_data
        self.allocator = allocator


class Task:
    """A task (``struct task_struct``), reduced to its pid and perf context."""

    __slots__ = ("perf_event_ctxp", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.perf_event_ctxp: PerfEventContext | None = None

    def __repr__(self) -> str:
        state = "with perf context" if self.perf_event_ctxp is not None else "no perf context"
        return f"<Task pid={self.pid} {state}>"


def perf_event_init_task(
    task: Task, pmu: Pmu, allocator: TaskCtxAllocator = PATCH
) -> PerfEventContext:
    """Give a new task its perf context with zeroed PMU data, as at fork.

    In the kernel, ``perf_event_init_task()`` (from ``copy_process()``) clones
    the parent's inherited events, and ``inherit_event()`` allocates the child's
    ``task_ctx_data`` with ``alloc_task_ctx_data()``. Raises ValueError if the
    task already has a context, MemoryError if the data cannot be allocated
    (the task is left without a context).
    """
    if not isinstance(task, Task):
        raise TypeError(f"expected a kmemcache.demo.perf.Task, not {type(task).__name__}")
    _check_pmu(pmu)
    if task.perf_event_ctxp is not None:
        raise ValueError(f"task {task.pid} already has a perf context")
    ctx = PerfEventContext(pmu, task, allocator.alloc(pmu), allocator)
    task.perf_event_ctxp = ctx
    return ctx


def perf_event_exit_task(task: Task) -> None:
    """Tear down a task's perf context at exit and free its PMU data.

    The kernel frees the data in ``free_ctx()`` once the last reference to the
    context goes; this model has no other references, so it frees at once.
    A task without a context is left as it is. If the free raises an
    exception the task keeps its context; if it is interrupted
    (``KeyboardInterrupt``) the task loses it, and data the free did not reach
    is freed when its last reference goes.
    """
    ctx = task.perf_event_ctxp
    if ctx is None:
        return
    data = ctx.task_ctx_data
    # Forget the data before freeing it: an interrupt raised as the free
    # returns (Ctrl-C) must not leave freed data for a later exit to free again.
    ctx.task_ctx_data = None
    task.perf_event_ctxp = None
    try:
        ctx.allocator.free(ctx.pmu, data)
    except Exception:
        # the free refused (a view pins the data, another PMU's data) and
        # changed nothing: the task keeps its context
        ctx.task_ctx_data = data
        task.perf_event_ctxp = ctx
        raise


def fork_task(pid: int, pmu: Pmu, allocator: TaskCtxAllocator = PATCH) -> Task:
    """A new :class:`Task` with its perf context (``perf_event_init_task``)."""
    task = Task(pid)
    perf_event_init_task(task, pmu, allocator)
    return task


__all__ = [
    "BYTEARRAY",
    "CALLBACKS",
    "OVERALLOC",
    "PATCH",
    "AlignedSlice",
    "CallbackPmu",
    "OverallocPmu",
    "PerfEventContext",
    "Pmu",
    "PmuPrivateAllocator",
    "Task",
    "TaskCtxAllocator",
    "TaskCtxData",
    "alloc_task_ctx_data",
    "bytearray_alloc_task_ctx_data",
    "bytearray_free_task_ctx_data",
    "callback_alloc_task_ctx_data",
    "callback_free_task_ctx_data",
    "callback_pmu",
    "create_lbr_kmem_cache",
    "fork_task",
    "free_task_ctx_data",
    "overalloc_alloc_task_ctx_data",
    "overalloc_free_task_ctx_data",
    "perf_event_exit_task",
    "perf_event_init_task",
    "release_pmu",
    "task_ctx_view",
    "x86_lbr_pmu",
]
