"""Red zones: checked before free_bulk frees anything, on the left of every object, and
between a kmalloc object's requested size and its class's.

Each case runs in its own process, since a write before the first object of an arena
would fault on an engine without left red zones:

- ``kmc_cache_check_free`` reports red-zone damage of a live object (and repairs it)
  without freeing anything, so that free_bulk checks every object before freeing any;
- left red zones (SLUB's ``red_left_pad``): a write just before an object is caught at
  its free and by ``validate()`` and blamed on that object, alignment kept;
- the kmalloc red zone (SLUB's, Linux 6.1): the engine records the size asked of
  ``kmc_kmalloc`` / ``kmc_kzalloc`` (``kmc_krealloc_in_place`` moves it) and checks the
  bytes from there to the class's size; ``ksize()`` makes the whole class size usable,
  as it does in SLUB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import ctypes, kmemcache
from kmemcache import Cache, Flags, kfree, kmalloc, krealloc, ksize, kzalloc

def caught(what, fn):
    try:
        fn()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{what}: {type(exc).__name__}: {first}")
    else:
        print(f"{what}: no error")
"""


def run(code: str, env: dict[str, str] | None = None) -> list[str]:
    import os

    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    "flags,size,align,offset,error",
    [
        ("RED_ZONE", 64, 0, 64, "RedzoneError: Right Redzone overwritten"),
        ("POISON", 60, 64, 61, "RedzoneError: Object padding overwritten"),
    ],
)
def test_free_bulk_checks_red_zones_before_freeing_any(
    flags: str, size: int, align: int, offset: int, error: str
) -> None:
    out = run(
        f"""
        c = Cache("bulk_rz", {size}, {align}, flags=Flags.{flags})
        objs = c.alloc_bulk(4)
        ctypes.memset(objs[2].address + {offset}, 0x41, 1)
        caught("free_bulk", lambda: c.free_bulk(objs))
        print("freed", [o.freed for o in objs], "active", c.stats().active_objs)
        c.free_bulk(objs)   # repaired by the report: all go now
        print("active", c.stats().active_objs)
        """
    )
    assert out[0].startswith(f"free_bulk: {error}")
    assert out[1:] == ["freed [False, False, False, False] active 4", "active 0"]


def test_free_bulk_with_warn_frees_a_damaged_object_once_reported() -> None:
    # whichever engine: under "warn" the damage is reported once and every
    # object is freed, as SLUB frees after its "FIX" line
    out = run(
        """
        import warnings
        kmemcache.debug.set_on_error("warn")
        c = Cache("bulk_warn", 64, flags=Flags.RED_ZONE)
        objs = c.alloc_bulk(3)
        ctypes.memset(objs[1].address + 64, 0x41, 1)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            c.free_bulk(objs)
        print(len(seen), [o.freed for o in objs], c.stats().active_objs, c.validate())
        """
    )
    assert out == ["1 [True, True, True] 0 0"]


@pytest.mark.parametrize("align", [0, 64, 4096])
def test_a_write_before_an_object_is_caught_and_blamed_on_it(align: int) -> None:
    out = run(
        f"""
        c = Cache("left_rz", 64, {align}, flags=Flags.RED_ZONE)
        first, second, third = c.alloc(), c.alloc(), c.alloc()
        print("aligned", all(o.address % max({align}, 8) == 0 for o in (first, second, third)))
        for o in (first, second):
            ctypes.memset(o.address - 1, 0x41, 1)   # the first one: before the arena's start
        for o in (first, second):
            try:
                o.free()
            except kmemcache.RedzoneError as exc:
                print("left", "Left Redzone" in str(exc), exc.address == o.address)
            o.free()                                # repaired: it goes now
        third.free()
        print("active", c.stats().active_objs, "valid", c.validate())
        """
    )
    assert out == ["aligned True", "left True True", "left True True", "active 0 valid 0"]


def test_validate_finds_a_left_red_zone_write() -> None:
    out = run(
        """
        c = Cache("left_validate", 64, flags=Flags.RED_ZONE)
        objs = c.alloc_bulk(3)
        ctypes.memset(objs[1].address - 1, 0x41, 1)
        try:
            c.validate()
        except kmemcache.RedzoneError as exc:
            print("validate", exc.problems, exc.address == objs[1].address)
        print("again", c.validate())
        c.free_bulk(objs)
        """
    )
    assert out == ["validate 1 True", "again 0"]


def test_kmalloc_red_zone_catches_a_write_past_the_requested_size() -> None:
    out = run(
        """
        buf = kzalloc(100, align=64)
        print(len(buf), buf.cache.name)
        ctypes.memset(buf.address + 100, 0x41, 4)   # 104 bytes written
        caught("kfree", lambda: kfree(buf))
        kfree(buf)                                  # repaired: it goes now
        full = kzalloc(100, align=64)
        print("ksize", ksize(full))                 # asked for: all of it is usable
        ctypes.memset(full.address, 0x41, 128)
        caught("kfree", lambda: kfree(full))
        """,
        env={"KMEMCACHE_DEBUG": "Z,kmalloc-*"},
    )
    assert out[0] == "100 kmalloc-128"
    assert out[1].startswith("kfree: RedzoneError: kmalloc Redzone overwritten in kmalloc-128")
    assert out[2:] == ["ksize 128", "kfree: no error"]


def test_krealloc_in_place_moves_the_kmalloc_red_zone() -> None:
    out = run(
        """
        buf = kmalloc(100)
        grown = krealloc(buf, 120)
        print(grown is buf, len(grown))
        ctypes.memset(grown.address + 100, 0x41, 20)    # inside the new size: fine
        shrunk = krealloc(grown, 110)
        ctypes.memset(shrunk.address + 110, 0x41, 1)    # past it: caught
        caught("validate", shrunk.cache.validate)
        kfree(shrunk)
        """,
        env={"KMEMCACHE_DEBUG": "Z,kmalloc-*"},
    )
    assert out[0] == "True 120"
    assert out[1].startswith("validate: RedzoneError:")
