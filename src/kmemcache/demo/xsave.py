"""XSAVE on a buffer you hand in: why perf's task context data needs 64-byte alignment.

Linux perf saves each task's Arch LBR state into an XSAVE area inside the
task's PMU context data, and XSAVE raises #GP (SIGSEGV in user space) unless
that area starts on a 64-byte boundary; that is why the kernel moved the
allocation to a kmem_cache created with ``XSAVE_ALIGNMENT`` (see
:mod:`kmemcache.demo.lbr_layout` for the sizes).

This module runs real XSAVE/XRSTOR of the user state (x87, SSE, AVX) through
the ``kmemcache.demo._xsave`` extension:

* :func:`check` runs the round trip in this process, but only on a buffer
  that is 64-byte aligned; on any other it answers ``"fault"`` without
  executing anything, so the caller never crashes.
* :func:`check_in_child` proves the fault: a child interpreter runs the raw
  instruction on a buffer placed ``misalign`` bytes past a 64-byte boundary
  and dies from SIGSEGV.

Both answer ``"skipped"`` where XSAVE is missing (non-x86 CPUs, or an OS that
did not enable it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Literal

from . import _xsave

XSAVE_ALIGNMENT: int = _xsave.ALIGNMENT
"""XSAVE, XRSTOR and their variants raise #GP unless the area's address is a multiple of this
(64)."""
XSAVE_LEGACY_SIZE: int = _xsave.LEGACY_SIZE
"""Bytes of the area's legacy region (x87 and SSE), at its start (512)."""
XSAVE_HEADER_SIZE: int = _xsave.HEADER_SIZE
"""Bytes of the XSAVE header that follows the legacy region (64)."""

Verdict = Literal["ok", "fault", "skipped"]


def is_supported() -> bool:
    """True when the CPU has XSAVE and the OS enabled it (CPUID XSAVE and OSXSAVE)."""
    return bool(_xsave.supported())


def area_size() -> int:
    """Bytes XSAVE writes for the user state on this CPU.

    576 for x87 and SSE, 832 when the OS also enabled AVX. Raises
    RuntimeError where XSAVE is not supported.
    """
    return int(_xsave.area_size())


def address_of(buf: Any) -> int:
    """Address of the first byte of a C-contiguous buffer (writable or not).

    Raises TypeError for objects without the buffer protocol and BufferError
    for non-contiguous ones.
    """
    with memoryview(buf) as view:
        if not view.c_contiguous:
            raise BufferError("buffer is not C-contiguous")
        if view.nbytes == 0:
            # An empty buffer may point anywhere (or nowhere); report 0.
            return 0
        return _xsave.address(view)


def is_aligned(buf: Any, alignment: int = XSAVE_ALIGNMENT) -> bool:
    """True when the buffer's first byte is at a multiple of ``alignment``."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, not {alignment}")
    return address_of(buf) % alignment == 0


def check(buf: Any) -> Verdict:
    """XSAVE into ``buf`` and XRSTOR from it, in this process, if that is safe.

    Returns ``"ok"`` after a successful round trip, ``"fault"`` WITHOUT
    executing when ``buf`` does not start on a 64-byte boundary (XSAVE would
    kill the process), and ``"skipped"`` where XSAVE is not supported.

    Raises TypeError if ``buf`` has no buffer protocol, BufferError if it is
    read-only or not C-contiguous (the same errors the extension raises) and
    ValueError if it is shorter than :func:`area_size`. The first
    :func:`area_size` bytes of ``buf`` are overwritten with the saved state.
    """
    with memoryview(buf) as view:
        if not is_supported():
            return "skipped"
        if view.readonly:
            raise BufferError("XSAVE needs a writable buffer")
        if not view.c_contiguous:
            raise BufferError("XSAVE needs a C-contiguous buffer")
        need = area_size()
        if view.nbytes < need:
            raise ValueError(f"buffer holds {view.nbytes} bytes, XSAVE needs {need}")
        if address_of(view) % XSAVE_ALIGNMENT:
            return "fault"
        _xsave.roundtrip(view)
    return "ok"


# Runs in the child interpreter. It loads the extension straight from its file
# so that importing the kmemcache package (and its other extension) cannot
# fail or mask the result, and it makes sure a crash leaves no core file.
_CHILD = """\
import ctypes, faulthandler, importlib.machinery, importlib.util, resource, sys
faulthandler.disable()
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    # PR_SET_DUMPABLE = 4: no core even when core_pattern pipes to a helper.
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
except (AttributeError, OSError):
    pass
path, size, misalign = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loader = importlib.machinery.ExtensionFileLoader("kmemcache.demo._xsave", path)
spec = importlib.util.spec_from_file_location("kmemcache.demo._xsave", path, loader=loader)
mod = importlib.util.module_from_spec(spec)
loader.exec_module(mod)
ALIGN = mod.ALIGNMENT
backing = (ctypes.c_char * (size + 2 * ALIGN))()
start = (ctypes.addressof(backing) + ALIGN - 1) // ALIGN * ALIGN + misalign
area = (ctypes.c_char * size).from_address(start)
mod.roundtrip(area)
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Under AddressSanitizer the runtime would catch SIGSEGV, print a report
    # and exit(1); let the signal kill the child as it does without it.
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        opts = env.get(var, "")
        env[var] = f"{opts}:handle_segv=0" if opts else "handle_segv=0"
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def check_in_child(size: int, misalign: int, timeout: float = 60.0) -> Verdict:
    """Run the raw XSAVE/XRSTOR in a child process on a misaligned buffer.

    The child places a ``size``-byte buffer ``misalign`` bytes past a
    64-byte boundary (0 <= misalign < 64) and calls the extension without
    any alignment check. Returns ``"fault"`` when the child dies from
    SIGSEGV (the #GP XSAVE raises), ``"ok"`` when it exits normally, and
    ``"skipped"`` where XSAVE is not supported. Any other outcome raises
    RuntimeError with the child's stderr. The child writes no core file.
    """
    if not 0 <= misalign < XSAVE_ALIGNMENT:
        raise ValueError(f"misalign must be in [0, {XSAVE_ALIGNMENT}), not {misalign}")
    if not is_supported():
        return "skipped"
    need = area_size()
    if size < need:
        raise ValueError(f"size {size} is below the XSAVE area size {need}")
    module_path = _xsave.__file__
    if module_path is None:
        raise RuntimeError("cannot locate the kmemcache.demo._xsave extension file")
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, module_path, str(size), str(misalign)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"XSAVE child did not finish within {timeout} s") from exc
    if proc.returncode == -signal.SIGSEGV:
        return "fault"
    if proc.returncode == 0:
        return "ok"
    raise RuntimeError(
        f"XSAVE child exited with status {proc.returncode}, expected 0 or SIGSEGV:\n"
        f"{proc.stderr.strip()}"
    )


__all__ = [
    "XSAVE_ALIGNMENT",
    "XSAVE_HEADER_SIZE",
    "XSAVE_LEGACY_SIZE",
    "Verdict",
    "address_of",
    "area_size",
    "check",
    "check_in_child",
    "is_aligned",
    "is_supported",
]
