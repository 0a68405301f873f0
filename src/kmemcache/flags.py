"""Cache flags, with the values of Linux's SLAB_* flags (include/linux/slab.h)."""

from __future__ import annotations

import enum

from . import _kmemcache as _core


class Flags(enum.IntFlag):
    """Per-cache options. The debug ones take SLUB's letters in ``KMEMCACHE_DEBUG``."""

    #: F: verify slab metadata on every operation.
    CONSISTENCY_CHECKS = _core.FLAG_CONSISTENCY_CHECKS
    #: Z: guard bytes on both sides of every object, checked on free and by ``validate()``.
    RED_ZONE = _core.FLAG_RED_ZONE
    #: P: fill freed objects with 0x6b (last byte 0xa5) and check them on reuse.
    POISON = _core.FLAG_POISON
    #: Align objects on the CPU cache line (64 bytes), as SLAB_HWCACHE_ALIGN.
    HWCACHE_ALIGN = _core.FLAG_HWCACHE_ALIGN
    #: U: remember where (Python stack), when and by which thread each object
    #: was allocated and freed.
    STORE_USER = _core.FLAG_STORE_USER


DEBUG_FLAGS = Flags.CONSISTENCY_CHECKS | Flags.RED_ZONE | Flags.POISON | Flags.STORE_USER
