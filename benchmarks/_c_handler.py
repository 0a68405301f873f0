"""A NEP 49 handler in C over ``aligned_alloc``, built here on first use.

The peer kmemcache.numpy is compared with: what a user who writes a C handler gets
(``benchmarks/c/aligned_alloc_handler.c``), installed once like kmemcache's, so that
no Python runs per allocation. It is compiled with the C compiler Python was built
with into ``benchmarks/results/build/`` (rebuilt when the source is newer), and
``load()`` raises ``peers.PeerUnavailable`` when it cannot be built.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import peers

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "c" / "aligned_alloc_handler.c"
BUILD = HERE / "results" / "build"


def _compile(target: Path) -> None:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [*cc, "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise peers.PeerUnavailable(
            f"no C compiler to build the aligned_alloc handler: {exc}"
        ) from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise peers.PeerUnavailable(f"building the aligned_alloc handler failed: {tail}")
    tmp.replace(target)  # atomic: processes of bench_memory may build at once


@functools.cache
def load() -> ModuleType:
    """The built module; its ``handler(align)`` gives a "mem_handler" capsule."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = BUILD / f"aligned_alloc_handler{suffix}"
    if not target.exists() or target.stat().st_mtime < SOURCE.stat().st_mtime:
        _compile(target)
    spec = importlib.util.spec_from_file_location("aligned_alloc_handler", target)
    if spec is None or spec.loader is None:
        raise peers.PeerUnavailable(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.setdefault("aligned_alloc_handler", module)
    return module
