"""kmemcache.debug: KMEMCACHE_DEBUG, owner tracking, leak reports, the on-error
policy, and the promise that any stray byte outside live objects is caught.

The byte-level cases of lib/slub_kunit.c are in test_slub_kunit.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import peek, poke, run_python
from hypothesis import given
from hypothesis import strategies as st

import kmemcache
from kmemcache import (
    Cache,
    CacheBusyError,
    CorruptionError,
    DoubleFreeError,
    Flags,
    PoisonError,
    RedzoneError,
    SlabError,
    SlabWarning,
    debug,
)
from kmemcache import _kmemcache as _core

F, Z, P, U = Flags.CONSISTENCY_CHECKS, Flags.RED_ZONE, Flags.POISON, Flags.STORE_USER
ALL = F | Z | P | U
NONE = Flags(0)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    """Each test starts with no debug options and the raise policy."""
    old_debug = debug.set_debug(None)
    old_policy = debug.set_on_error("raise")
    yield
    debug.set_on_error(old_policy)
    debug.set_debug(old_debug)


def this_line() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


# --- KMEMCACHE_DEBUG: slub_debug's syntax --------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # options for all caches
        ("FZPU", {"task_ctx": ALL, "other": ALL}),
        ("fzpu", {"task_ctx": ALL, "other": ALL}),
        ("ZP", {"task_ctx": Z | P, "kmalloc-64": Z | P}),
        # options for the caches named; the rest keep the default (off)
        ("ZP,task_ctx", {"task_ctx": Z | P, "other": NONE, "task_ctx2": NONE}),
        ("FZ,cache_a,cache_b", {"cache_a": F | Z, "cache_b": F | Z, "cache_c": NONE}),
        # a trailing * matches a prefix
        ("P,kmalloc-*,dentry", {"kmalloc-64": P, "kmalloc-4k": P, "dentry": P, "x": NONE}),
        # blocks: each list its options; the first block naming a cache wins
        ("Z,dentry;U,kmalloc-*", {"dentry": Z, "kmalloc-8": U, "task_ctx": NONE}),
        ("Z,a;P,a", {"a": Z}),
        # all caches but some
        ("FZ;-,zs_handle,zspage", {"x": F | Z, "zs_handle": NONE, "zspage": NONE}),
        # the last block for all caches wins
        ("FZ;P", {"x": P}),
        # no options before a list: all of them
        (",dentry", {"dentry": ALL, "x": NONE}),
        # empty: everything, as a bare slub_debug
        ("", {"x": ALL}),
        # '-' switches off, also in the middle of options
        ("-", {"x": NONE}),
        ("F-Z", {"x": Z}),
        # empty blocks are skipped
        (";;ZP;;", {"x": Z | P}),
        (";", {"x": NONE}),
    ],
)
def test_debug_syntax(value: str, expected: dict[str, Flags]) -> None:
    debug.set_debug(value)
    assert debug.get_debug() == value
    for name, flags in expected.items():
        assert debug.debug_flags(name) == flags, name


@pytest.mark.parametrize("value", ["1", "FZX", "Q", "Z,a,,b", "Z,", "Z,a*b", "F Z"])
def test_bad_values_raise_from_set_debug_and_change_nothing(value: str) -> None:
    debug.set_debug("Z")
    with pytest.raises(ValueError, match="KMEMCACHE_DEBUG"):
        debug.set_debug(value)
    assert debug.get_debug() == "Z"
    assert debug.debug_flags("x") == Z


@pytest.mark.parametrize("value", ["1", "FZX", "Z,a,,b"])
def test_bad_environment_value_warns_and_keeps_debugging_off(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMEMCACHE_DEBUG", value)
    with pytest.warns(RuntimeWarning, match="debugging stays off"):
        debug.load_environment()
    assert debug.get_debug() is None
    assert debug.debug_flags("x") == NONE


def test_unsupported_slub_letters_warn_and_are_ignored() -> None:
    with pytest.warns(RuntimeWarning, match="'T' .trace. is not supported"):
        debug.set_debug("ZT")
    assert debug.debug_flags("x") == Z


def test_set_debug_returns_the_previous_value() -> None:
    assert debug.set_debug("FZ") is None
    assert debug.set_debug("P,x") == "FZ"
    assert debug.set_debug(None) == "P,x"
    assert debug.debug_flags("x") == NONE


def test_environment_is_read_at_import() -> None:
    proc = run_python(
        """
        from kmemcache import Cache, Flags
        debugged = Cache("task_ctx", 100, align=64)
        plain = Cache("other", 100, align=64)
        print(int(debugged.flags), int(plain.flags))
        """,
        KMEMCACHE_DEBUG="ZP,task_ctx",
        KMEMCACHE_ON_ERROR="warn",
    )
    assert proc.returncode == 0, proc.stderr
    debugged, plain = map(int, proc.stdout.split())
    assert debugged == Z | P
    assert plain == 0


def test_bad_environment_at_import_warns_and_keeps_defaults() -> None:
    proc = run_python(
        """
        import kmemcache
        print(kmemcache.debug.get_debug(), kmemcache.debug.get_on_error())
        """,
        KMEMCACHE_DEBUG="FZX",
        KMEMCACHE_ON_ERROR="explode",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "raise"]
    assert "unknown option 'X'; debugging stays off" in proc.stderr
    assert "KMEMCACHE_ON_ERROR='explode'" in proc.stderr


def test_on_error_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMEMCACHE_ON_ERROR", "warn")
    debug.load_environment()
    assert debug.get_on_error() == "warn"
    monkeypatch.setenv("KMEMCACHE_ON_ERROR", "sometimes")
    with pytest.warns(RuntimeWarning, match="using 'raise'"):
        debug.load_environment()
    assert debug.get_on_error() == "raise"


def test_options_apply_to_caches_created_afterwards(make_cache) -> None:
    before = make_cache("dbg_before", 64)
    debug.set_debug("FZP;U,dbg_named")
    after = make_cache("dbg_after", 64, flags=Flags.HWCACHE_ALIGN)
    named = make_cache("dbg_named", 64)
    assert before.flags & ALL == 0
    assert after.flags == F | Z | P | Flags.HWCACHE_ALIGN  # the caller's flags kept
    assert named.flags == U
    debug.set_debug("-")
    assert make_cache("dbg_off", 64).flags == 0


def test_options_apply_to_the_kmalloc_caches() -> None:
    proc = run_python(
        """
        import ctypes
        import kmemcache
        from kmemcache import kfree, kmalloc, ksize

        def make():
            return kmalloc(100)

        obj = make()
        ctypes.memmove(obj.address + ksize(obj), b"\\x41", 1)
        try:
            kfree(obj)
        except kmemcache.RedzoneError as exc:
            print(exc)
        print(kmemcache.slabinfo())
        """,
        KMEMCACHE_DEBUG="ZU,kmalloc-*",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Right Redzone overwritten in kmalloc-128" in proc.stdout
    assert "bytes 128-128. First byte 0x41 instead of 0xcc" in proc.stdout
    assert "Allocated in make <string>:7 age=" in proc.stdout


@given(
    size=st.integers(1, 5000),
    align=st.sampled_from([0, 8, 16, 32, 64, 128, 512, 4096]),
    flags=st.sampled_from([Z, P, Z | P, ALL, F | Z]),
)
def test_debug_options_keep_the_alignment_guarantee(size: int, align: int, flags: Flags) -> None:
    cache = Cache("dbg_align", size, align, flags)
    try:
        want = max(align, 8)
        objs = [cache.alloc() for _ in range(20)] + cache.alloc_bulk(5, zero=True)
        assert all(o.address % want == 0 for o in objs)
        stats = cache.stats()
        assert stats.objsize % want == 0
        if flags & Z:
            assert stats.objsize >= size + 8  # room for the red zone
        assert cache.validate() == 0
        cache.free_bulk(objs)
    finally:
        cache.destroy()


# --- poisoning -----------------------------------------------------------------


def test_poison_patterns(make_cache) -> None:
    cache = make_cache("dbg_poison", 48, flags=P)
    fresh = cache.alloc()
    assert bytes(fresh) == b"\x5a" * 48  # use of uninitialised memory shows
    zeroed = cache.zalloc()
    assert bytes(zeroed) == bytes(48)
    address = fresh.address
    fresh.free()
    assert peek(address, 48) == b"\x6b" * 47 + b"\xa5"
    zeroed.free()


def test_write_after_free_reports_free_and_alloc_sites(make_cache) -> None:
    cache = make_cache("dbg_uaf", 64, flags=P | U)
    obj = cache.alloc()
    alloc_line = this_line() - 1
    address = obj.address
    obj.free()
    free_line = this_line() - 1
    poke(address + 9, 0x00)

    with pytest.raises(PoisonError) as info:
        cache.validate()
    text = str(info.value)
    here = __file__
    assert "Poison overwritten in dbg_uaf" in text
    assert "bytes 9-9. First byte 0x00 instead of 0x6b" in text
    assert "^^" in text  # the hex dump points at the damage
    function = "test_write_after_free_reports_free_and_alloc_sites"
    assert f"Allocated in {function} {here}:{alloc_line} age=" in text
    assert f"Freed in {function} {here}:{free_line} age=" in text
    assert text.index("Allocated in") < text.index("Freed in")
    assert info.value.free_track.frames[0][1] == free_line
    assert info.value.alloc_track.frames[0][1] == alloc_line


def test_write_after_free_caught_by_the_next_alloc(make_cache) -> None:
    cache = make_cache("dbg_uaf_alloc", 32, flags=P | U)
    obj = cache.alloc()
    address = obj.address
    obj.free()
    poke(address + 31, 0x00)  # the 0xa5 end marker
    with pytest.raises(PoisonError, match="bytes 31-31. First byte 0x00 instead of 0xa5"):
        cache.alloc()
    again = cache.alloc()
    assert again.address == address
    again.free()


# --- owner tracking (STORE_USER) ---------------------------------------------------


def test_redzone_report_names_the_alloc_site_and_thread(make_cache) -> None:
    cache = make_cache("dbg_rz_user", 40, flags=Z | U)
    made: list[kmemcache.Object] = []

    def worker() -> None:
        made.append(cache.alloc())

    thread = threading.Thread(target=worker, name="allocator-7")
    thread.start()
    thread.join()
    obj = made.pop()
    poke(obj.address + 40, 0x41)
    with pytest.raises(RedzoneError) as info:
        obj.free()
    text = str(info.value)
    assert "Right Redzone overwritten in dbg_rz_user" in text
    assert "First byte 0x41 instead of 0xcc" in text
    assert f"Allocated in worker {__file__}:" in text
    assert "thread=allocator-7" in text
    assert "Freed in" not in text
    obj.free()  # the red zone was restored: the free goes through now


def test_track_skips_kmemcache_frames(
    make_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of kmemcache's own code (kmalloc and the like) are not the site."""
    (tmp_path / "dbg_helper_mod.py").write_text("def get(cache):\n    return cache.alloc()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    helper = importlib.import_module("dbg_helper_mod")
    monkeypatch.setattr(debug, "_PACKAGE_DIR", str(tmp_path) + os.sep)
    cache = make_cache("dbg_skip", 16, flags=U)
    obj = helper.get(cache)
    line = this_line() - 1
    (leak,) = cache.leaks()
    assert leak.alloc is not None
    assert leak.alloc.frames[0] == (__file__, line, "test_track_skips_kmemcache_frames")
    obj.free()


def test_leaks_lists_live_objects_with_alloc_sites(make_cache) -> None:
    cache = make_cache("dbg_leaks", 64, flags=U)
    a = cache.alloc()
    line_a = this_line() - 1
    b, c = cache.alloc_bulk(2)
    line_bc = this_line() - 1
    b.free()
    leaks = cache.leaks()
    assert [leak.address for leak in leaks] == sorted([a.address, c.address])
    sites = {leak.address: leak.alloc.frames[0][1] for leak in leaks if leak.alloc}
    assert sites == {a.address: line_a, c.address: line_bc}
    assert all(leak.size == 64 and leak.alloc.thread_name == "MainThread" for leak in leaks)
    assert all(leak.offset == leak.address % cache.stats().slab_size for leak in leaks)
    a.free()
    c.free()
    assert cache.leaks() == []


def test_leaks_without_store_user_has_no_sites(make_cache) -> None:
    cache = make_cache("dbg_leaks_plain", 64)
    obj = cache.alloc()
    (leak,) = cache.leaks()
    assert leak.address == obj.address and leak.alloc is None
    obj.free()


def test_destroy_with_live_objects_lists_them(make_cache) -> None:
    cache = make_cache("dbg_busy", 64, flags=U)
    objs = cache.alloc_bulk(3)
    line = this_line() - 1
    with pytest.raises(CacheBusyError) as info:
        cache.destroy()
    text = str(info.value)
    assert text.startswith("Objects remaining in dbg_busy on __kmem_cache_shutdown(): 3 live\n")
    for obj in objs:
        assert f"Object 0x{obj.address:x} @offset=" in text
    site = f"Allocated in test_destroy_with_live_objects_lists_them {__file__}:{line} age="
    assert text.count(site) == 3
    assert [o.address for o in info.value.objects] == [o.address for o in objs]
    assert not cache.destroyed
    cache.free_bulk(objs)


def test_destroy_lists_at_most_a_few_objects(make_cache) -> None:
    cache = make_cache("dbg_busy_many", 8)
    objs = cache.alloc_bulk(debug.MAX_LISTED + 5)
    with pytest.raises(CacheBusyError, match=r"\.\.\. and 5 more"):
        cache.destroy()
    cache.free_bulk(objs)


# --- CONSISTENCY_CHECKS --------------------------------------------------------------


def test_validate_finds_metadata_corruption_without_f(make_cache) -> None:
    cache = Cache("dbg_corrupt", 64)  # not destroyable afterwards: its slab is isolated
    obj = cache.alloc()
    _core._flip_free_bit(obj.address)
    per_slab = cache.stats().objperslab
    with pytest.raises(
        CorruptionError, match=f"counter is 1 but counted were 0 of {per_slab}"
    ) as info:
        cache.validate()
    assert info.value.problems == 1
    assert cache.validate() == 0
    assert cache.alloc().address != obj.address


def test_flip_hook_refuses_addresses_outside_slots() -> None:
    with pytest.raises(ValueError, match="is in no cache"):
        _core._flip_free_bit(id(object()))


# --- the on-error policy --------------------------------------------------------------


def test_set_on_error() -> None:
    assert debug.get_on_error() == "raise"
    assert debug.set_on_error("warn") == "raise"
    with pytest.raises(ValueError, match="raise, warn, abort"):
        debug.set_on_error("ignore")
    assert debug.get_on_error() == "warn"


def test_warn_reports_and_goes_on(make_cache) -> None:
    debug.set_on_error("warn")
    cache = make_cache("dbg_warn", 64, flags=Z | P | U)
    obj = cache.alloc()
    poke(obj.address + 64, 0x00)
    with pytest.warns(SlabWarning, match="Right Redzone overwritten") as caught:
        obj.free()  # reported, repaired, and freed
    assert obj.freed
    assert cache.stats().active_objs == 0
    warning = caught[0].message
    assert isinstance(warning, RuntimeWarning)
    assert isinstance(warning.error, RedzoneError)
    assert warning.report["kind"] == "red zone overwritten"
    assert "Allocated in test_warn_reports_and_goes_on" in str(warning)
    assert caught[0].filename == __file__  # attributed to the caller's line

    with pytest.warns(SlabWarning, match="DoubleFreeError: Object already free"):
        assert obj.free() is None
    with pytest.warns(SlabWarning, match="InvalidFreeError"):
        assert cache.free(b"not an object") is None

    a, b = cache.alloc(), cache.alloc()
    with pytest.warns(SlabWarning, match="appears twice"):
        cache.free_bulk([a, b, a])
    assert a.freed and b.freed and cache.stats().active_objs == 0

    live = cache.alloc()
    with pytest.warns(SlabWarning, match="Objects remaining in dbg_warn"):
        assert cache.destroy() is None
    assert not cache.destroyed
    live.free()


def test_warn_turned_into_an_error_by_the_warnings_filter(make_cache) -> None:
    debug.set_on_error("warn")
    cache = make_cache("dbg_warn_error", 64, flags=P)
    obj = cache.alloc()
    address = obj.address
    obj.free()
    poke(address, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlabWarning)
        with pytest.raises(SlabWarning, match="Poison overwritten"):
            cache.alloc()
    assert cache.validate() == 0  # repaired when found


def test_raise_is_the_default_and_raises_slab_errors(make_cache) -> None:
    cache = make_cache("dbg_raise", 64)
    obj = cache.alloc()
    obj.free()
    with pytest.raises(DoubleFreeError) as info:
        obj.free()
    assert isinstance(info.value, SlabError)


def test_abort_prints_the_report_and_aborts() -> None:
    proc = run_python(
        """
        import ctypes
        from kmemcache import Cache, Flags, debug

        debug.set_on_error("abort")
        cache = Cache("dbg_abort", 64, flags=Flags.RED_ZONE | Flags.STORE_USER)

        def make():
            return cache.alloc()

        obj = make()
        ctypes.memmove(obj.address + len(obj), b"\\x41", 1)
        obj.free()
        print("not reached")
        """
    )
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr)
    assert "not reached" not in proc.stdout
    assert "kmemcache: RedzoneError: Right Redzone overwritten in dbg_abort" in proc.stderr
    assert "First byte 0x41 instead of 0xcc" in proc.stderr
    assert "Allocated in make <string>:9 age=" in proc.stderr  # line 1 is empty
    assert "aborting (on-error policy)" in proc.stderr


