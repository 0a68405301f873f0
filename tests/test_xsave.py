"""Tests for the XSAVE probe (kmemcache.demo.xsave, kmemcache.demo._xsave) and the Arch LBR sizes.

The misaligned case runs only in child processes: in this process a
misaligned XSAVE would kill the test run, which is exactly what check()
must prevent.
"""

from __future__ import annotations

import ctypes
import struct

import pytest

from kmemcache.demo import _xsave, lbr_layout, xsave

SUPPORTED = xsave.is_supported()
needs_xsave = pytest.mark.skipif(not SUPPORTED, reason="CPU or OS without XSAVE")
needs_no_xsave = pytest.mark.skipif(SUPPORTED, reason="XSAVE is available here")

MXCSR_OFFSET = 24  # legacy region: MXCSR, then MXCSR_MASK, 4 bytes each
HEADER_OFFSET = 512
HEADER_SIZE = 64
SENTINEL = 0xA5


def aligned_buffer(size: int, offset: int = 0, fill: int = SENTINEL) -> tuple[object, object]:
    """A writable ctypes array of ``size`` bytes at 64-byte boundary + ``offset``.

    Returns (view, backing); keep ``backing`` alive while using ``view``.
    """
    backing = (ctypes.c_char * (size + 2 * 64))()
    ctypes.memset(backing, fill, len(backing))
    start = (ctypes.addressof(backing) + 63) // 64 * 64 + offset
    view = (ctypes.c_char * size).from_address(start)
    assert ctypes.addressof(view) % 64 == offset
    return view, backing


# --- what the CPU reports ---------------------------------------------------


@needs_xsave
def test_user_mask_is_x87_sse_and_maybe_avx():
    mask = _xsave.user_mask()
    assert mask & 0b011 == 0b011  # x87 and SSE are always on in 64-bit Linux
    assert mask & ~0b111 == 0


@needs_xsave
def test_area_size_follows_mask():
    expected = 832 if _xsave.user_mask() & 0b100 else 576
    assert xsave.area_size() == _xsave.area_size() == expected


@needs_no_xsave
def test_unsupported_cpu_raises_runtime_error():
    with pytest.raises(RuntimeError):
        _xsave.area_size()
    with pytest.raises(RuntimeError):
        _xsave.user_mask()
    with pytest.raises(RuntimeError):
        _xsave.roundtrip(bytearray(4096))


# --- bad inputs ---------------------------------------------------------------


@needs_xsave
def test_short_buffer_is_value_error():
    buf, _keep = aligned_buffer(xsave.area_size() - 1)
    with pytest.raises(ValueError, match="XSAVE needs"):
        _xsave.roundtrip(buf)
    with pytest.raises(ValueError, match="XSAVE needs"):
        xsave.check(buf)
    assert bytes(buf) == bytes([SENTINEL]) * len(buf)  # nothing was written


@needs_xsave
def test_read_only_bytes_is_buffer_error():
    data = bytes(4096)
    with pytest.raises(BufferError):
        _xsave.roundtrip(data)
    with pytest.raises(BufferError):
        xsave.check(data)
    with pytest.raises(BufferError):
        xsave.check(memoryview(bytearray(4096)).toreadonly())


@pytest.mark.parametrize("bad", [42, None, "x" * 4096, [0] * 4096])
def test_non_buffer_is_type_error(bad):
    with pytest.raises(TypeError):
        _xsave.roundtrip(bad)
    with pytest.raises(TypeError):
        xsave.check(bad)


@needs_xsave
def test_non_contiguous_is_buffer_error():
    strided = memoryview(bytearray(8192))[::2]
    with pytest.raises(BufferError):
        _xsave.roundtrip(strided)
    with pytest.raises(BufferError):
        xsave.check(strided)


# --- addresses -----------------------------------------------------------------


