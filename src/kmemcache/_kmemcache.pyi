# Type stub for kmemcache._kmemcache, the C core: the Cache type and the handle type (Object), the
# exception family, the engine's constants, the kmalloc family, and the private
# helpers the package uses. Import the public names from kmemcache.

import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, SupportsIndex, final

from typing_extensions import Buffer, Self, disjoint_base

from kmemcache.cache import SlabStats
from kmemcache.debug import LiveObject, Track

# --- constants --------------------------------------------------------------------

MAX_SIZE: int
MAX_ALIGN: int
MIN_ALIGN: int
CACHE_LINE: int
PAGE_SIZE: int
FLAG_CONSISTENCY_CHECKS: int
FLAG_RED_ZONE: int
FLAG_POISON: int
FLAG_HWCACHE_ALIGN: int
FLAG_STORE_USER: int
POISON_INUSE: int
POISON_FREE: int
POISON_END: int
RED_INACTIVE: int
RED_ACTIVE: int

# --- exceptions -------------------------------------------------------------------

class SlabError(Exception):
    """Base of the errors the allocator detects. Raised by the allocator, it
    carries the engine's report and what was read from it."""

    report: dict[str, Any]  #: the engine's report: kind, message, cache, address, dump...
    cache: str | None  #: the cache's name
    address: int | None  #: the object's (or slab's) address
    offset: int | None  #: the first bad byte, from the object's start
    problems: int  #: validate(): how many problems were found
    alloc_track: Track | None  #: where the object was allocated (STORE_USER)
    free_track: Track | None  #: where it was freed (STORE_USER)
    objects: list[LiveObject]  #: CacheBusyError: the live objects

class DoubleFreeError(SlabError): ...
class InvalidFreeError(SlabError): ...
class CacheBusyError(SlabError): ...
class RedzoneError(SlabError): ...
class PoisonError(SlabError): ...
class CorruptionError(SlabError): ...

# --- types ------------------------------------------------------------------------

@disjoint_base
class Cache:
    """A slab cache of objects of one size and alignment."""

    def __init__(
        self,
        name: str,
        size: int,
        align: int = 0,
        flags: int = 0,
        ctor: Callable[[memoryview], object] | None = None,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def align(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def destroyed(self) -> bool: ...
    @property
    def ctor(self) -> Callable[[memoryview], object] | None: ...
    def alloc(self) -> Object: ...
    def zalloc(self) -> Object: ...
    def alloc_bulk(self, n: int, zero: bool = False) -> list[Object]: ...
    def free(self, obj: Object, /) -> None: ...
    def free_bulk(self, objs: Iterable[Object], /) -> None: ...
    def shrink(self) -> int: ...
    def destroy(self) -> None: ...
    def validate(self) -> int: ...
    def stats(self) -> SlabStats: ...
    def leaks(self) -> list[LiveObject]: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...
    def _stats(self) -> dict[str, Any]: ...
    def _live_addresses(self) -> list[int]: ...
    def _set_track(self, track: Callable[[str, int], object] | None, /) -> None: ...

@final
class Object(Buffer):
    """One object of a cache, or of kmalloc: writable memory with a guaranteed
    alignment, exported through the buffer protocol (format 'B')."""

    # The buffer protocol is there on every version (Buffer says so to type
    # checkers); the Python-level __buffer__ methods exist from 3.12 on.
    @property
    def address(self) -> int: ...
    @property
    def cache(self) -> Cache | None:
        """The object's cache; None for kmalloc's pages and zero-size objects."""
    @property
    def freed(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    def free(self) -> None: ...
    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...

# --- the kmalloc family -----------------------------------------------------------

def kmalloc(size: SupportsIndex, align: SupportsIndex = 0) -> Object:
    """size bytes (contents undefined) from the size classes, or pages above 8 KiB."""

def kzalloc(size: SupportsIndex, align: SupportsIndex = 0) -> Object:
    """kmalloc, zeroed."""

def kcalloc(n: SupportsIndex, size: SupportsIndex) -> Object:
    """n zeroed elements of size bytes; MemoryError when n * size overflows."""

def krealloc(obj: Object | None, new_size: SupportsIndex, align: SupportsIndex = 0) -> Object:
    """obj resized, contents kept up to the smaller size; obj intact on failure."""

def ksize(obj: Object | None, /) -> int:
    """The usable size of obj: its cache's object size, or its pages."""

def kfree(obj: Object | None, /) -> None:
    """Free an object of kmalloc or of any Cache; kfree(None) does nothing."""

# --- private helpers of the package -------------------------------------------------

def _set_facade(facade: object, /) -> None: ...
def _set_error_factory(
    factory: Callable[[type[SlabError], dict[str, Any]], BaseException | None] | None, /
) -> None: ...
def _caches() -> list[dict[str, Any]]: ...
def _stats_layout() -> tuple[tuple[tuple[str, int, int], ...], int]: ...
def _os_fail_after(n: int, /) -> None: ...
def _owner_of(address: int, /) -> tuple[str, int] | None: ...
def _flip_free_bit(address: int, /) -> None: ...
def _set_kmalloc_factory(factory: Callable[[str, int, int], Cache] | None, /) -> None: ...
def _kmalloc_classes() -> tuple[tuple[str, int, int], ...]: ...
def _kmalloc_index(size: int, align: int, /) -> int: ...
def _kmalloc_caches() -> tuple[Cache | None, ...]: ...
def _kmalloc_large_stats() -> dict[str, int]: ...
def _kmalloc_shrink() -> int: ...