def test_abort_from_environment() -> None:
    proc = run_python(
        """
        from kmemcache import Cache
        cache = Cache("dbg_abort_env", 64)
        obj = cache.alloc()
        obj.free()
        obj.free()
        """,
        KMEMCACHE_ON_ERROR="abort",
    )
    assert proc.returncode == -signal.SIGABRT
    assert "DoubleFreeError: Object already free" in proc.stderr


def test_validate_counts_every_problem(make_cache) -> None:
    cache = make_cache("dbg_count", 64, flags=Z | P)
    objs = cache.alloc_bulk(6)
    addresses = [o.address for o in objs]
    for o in objs[:3]:
        o.free()
    poke(addresses[0] + 1, 0)  # poison of a free object
    poke(addresses[1] + 64, 0)  # red zone of a free object
    poke(addresses[3] + 70, 0)  # red zone of a live object
    poke(addresses[4] + 10, 0)  # inside a live object: not damage
    with pytest.raises(SlabError) as info:
        cache.validate()
    assert info.value.problems == 3
    assert isinstance(info.value, PoisonError)  # the first found, lowest address
    assert cache.validate() == 0
    cache.free_bulk(objs[3:])


# --- any stray byte outside live objects is caught -----------------------------------


def outside(live: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) not covered by the (sorted) live ranges."""
    gaps, at = [], start
    for lo, hi in live:
        if hi <= start or lo >= end:
            continue
        if lo > at:
            gaps.append((at, lo))
        at = max(at, hi)
    if at < end:
        gaps.append((at, end))
    return gaps


@given(data=st.data())
def test_any_stray_byte_outside_live_objects_is_caught(data: st.DataObject) -> None:
    flags = data.draw(st.sampled_from([P, Z | P, F | Z | P, P | U, ALL]), label="flags")
    size = data.draw(st.integers(1, 700), label="size")
    align = data.draw(st.sampled_from([0, 8, 16, 64, 256]), label="align")
    n = data.draw(st.integers(1, 48), label="objects")
    cache = Cache("dbg_stray", size, align, flags)
    objs = [cache.zalloc() if i % 3 else cache.alloc() for i in range(n)]
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="keep")
    keep[data.draw(st.integers(0, n - 1), label="one kept")] = True
    live = [o for o, k in zip(objs, keep, strict=True) if k]
    try:
        for o, k in zip(objs, keep, strict=True):
            if not k:
                o.free()
        slab_size = cache.stats().slab_size
        ranges = sorted((o.address, o.address + size) for o in live)
        slabs = sorted({o.address & ~(slab_size - 1) for o in live})
        slab = data.draw(st.sampled_from(slabs), label="slab")
        gaps = outside(ranges, slab, slab + slab_size)
        total = sum(hi - lo for lo, hi in gaps)
        if total == 0:
            return  # live objects fill this slab to the last byte: nothing to hit
        k = data.draw(st.integers(0, total - 1), label="byte")
        for lo, hi in gaps:
            if k < hi - lo:
                target = lo + k
                break
            k -= hi - lo
        old = peek(target)[0]
        new = old ^ data.draw(st.integers(1, 255), label="xor")
        poke(target, new)

        with pytest.raises(SlabError) as info:
            cache.validate()
        assert info.value.problems == 1
        assert type(info.value) in (RedzoneError, PoisonError)
        assert peek(target)[0] == old  # repaired
        assert cache.validate() == 0
    finally:
        cache.free_bulk(live)
        cache.destroy()


# --- the benchmark runs --------------------------------------------------------------


def test_bench_debug_quick(tmp_path: Path) -> None:
    out = tmp_path / "debug.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_debug.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "debug"
    assert data["baseline"] == "off"
    for size in data["sizes"]:
        records = {r["key"]: r for r in data["results"][str(size)]}
        assert list(records) == ["off", "F", "Z", "P", "U", "FZPU"]
        assert all(r["status"] == "ok" and r["ratio"] > 0 for r in records.values())
    assert "| debug options " in proc.stdout
