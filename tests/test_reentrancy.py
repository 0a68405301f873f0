"""Python code that runs in the middle of a binding call, each case in its own process.

Garbage collection, finalizers, warning hooks, signal handlers, the STORE_USER tracker
and the error factory can all run inside a C call and free, view or destroy what that
call holds (DESIGN.md, invariant 9). Each script here makes one of them do so on
purpose, under ``python -X dev``, and prints what it saw: a crash, an abort or a hang
fails the test rather than the test run.

On CPython 3.12 and later the garbage collector runs at the next bytecode boundary
rather than inside the allocation that triggers it, so a finalizer may run after the
C call instead of within it: the scripts accept both outcomes where that matters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import ctypes, gc, sys, warnings
import kmemcache
from kmemcache import Cache, Flags, kfree, kmalloc, krealloc, kzalloc

def caught(what, fn):
    try:
        fn()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{what}: {type(exc).__name__}: {first}")
    else:
        print(f"{what}: no error")
"""


def run(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[list[str], str]:
    """PRELUDE + code in a fresh ``python -X dev``: (stdout lines, stderr). It must exit 0."""
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines(), done.stderr


# --- the three examples of issue 9 ------------------------------------------------


def test_handle_dropped_after_a_red_zone_overrun_is_reported_once_and_given_back() -> None:
    # object_dealloc used to report through PyErr_WriteUnraisable(self) at
    # refcount 0, which resurrected the handle: it reached the handle free list
    # twice ("PyObject_GC_Track: object already tracked", SIGABRT).
    out, err = run(
        """
        c = Cache("rz", 64, flags=Flags.RED_ZONE)
        o = c.alloc()
        ctypes.memset(o.address + 64, 0x41, 1)
        del o
        a = c.alloc(); b = c.alloc()
        print("distinct", a.address != b.address, "active", c.stats().active_objs)
        a.free(); b.free()
        print("valid", c.validate(), "active", c.stats().active_objs)
        c.destroy()
        """
    )
    assert out == ["distinct True active 2", "valid 0 active 0"]
    assert err.count("Exception ignored while freeing a dropped kmemcache object of rz") == 1
    assert "kmemcache.RedzoneError: Right Redzone overwritten in rz" in err


def test_slabinfo_while_the_gc_frees_cyclic_caches() -> None:
    # _caches() copied raw cache pointers, then made Python objects: a GC run
    # in between destroyed cyclic caches under it (a hang, or a crash).
    out, _ = run(
        """
        live = [Cache(f"l{i}", 64) for i in range(1500)]
        for i in range(100):
            c = Cache(f"c{i}", 64)
            c.me = c
        del c
        lines = kmemcache.slabinfo().splitlines()
        names = {line.split()[0] for line in lines[2:]}
        print("live listed", all(f"l{i}" in names for i in range(1500)))
        gc.collect()
        print("cycles gone", not any(n.startswith("c") for n in kmemcache.slabinfo().split()))
        """
    )
    assert out == ["live listed True", "cycles gone True"]


def test_krealloc_whose_old_object_a_finalizer_frees() -> None:
    # krealloc checked the old object, ran Python code (a first use of a size
    # class, the GC and its finalizers), then copied from it: SIGSEGV.
    out, _ = run(
        """
        o = kmalloc(100)
        memoryview(o)[:4] = b"keep"
        class T:
            def __del__(self):
                kfree(o)
        t = T(); t.me = t; del t
        gc.set_threshold(1)
        try:
            new = krealloc(o, 3000)
        except ValueError as exc:
            print("ValueError", exc)
        else:  # the finalizer ran after the call (CPython 3.12+)
            print("moved", bytes(memoryview(new)[:4]) == b"keep")
            new.free()
        gc.set_threshold(700)
        gc.collect()
        print("old freed", o.freed)
        """
    )
    assert out[0] in (
        "ValueError krealloc: the object was freed while its new copy was being made",
        "moved True",
    )
    assert out[1] == "old freed True"


# --- the rest of the class ----------------------------------------------------------


def test_free_bulk_of_a_list_that_a_warning_hook_empties() -> None:
    out, _ = run(
        """
        kmemcache.debug.set_on_error("warn")
        warnings.simplefilter("always")
        c = Cache("fb", 64)
        objs = c.alloc_bulk(4)
        junk = [objs[0], "not an object", *objs[1:]]
        def hook(*args, **kwargs):
            junk.clear()          # the list free_bulk() is walking
            junk.extend([None] * 1000)
            gc.collect()
        warnings.showwarning = hook
        c.free_bulk(junk)
        print("freed", [o.freed for o in objs], "active", c.stats().active_objs)
        """
    )
    assert out == ["freed [True, True, True, True] active 0"]


def test_free_bulk_sees_what_a_warning_hook_changed_before_freeing_any() -> None:
    out, _ = run(
        """
        kmemcache.debug.set_on_error("warn")
        warnings.simplefilter("always")
        c = Cache("fb2", 64)
        objs = c.alloc_bulk(4)
        views = []
        def free_one(*args, **kwargs):
            objs[1].free()
        def view_one(*args, **kwargs):
            views.append(memoryview(objs[3]))
        for hook in (free_one, view_one):
            warnings.showwarning = hook
            items = [o for o in objs if not o.freed] + ["junk"]  # the hook runs last
            caught(hook.__name__, lambda: c.free_bulk(items))
            print("freed", [o.freed for o in objs])
        views.clear()
        c.free_bulk([o for o in objs if not o.freed])
        print("active", c.stats().active_objs)
        """
    )
    assert out == [
        "free_one: ValueError: cannot free item 1: it was freed while free_bulk() checked "
        "the others",
        "freed [False, True, False, False]",
        "view_one: BufferError: cannot free item 2: it was viewed while free_bulk() checked "
        "the others",
        "freed [False, True, False, False]",
        "active 0",
    ]


def test_warn_policy_retry_on_a_cache_its_warning_hook_destroyed() -> None:
    out, _ = run(
        """
        kmemcache.debug.set_on_error("warn")
        warnings.simplefilter("always")
        c = Cache("wd", 64, flags=Flags.RED_ZONE)
        o = c.alloc()
        ctypes.memset(o.address + 64, 0x41, 1)
        def hook(*args, **kwargs):
            o.free()              # the damage is repaired: this free succeeds
            c.destroy()
        warnings.showwarning = hook
        caught("free", o.free)
        print("freed", o.freed, "destroyed", c.destroyed)

        # the same through free_bulk
        c = Cache("wd2", 64, flags=Flags.RED_ZONE)
        objs = c.alloc_bulk(2)
        ctypes.memset(objs[1].address + 64, 0x41, 1)
        def hook2(*args, **kwargs):
            for x in objs:
                if not x.freed:
                    x.free()
            c.destroy()
        warnings.showwarning = hook2
        caught("free_bulk", lambda: c.free_bulk(objs))
        print("freed", [x.freed for x in objs], "destroyed", c.destroyed)

        # an allocation that finds poison damage, retried on a destroyed cache
        c = Cache("wd3", 64, flags=Flags.POISON)
        p = c.alloc()
        address = p.address
        p.free()
        ctypes.memset(address, 0x41, 1)   # write after free
        warnings.showwarning = lambda *a, **k: c.destroy()
        caught("alloc", c.alloc)
        print("destroyed", c.destroyed)
        """
    )
    assert out[0] == "free: no error"
    assert out[1] == "freed True destroyed True"
    assert out[2] in (
        "free_bulk: ValueError: operation on a destroyed kmemcache cache",
        "free_bulk: no error",
    )
    assert out[3] == "freed [True, True] destroyed True"
    assert out[4] == "alloc: ValueError: operation on a destroyed kmemcache cache"
    assert out[5] == "destroyed True"


def test_raising_signal_handlers_during_tracking() -> None:
    out, err = run(
        """
        import signal
        class Tick(Exception):
            pass
        def handler(signum, frame):
            # only inside the tracker (kmemcache's own Python code, called from
            # the C calls), never in this script's own lines
            if frame is not None and "kmemcache" in frame.f_code.co_filename:
                raise Tick
        c = Cache("sig", 64, flags=Flags.STORE_USER)
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        live, ticks = [], 0
        for i in range(30000):
            try:
                k = i % 6
                if k == 0:
                    live.extend(c.alloc_bulk(3))
                elif k == 1 and live:
                    live.pop().free()
                elif k == 2 and live:
                    live.pop()        # dropped: its dealloc frees it, tracker and all
                elif k == 3 and len(live) > 2:
                    batch = live[-2:]
                    del live[-2:]
                    c.free_bulk(batch)
                else:
                    live.append(c.alloc())
            except (Tick, kmemcache.SlabError, ValueError):
                ticks += 1
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        for o in live:
            if not o.freed:
                o.free()
        del live, batch, o
        gc.collect()
        print("interrupted", ticks > 0)
        print("active", c.stats().active_objs, "valid", c.validate())
        c.destroy()
        """
    )
    assert out == ["interrupted True", "active 0 valid 0"]
    assert "Fatal Python error" not in err


def test_krealloc_racing_kfree_from_another_thread() -> None:
    out, _ = run(
        """
        import threading
        sys.setswitchinterval(1e-6)
        box = [kmalloc(100)]
        stop = False
        def freer():
            while not stop:
                try:
                    kfree(box[0])
                except Exception:
                    pass
        t = threading.Thread(target=freer)
        t.start()
        outcomes = set()
        for i in range(4000):
            old = box[0]
            try:
                box[0] = krealloc(old, 100 if i % 2 else 3000)
                outcomes.add("moved")
            except (ValueError, kmemcache.SlabError) as exc:
                outcomes.add(type(exc).__name__)
                box[0] = kmalloc(100)
        stop = True
        t.join()
        kfree(box[0]) if not box[0].freed else None
        print("ok", sorted(outcomes) != [])
        """,
        env={"KMEMCACHE_DEBUG": "U,kmalloc-*"},
        timeout=120,
    )
    assert out == ["ok True"]


def test_a_debug_cache_dropped_with_damage_reports_it() -> None:
    out, err = run(
        """
        def damaged(name):
            c = Cache(name, 64, flags=Flags.RED_ZONE)
            o = c.alloc()
            address = o.address
            o.free()
            ctypes.memset(address + 64, 0x41, 1)   # the red zone of a free object
            return c

        c = damaged("dropped")
        del c                                       # by its reference count
        c = damaged("cyclic")
        c.me = c
        del c
        gc.collect()                                # by the garbage collector
        kmemcache.debug.set_on_error("warn")
        c = damaged("warned")
        del c
        print("done")
        """
    )
    assert out == ["done"]
    for name in ("dropped", "cyclic"):
        assert (
            f"Exception ignored while destroying kmemcache cache {name}, dropped with no "
            "reference left" in err
        ), err
        assert f"RedzoneError: Right Redzone overwritten in {name}" in err
    assert "SlabWarning: RedzoneError: Right Redzone overwritten in warned" in err


def test_alloc_bulk_when_the_gc_destroys_its_cache() -> None:
    out, _ = run(
        """
        c = Cache("ab", 64)
        class F:
            def __del__(self):
                try:
                    c.destroy()
                    print("destroyed in __del__")
                except kmemcache.CacheBusyError:
                    print("busy in __del__")
        f = F(); f.me = f; del f
        gc.set_threshold(1)
        caught("alloc_bulk", lambda: print("got", len(c.alloc_bulk(3))))
        gc.set_threshold(700)
        gc.collect()
        print("active", 0 if c.destroyed else c.stats().active_objs)
        """
    )
    assert out[-1] == "active 0"
    destroyed = "alloc_bulk: ValueError: operation on a destroyed kmemcache cache"
    assert "got 3" in out or destroyed in out


def test_init_run_again_by_code_the_first_init_runs() -> None:
    # A name whose comparison (KMEMCACHE_DEBUG names a cache) re-enters __init__:
    # the outer call used to overwrite, and leak, the engine cache the inner made.
    out, _ = run(
        """
        class Sneaky(str):
            def __eq__(self, other):
                if not getattr(c, "entered", False):
                    c.entered = True
                    Cache.__init__(c, "inner", 32)
                return str.__eq__(self, other)
            __hash__ = str.__hash__
        c = Cache.__new__(Cache)
        caught("init", lambda: Cache.__init__(c, Sneaky("outer"), 64))
        names = [s["name"] for s in kmemcache._kmemcache._caches()]
        print(c.name, names.count("inner"), names.count("outer"))
        """,
        env={"KMEMCACHE_DEBUG": "Z,some_cache"},
    )
    assert out == [
        "init: TypeError: a kmemcache cache cannot be initialised twice (it was, while this "
        "__init__ ran)",
        "inner 1 0",
    ]


def test_an_error_factory_that_returns_junk() -> None:
    out, _ = run(
        """
        core = kmemcache._kmemcache
        c = Cache("junk", 64)
        o = c.alloc()
        o.free()
        for junk in (42, ValueError, "text"):
            core._set_error_factory(lambda cls, report, junk=junk: junk)
            caught(repr(junk), o.free)
        core._set_error_factory(kmemcache.debug.report_error)
        caught("restored", o.free)
        """
    )
    assert out == [
        "42: TypeError: the kmemcache error factory returned int, not an exception or None",
        "<class 'ValueError'>: TypeError: the kmemcache error factory returned type, "
        "not an exception or None",
        "'text': TypeError: the kmemcache error factory returned str, not an exception or None",
        "restored: DoubleFreeError: Object already free: this handle was freed before (cache junk)",
    ]


@pytest.mark.parametrize("policy", ["raise", "warn"])
def test_tracker_of_a_handle_dropped_in_a_failed_bulk_alloc(policy: str) -> None:
    # the tracker raising on the k-th alloc of alloc_bulk: every handle made
    # gives its object back, none twice
    out, _ = run(
        f"""
        kmemcache.debug.set_on_error({policy!r})
        c = Cache("tb", 64, flags=Flags.STORE_USER)
        tracker = kmemcache.debug._trackers[c]
        calls = []
        def flaky(event, address):
            calls.append(event)
            if event == "alloc" and len(calls) == 3:
                raise KeyboardInterrupt
            tracker(event, address)
        c._set_track(flaky)
        try:
            c.alloc_bulk(5)
        except KeyboardInterrupt:
            print("interrupted")
        print("active", c.stats().active_objs, "frees", calls.count("free"))
        c.destroy()
        """
    )
    assert out == ["interrupted", "active 0 frees 5"]


def test_a_report_is_not_lost_when_its_details_cannot_be_had() -> None:
    # the owner details (STORE_USER tracks) come from Python code that can
    # fail; the report itself must still be raised
    out, _ = run(
        """
        c = Cache("lost", 64, flags=Flags.RED_ZONE | Flags.STORE_USER)
        o = c.alloc()
        ctypes.memset(o.address + 64, 0x41, 1)
        def broken(name, address):
            raise RuntimeError("tracker records are gone")
        kmemcache.debug._tracker_for = broken
        try:
            o.free()
        except kmemcache.RedzoneError as exc:
            lines = str(exc).splitlines()
            print(lines[0].split(":")[0], lines[-1])
        o.free()
        """
    )
    assert out == [
        "Right Redzone overwritten in lost "
        "(owner details unavailable: RuntimeError: tracker records are gone)"
    ]