def test_address_of_matches_ctypes():
    buf, _keep = aligned_buffer(1024, offset=8)
    assert xsave.address_of(buf) == ctypes.addressof(buf)
    assert xsave.address_of(memoryview(buf)[16:]) == ctypes.addressof(buf) + 16
    assert not xsave.is_aligned(buf)
    assert xsave.is_aligned(memoryview(buf)[56:])


def test_address_of_read_only_bytes():
    data = b"kmemcache" * 100
    expected = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert xsave.address_of(data) == expected


def test_address_of_releases_the_buffer():
    # A leftover export would make bytearray refuse to resize.
    data = bytearray(256)
    xsave.address_of(data)
    data.extend(b"more")
    assert len(data) == 260


def test_address_refuses_non_contiguous_buffers():
    strided = memoryview(bytearray(64))[::2]
    with pytest.raises(BufferError):
        _xsave.address(strided)
    with pytest.raises(BufferError):
        xsave.address_of(strided)
    with pytest.raises(TypeError):
        _xsave.address(12)


def test_the_area_layout_is_the_architectures():
    assert (_xsave.ALIGNMENT, _xsave.LEGACY_SIZE, _xsave.HEADER_SIZE) == (64, 512, HEADER_SIZE)
    assert xsave.XSAVE_ALIGNMENT is lbr_layout.XSAVE_ALIGNMENT


def test_is_aligned_rejects_bad_alignment():
    with pytest.raises(ValueError):
        xsave.is_aligned(bytearray(16), alignment=48)
    with pytest.raises(ValueError):
        xsave.is_aligned(bytearray(16), alignment=0)


# --- in-process round trip ------------------------------------------------------


@needs_xsave
def test_aligned_roundtrip_is_ok_and_writes_the_area():
    size = xsave.area_size()
    buf, _keep = aligned_buffer(size + 64)
    assert xsave.check(buf) == "ok"
    raw = bytes(buf)
    mxcsr, mxcsr_mask = struct.unpack_from("<II", raw, MXCSR_OFFSET)
    # Python runs with the default MXCSR controls (round to nearest, all
    # exceptions masked); the low 6 bits are sticky status flags.
    assert mxcsr & ~0x3F == 0x1F80
    assert mxcsr_mask != 0
    header = raw[HEADER_OFFSET : HEADER_OFFSET + HEADER_SIZE]
    xstate_bv = int.from_bytes(header[:8], "little")
    assert xstate_bv & ~_xsave.user_mask() == 0
    assert header[8:] == bytes(HEADER_SIZE - 8)  # XCOMP_BV and reserved stay zero
    assert raw[size:] == bytes([SENTINEL]) * 64  # nothing past the area


@needs_xsave
def test_aligned_roundtrip_accepts_bytearray_slice():
    size = xsave.area_size()
    backing = bytearray(size + 64)
    skip = -xsave.address_of(backing) % 64
    assert xsave.check(memoryview(backing)[skip : skip + size]) == "ok"


@needs_xsave
@pytest.mark.parametrize("offset", [1, 8, 16, 32, 63])
def test_check_refuses_misaligned_without_executing(offset):
    buf, _keep = aligned_buffer(xsave.area_size(), offset=offset)
    # Executing would kill this process; reaching the asserts proves it did not.
    assert xsave.check(buf) == "fault"
    assert bytes(buf) == bytes([SENTINEL]) * len(buf)


def test_unsupported_answers_skipped(monkeypatch):
    monkeypatch.setattr(xsave, "is_supported", lambda: False)
    assert xsave.check(bytearray(4096)) == "skipped"
    assert xsave.check_in_child(4096, 8) == "skipped"


# --- the fault, in a child ------------------------------------------------------


@needs_xsave
@pytest.mark.parametrize("misalign", [8, 16, 32])
def test_misaligned_xsave_faults_in_child(misalign):
    assert xsave.check_in_child(xsave.area_size(), misalign) == "fault"


