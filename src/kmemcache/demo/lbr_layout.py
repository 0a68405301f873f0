"""Sizes of Linux's "x86_lbr" kmem_cache for Architectural LBR saved by XSAVES.

This is the cache the 2020 Arch LBR series created so that every task's PMU
context data (``task_ctx_data``) holds an XSAVE area on a 64-byte boundary:
``intel_pmu_arch_lbr_init()`` in arch/x86/events/intel/lbr.c passes
``create_lbr_kmem_cache(size, XSAVE_ALIGNMENT)`` an object size of::

    sizeof(struct x86_perf_task_context_arch_lbr_xsave) + get_lbr_state_size()

where ``get_lbr_state_size()`` (same file) is
``sizeof(struct arch_lbr_state) + x86_pmu.lbr_nr * sizeof(struct lbr_entry)``
and ``lbr_nr`` is the Arch LBR depth from CPUID leaf 0x1C, always a multiple
of 8 (``fls(lbr_depth_mask) * 8``).

Object layout for 32 entries (offsets in bytes)::

     0     struct x86_perf_task_context_opt   12 bytes, then padding to 64
    64     XSAVE area, 64-byte aligned:
    64       legacy region (struct fxregs_state)           512
   576       XSAVE header (struct xstate_header)            64
   640       struct arch_lbr_state, fixed part              40
   680       32 x struct lbr_entry                          768
  1448     end of what XSAVES writes
  1512     end of the object

``sizeof(struct x86_perf_task_context_arch_lbr_xsave)`` is 704 because it
already contains the 40-byte fixed part of ``arch_lbr_state`` and pads its
state block (512 + 64 + 40 = 616 bytes) up to 640 for the 64-byte alignment;
``get_lbr_state_size()`` then adds the fixed part again. So the object is 64
bytes larger than the 1448 bytes in use. We keep the kernel's arithmetic, not
the tight figure, because the cache is created with exactly that size.

SLUB places objects ``ALIGN(size, align)`` apart (``calculate_sizes()`` in
mm/slub.c), so without debug flags each object takes 1536 bytes of a slab.

The kernel saves this state with XSAVES (supervisor component 15,
``XFEATURE_MASK_LBR``), which user space cannot execute; XSAVES, XSAVE and
XRSTOR(S) share the 64-byte alignment rule, which kmemcache.demo.xsave
demonstrates with plain XSAVE on user state.

The sizes are the same in the first merged version (Linux 5.9, where a
``u8 padding[64]`` union around ``opt`` put the XSAVE area at offset 64) and
in later kernels (where ``__attribute__((packed, aligned(XSAVE_ALIGNMENT)))``
on the state block does it).
"""

from __future__ import annotations

from .xsave import XSAVE_ALIGNMENT, XSAVE_HEADER_SIZE, XSAVE_LEGACY_SIZE

# Citations are paths in the Linux tree. The XSAVE sizes are the architecture's,
# defined once by the probe (kmemcache.demo.xsave) and equal to the kernel's:
# arch/x86/include/asm/fpu/xstate.h, #define XSAVE_ALIGNMENT 64 (used by
# intel_pmu_arch_lbr_init() in arch/x86/events/intel/lbr.c as the cache align);
# arch/x86/include/asm/fpu/types.h, struct fxregs_state (the legacy region, 512
# bytes) and struct xstate_header (u64 xfeatures, xcomp_bv, reserved[6]: 64).

# The depth this module describes (lbr_nr); Arch LBR CPUs enumerate 8..64.
LBR_ENTRIES = 32
# Deepest Arch LBR: CPUID.1CH:EAX[7:0] is a bitmap of depths 8 * (n + 1).
LBR_MAX_ENTRIES = 64

# arch/x86/include/asm/fpu/types.h, struct lbr_entry: u64 from, to, info.
LBR_ENTRY_SIZE = 3 * 8

# arch/x86/include/asm/fpu/types.h, struct arch_lbr_state (__packed): u64
# lbr_ctl, lbr_depth, ler_from, ler_to, ler_info, then the flexible entries[].
ARCH_LBR_STATE_FIXED_SIZE = 5 * 8

