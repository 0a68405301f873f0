"""Helpers the test files share: a fresh interpreter, and raw byte access."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter that sees the same modules as
    this one, with no KMEMCACHE_* variable from outside but those in ``env``."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )


def poke(address: int, value: int) -> None:
    """Write one byte anywhere, as the kernel tests do with p[64] = 0x12."""
    ctypes.memmove(address, bytes([value]), 1)


def peek(address: int, n: int = 1) -> bytes:
    """Read ``n`` bytes anywhere."""
    return ctypes.string_at(address, n)


def under_asan() -> bool:
    """True when AddressSanitizer is loaded (the CI run under sanitizers): it reserves
    terabytes of shadow address space, so address-space limits mean nothing."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            return "libasan" in maps.read()
    except OSError:
        return False