@needs_xsave
def test_aligned_xsave_survives_in_child():
    # The control for the test above: same child, same code, aligned buffer.
    assert xsave.check_in_child(xsave.area_size(), 0) == "ok"


@needs_xsave
def test_child_reports_other_failures():
    with pytest.raises(ValueError):
        xsave.check_in_child(xsave.area_size() - 1, 8)
    with pytest.raises(ValueError):
        xsave.check_in_child(xsave.area_size(), 64)
    with pytest.raises(ValueError):
        xsave.check_in_child(xsave.area_size(), -1)


# --- Arch LBR sizes ---------------------------------------------------------------


def test_lbr_layout_constants():
    assert lbr_layout.LBR_ENTRIES == 32
    assert lbr_layout.TASK_CTX_OPT_SIZE == 12
    assert lbr_layout.XSAVE_LEGACY_SIZE == 512
    assert lbr_layout.XSAVE_HEADER_SIZE == 64
    assert lbr_layout.ARCH_LBR_STATE_SIZE == 808
    assert lbr_layout.TASK_CTX_ARCH_LBR_XSAVE_SIZE == 704
    assert lbr_layout.X86_LBR_CACHE_SIZE == 1512
    assert lbr_layout.X86_LBR_CACHE_ALIGN == 64 == xsave.XSAVE_ALIGNMENT
    assert lbr_layout.X86_LBR_SLUB_STRIDE == 1536


def test_lbr_sizes_match_their_parts():
    entry = ctypes.sizeof(ctypes.c_uint64 * 3)  # struct lbr_entry
    fixed = ctypes.sizeof(ctypes.c_uint64 * 5)  # struct arch_lbr_state before entries[]
    opt = ctypes.sizeof(ctypes.c_int * 3)  # struct x86_perf_task_context_opt
    assert (entry, fixed, opt) == (
        lbr_layout.LBR_ENTRY_SIZE,
        lbr_layout.ARCH_LBR_STATE_FIXED_SIZE,
        lbr_layout.TASK_CTX_OPT_SIZE,
    )
    state = fixed + lbr_layout.LBR_ENTRIES * entry
    assert lbr_layout.ARCH_LBR_STATE_SIZE == state
    # The XSAVE area starts on the first 64-byte boundary after opt ...
    assert lbr_layout.XSAVE_AREA_OFFSET == 64
    assert lbr_layout.XSAVE_AREA_OFFSET % lbr_layout.X86_LBR_CACHE_ALIGN == 0
    # ... and the context struct pads legacy + header + fixed state to 64.
    assert lbr_layout.TASK_CTX_ARCH_LBR_XSAVE_SIZE == 64 + 640
    assert lbr_layout.X86_LBR_CACHE_SIZE == lbr_layout.TASK_CTX_ARCH_LBR_XSAVE_SIZE + state
    # Everything XSAVES writes fits in the object, with the kernel's 64 bytes to spare.
    used = lbr_layout.XSAVE_AREA_OFFSET + lbr_layout.XSAVE_AREA_SIZE
    assert used == 1448
    assert lbr_layout.X86_LBR_CACHE_SIZE - used == 64


@pytest.mark.parametrize("entries", [8, 16, 24, 32, 48, 64])
def test_x86_lbr_object_size(entries):
    assert lbr_layout.x86_lbr_object_size(entries) == 704 + 40 + 24 * entries
    assert lbr_layout.arch_lbr_state_size(entries) == 40 + 24 * entries


@pytest.mark.parametrize("entries", [0, 7, 12, 72, -8])
def test_x86_lbr_object_size_rejects_impossible_depths(entries):
    with pytest.raises(ValueError):
        lbr_layout.x86_lbr_object_size(entries)


def test_x86_lbr_object_size_rejects_non_int():
    with pytest.raises(TypeError):
        lbr_layout.x86_lbr_object_size(32.0)  # type: ignore[arg-type]