# arch/x86/events/perf_event.h, struct x86_perf_task_context_opt: three ints
# (lbr_callstack_users, lbr_stack_state, log_id).
TASK_CTX_OPT_SIZE = 3 * 4


def _align_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


# arch/x86/events/perf_event.h, struct x86_perf_task_context_arch_lbr_xsave:
# opt, then a union of struct xregs_state (576 bytes, aligned 64) and a
# struct {fxregs_state i387; xstate_header header; arch_lbr_state lbr;}
# aligned to XSAVE_ALIGNMENT. The union starts at the next 64-byte boundary
# and is as large as its bigger member rounded up to 64.
XSAVE_AREA_OFFSET = _align_up(TASK_CTX_OPT_SIZE, XSAVE_ALIGNMENT)  # 64
TASK_CTX_ARCH_LBR_XSAVE_SIZE = XSAVE_AREA_OFFSET + _align_up(
    XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE + ARCH_LBR_STATE_FIXED_SIZE, XSAVE_ALIGNMENT
)  # 704


def arch_lbr_state_size(entries: int) -> int:
    """Bytes of Arch LBR XSAVE state for ``entries`` LBRs.

    The kernel's ``get_lbr_state_size()`` (arch/x86/events/intel/lbr.c); it
    must equal what CPUID leaf 0xD enumerates for component 15, or the kernel
    falls back to saving the LBRs by MSR reads without XSAVES.
    """
    _check_entries(entries)
    return ARCH_LBR_STATE_FIXED_SIZE + entries * LBR_ENTRY_SIZE


def x86_lbr_object_size(entries: int) -> int:
    """Object size Linux passes to ``kmem_cache_create("x86_lbr", ...)``.

    ``sizeof(struct x86_perf_task_context_arch_lbr_xsave) +
    get_lbr_state_size()``, as ``intel_pmu_arch_lbr_init()`` computes it for
    an Arch LBR depth of ``entries`` (a multiple of 8 from 8 to 64).
    """
    return TASK_CTX_ARCH_LBR_XSAVE_SIZE + arch_lbr_state_size(entries)


def _check_entries(entries: int) -> None:
    if not isinstance(entries, int) or isinstance(entries, bool):
        raise TypeError(f"entries must be an int, not {type(entries).__name__}")
    if not (8 <= entries <= LBR_MAX_ENTRIES and entries % 8 == 0):
        raise ValueError(f"Arch LBR depth is a multiple of 8 from 8 to 64, not {entries}")


ARCH_LBR_STATE_SIZE = arch_lbr_state_size(LBR_ENTRIES)  # 808
X86_LBR_CACHE_SIZE = x86_lbr_object_size(LBR_ENTRIES)  # 1512
# intel_pmu_arch_lbr_init(): create_lbr_kmem_cache(size, XSAVE_ALIGNMENT).
X86_LBR_CACHE_ALIGN = XSAVE_ALIGNMENT
# Bytes XSAVES actually writes from XSAVE_AREA_OFFSET: legacy + header + state.
XSAVE_AREA_SIZE = XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE + ARCH_LBR_STATE_SIZE  # 1384
# mm/slub.c, calculate_sizes(): size = ALIGN(size, s->align), no debug flags.
X86_LBR_SLUB_STRIDE = _align_up(X86_LBR_CACHE_SIZE, X86_LBR_CACHE_ALIGN)  # 1536

__all__ = [
    "ARCH_LBR_STATE_FIXED_SIZE",
    "ARCH_LBR_STATE_SIZE",
    "LBR_ENTRIES",
    "LBR_ENTRY_SIZE",
    "LBR_MAX_ENTRIES",
    "TASK_CTX_ARCH_LBR_XSAVE_SIZE",
    "TASK_CTX_OPT_SIZE",
    "X86_LBR_CACHE_ALIGN",
    "X86_LBR_CACHE_SIZE",
    "X86_LBR_SLUB_STRIDE",
    "XSAVE_ALIGNMENT",
    "XSAVE_AREA_OFFSET",
    "XSAVE_AREA_SIZE",
    "XSAVE_HEADER_SIZE",
    "XSAVE_LEGACY_SIZE",
    "arch_lbr_state_size",
    "x86_lbr_object_size",
]
