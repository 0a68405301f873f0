"""Shared test set-up: hypothesis profiles and a cache factory that cleans up.

Hypothesis profiles: "default" is quick (the normal run); "ci" runs many more
examples. Pick one with HYPOTHESIS_PROFILE=ci.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import kmemcache
from kmemcache import _kmemcache as _core

settings.register_profile(
    "default",
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _no_injected_failures() -> Iterator[None]:
    """No test leaves OS failure injection switched on for the next one."""
    _core._os_fail_after(-1)
    yield
    _core._os_fail_after(-1)


@pytest.fixture
def make_cache() -> Iterator[Callable[..., kmemcache.Cache]]:
    """Make caches that are destroyed at the end of the test.

    A test that leaves objects live has failed already; the handles are
    dropped (giving the objects back) before the destroy.
    """
    made: list[kmemcache.Cache] = []

    def make(name: str, size: int, *args: Any, **kwargs: Any) -> kmemcache.Cache:
        cache = kmemcache.Cache(name, size, *args, **kwargs)
        made.append(cache)
        return cache

    yield make
    gc.collect()
    for cache in made:
        if not cache.destroyed:
            cache.destroy()


#: Shared caches made by this test run carry this prefix in their names.
SHARED_PREFIX = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:6]}-"


def _leftover_regions() -> list[str]:
    return [n for n in kmemcache.shared.regions() if n.startswith(SHARED_PREFIX)]


@pytest.fixture
def shared_name() -> Iterator[Callable[[], str]]:
    """Names for shared caches, unique to this run; unlinked at the end of the test."""
    made: list[str] = []

    def name() -> str:
        made.append(f"{SHARED_PREFIX}{len(made)}-{uuid.uuid4().hex[:6]}")
        return made[-1]

    yield name
    for n in made:
        try:
            kmemcache.shared.unlink(n)
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session", autouse=True)
def _no_shared_memory_left() -> Iterator[None]:
    """No test leaves a region of this run in /dev/shm."""
    yield
    left = _leftover_regions()
    for n in left:
        kmemcache.shared.unlink(n)
    assert not left, f"shared caches left in /dev/shm: {left}"


@pytest.fixture(scope="session")
def kmemcache_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a wheel of this source tree's kmemcache, for projects that
    a test builds in a fresh virtual environment (``pip install --find-links``).

    Built from a copy of the tree, so that the checkout's own build folders are
    never touched, with no KMEMCACHE_* build option from outside.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "setup.py").exists() or not (root / "csrc").is_dir():
        pytest.skip("the kmemcache source tree (setup.py, csrc/) is not here")
    pytest.importorskip("setuptools")
    tree = tmp_path_factory.mktemp("kmemcache-src")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(root / name, tree)
    skip = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
    shutil.copytree(root / "csrc", tree / "csrc", ignore=skip)
    shutil.copytree(root / "src", tree / "src", ignore=skip)
    out = tmp_path_factory.mktemp("wheels")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out
