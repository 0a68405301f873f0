"""Misuse from Python that could crash the interpreter, each in its own process.

Every script runs under ``python -X dev`` (faulthandler on, the debug hooks of
Python's allocators), does the wrong thing on purpose, prints what it caught,
and must exit with status 0: a segfault, an abort or a hang fails the test
rather than the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import gc, sys
import numpy as np
import kmemcache
from kmemcache import Cache

def caught(what, fn):
    try:
        fn()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{what}: {type(exc).__name__}: {first}")
    else:
        print(f"{what}: no error")
"""


def run(code: str) -> list[str]:
    """Run PRELUDE + code in a fresh interpreter; its stdout lines."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Exception ignored" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def test_use_after_free_through_a_handle() -> None:
    out = run(
        """
        cache = Cache("uaf", 64)
        obj = cache.alloc()
        memoryview(obj)[:] = b"x" * 64
        obj.free()
        caught("memoryview", lambda: memoryview(obj))
        caught("numpy", lambda: np.frombuffer(obj, np.uint8))
        caught("bytes", lambda: bytes(obj))
        caught("len", lambda: len(obj))
        caught("address", lambda: obj.address)
        caught("with", lambda: obj.__enter__())
        print("freed", obj.freed, cache.stats().active_objs)
        """
    )
    assert out == [
        "memoryview: ValueError: operation on a freed kmemcache object",
        "numpy: ValueError: operation on a freed kmemcache object",
        "bytes: ValueError: operation on a freed kmemcache object",
        "len: ValueError: operation on a freed kmemcache object",
        "address: ValueError: operation on a freed kmemcache object",
        "with: ValueError: operation on a freed kmemcache object",
        "freed True 0",
    ]


def test_free_while_a_numpy_array_views_the_object() -> None:
    out = run(
        """
        cache = Cache("viewed", 64, align=64)
        obj = cache.zalloc()
        arr = np.frombuffer(obj, np.uint64)
        caught("free", obj.free)
        caught("cache.free", lambda: cache.free(obj))
        caught("free_bulk", lambda: cache.free_bulk([obj]))
        arr[:] = 7                      # the memory is still the object's
        print("sum", int(arr.sum()), "freed", obj.freed)
        sub = arr[2:4]                  # a view of the view holds it too
        del arr
        caught("free with a slice alive", obj.free)
        del sub
        obj.free()
        print("active", cache.stats().active_objs)
        """
    )
    assert out == [
        "free: BufferError: cannot free a kmemcache object while 1 buffer view of it exists",
        "cache.free: BufferError: cannot free a kmemcache object while 1 buffer view of it exists",
        "free_bulk: BufferError: cannot free item 0: 1 buffer view(s) of it exist",
        "sum 56 freed False",
        "free with a slice alive: BufferError: "
        "cannot free a kmemcache object while 1 buffer view of it exists",
        "active 0",
    ]


def test_double_free() -> None:
    out = run(
        """
        cache = Cache("twice", 32)
        obj = cache.alloc()
        obj.free()
        caught("free", obj.free)
        caught("cache.free", lambda: cache.free(obj))
        caught("free_bulk", lambda: cache.free_bulk([obj]))
        a, b = cache.alloc(), cache.alloc()
        print("distinct", a.address != b.address, cache.stats().active_objs)
        cache.free_bulk([a, b])
        """
    )
    assert out[0].startswith("free: DoubleFreeError: Object already free")
    assert out[1].startswith("cache.free: DoubleFreeError: Object already free")
    assert out[2].startswith("free_bulk: DoubleFreeError: Object already free")
    assert out[3] == "distinct True 2"


def test_destroy_with_live_objects() -> None:
    out = run(
        """
        cache = Cache("busy", 128)
        objs = cache.alloc_bulk(2)
        for i, o in enumerate(objs):
            memoryview(o)[:] = bytes([i + 1]) * 128
        caught("destroy", cache.destroy)
        caught("with", lambda: Cache.__exit__(cache, None, None, None))
        print("intact", [bytes(memoryview(o)) == bytes([i + 1]) * 128 for i, o in enumerate(objs)])
        cache.free_bulk(objs)
        cache.destroy()
        caught("alloc after destroy", cache.alloc)
        """
    )
    assert out[0].startswith("destroy: CacheBusyError:")
    assert "2 live" in out[0] and "busy" in out[0]
    assert out[1].startswith("with: CacheBusyError:")
    assert out[2] == "intact [True, True]"
    assert out[3] == "alloc after destroy: ValueError: operation on a destroyed kmemcache cache"


def test_ctor_that_keeps_a_view() -> None:
    out = run(
        """
        kept = []
        def slicer(view):
            kept.append(view[:8])              # a view made from the ctor's view
        def array(view):
            kept.append(np.frombuffer(view, np.uint8))
        def whole(view):
            kept.append(view)                  # the view itself: it gets released

        for ctor in (slicer, array):
            cache = Cache("keeper", 64, ctor=ctor)
            caught(ctor.__name__, cache.alloc)
            print("active", cache.stats().active_objs, "slabs", cache.stats().num_slabs)
            cache.shrink()
            cache.destroy()
            del cache
        gc.collect()
        # what the ctors kept still points at mapped memory: no crash here
        kept[0][:] = b"12345678"
        kept[1][:] = 9
        print("kept", bytes(kept[0]), int(kept[1].sum()))

        cache = Cache("whole", 64, ctor=whole)
        obj = cache.alloc()
        caught("released view", lambda: kept[-1][0])
        obj.free()
        """
    )
    assert out == [
        "slicer: ValueError: the ctor kept a view of the object's memory; it must not",
        "active 0 slabs 0",
        "array: ValueError: the ctor kept a view of the object's memory; it must not",
        "active 0 slabs 0",
        "kept b'12345678' 576",
        "released view: ValueError: operation forbidden on released memoryview object",
    ]


def test_ctor_that_misuses_its_cache() -> None:
    out = run(
        """
        holder = {}
        def destroyer(view):
            holder["cache"].destroy()
        def freer(view):
            view.obj.free()
        def recurse(view):
            holder["cache"].alloc()

        for ctor in (destroyer, freer, recurse):
            cache = holder["cache"] = Cache("selfish", 64, ctor=ctor)
            try:
                cache.alloc()
            except BaseException as exc:
                print(ctor.__name__, type(exc).__name__)
            s = cache.stats()
            print("active", s.active_objs, "slabs", s.num_slabs, "valid", cache.validate())
            cache.destroy()
        """
    )
    assert out == [
        "destroyer CacheBusyError",
        "active 0 slabs 0 valid 0",
        "freer BufferError",
        "active 0 slabs 0 valid 0",
        "recurse RecursionError",
        "active 0 slabs 0 valid 0",
    ]


def test_free_bulk_of_garbage() -> None:
    out = run(
        """
        cache = Cache("garbage", 64)
        live = cache.alloc_bulk(3)
        for junk in ([None], [1, 2], ["x"], [b"x" * 64], [bytearray(64)], [object()],
                     [live[0], live[0]], [*live, memoryview(b"")], [live[1], 12345]):
            caught(type(junk[-1]).__name__, lambda: cache.free_bulk(junk))
        caught("int", lambda: cache.free_bulk(5))
        caught("None", lambda: cache.free_bulk(None))
        def gen():
            yield live[0]
            raise RuntimeError("generator broke")
        caught("generator", lambda: cache.free_bulk(gen()))
        print("active", cache.stats().active_objs, [o.freed for o in live])
        cache.free_bulk(live)
        """
    )
    kinds = [line.split(": ")[1] for line in out[:9]]
    assert kinds == ["InvalidFreeError"] * 6 + ["DoubleFreeError"] + ["InvalidFreeError"] * 2
    assert out[9].startswith("int: TypeError")
    assert out[10].startswith("None: TypeError")
    assert out[11] == "generator: RuntimeError: generator broke"
    assert out[12] == "active 3 [False, False, False]"


def test_objects_outlive_a_dropped_cache_reference() -> None:
    out = run(
        """
        obj = Cache("dropped", 64).alloc()      # nothing else refers to the cache
        gc.collect()
        memoryview(obj)[:] = b"k" * 64
        print("alive", bytes(memoryview(obj))[:4], obj.cache.name)
        names = lambda: [c["name"] for c in kmemcache._kmemcache._caches()]
        print("listed", "dropped" in names())
        obj.free()
        del obj
        gc.collect()
        print("listed after", "dropped" in names())

        # a cycle: the cache holds one of its objects in an attribute
        cache = Cache("cyclic", 64)
        cache.keep = cache.alloc()
        cache.keep_view_owner = cache.alloc()
        del cache
        gc.collect()
        print("cycle collected", "cyclic" not in names())

        # many caches made and dropped: the classes keep their references
        class MyCache(Cache):
            pass
        for cls in (Cache, MyCache):
            before = sys.getrefcount(cls)
            for i in range(200):
                c = cls(f"c{i}", 16)
                c.alloc().free()
                del c
            gc.collect()
            print("class refs", cls.__name__, sys.getrefcount(cls) - before)
        """
    )
    assert out == [
        "alive b'kkkk' dropped",
        "listed True",
        "listed after False",
        "cycle collected True",
        "class refs Cache 0",
        "class refs MyCache 0",
    ]


def test_interpreter_exit_with_live_objects() -> None:
    out = run(
        """
        cache = Cache("atexit", 256, align=64)
        objs = cache.alloc_bulk(100)
        view = memoryview(objs[0])
        arr = np.frombuffer(objs[1], np.uint8)
        import ctypes
        class S(ctypes.Structure):
            _fields_ = [("x", ctypes.c_uint64)]
        s = S.from_buffer(objs[2])
        orphan = Cache("orphan", 64).alloc()
        cyclic = Cache("cyclic", 64)
        cyclic.me = cyclic
        cyclic.obj = cyclic.alloc()
        print("exiting with", cache.stats().active_objs, "live")
        sys.exit(0)
        """
    )
    assert out == ["exiting with 100 live"]


EXITS = {
    "exception": (
        """
        cache = Cache("raising", 64)
        objs = cache.alloc_bulk(10)
        try:
            raise SystemExit(0)
        finally:
            print("unwinding")
        """,
        ["unwinding"],
    ),
    "os._exit": (
        """
        import os
        cache = Cache("hard", 64)
        objs = cache.alloc_bulk(10)
        print("leaving")
        sys.stdout.flush()
        os._exit(0)
        """,
        ["leaving"],
    ),
    "atexit-free": (
        """
        import atexit
        cache = Cache("late", 64)
        objs = cache.alloc_bulk(10)
        atexit.register(lambda: (cache.free_bulk(objs), cache.destroy(), print("freed")))
        print("registered")
        """,
        ["registered", "freed"],
    ),
}


@pytest.mark.parametrize("how", sorted(EXITS))
def test_other_ways_to_exit_with_live_objects(how: str) -> None:
    code, expected = EXITS[how]
    assert run(code) == expected


def test_freed_handle_of_another_cache_and_foreign_frees() -> None:
    out = run(
        """
        a, b = Cache("a", 64), Cache("b", 64)
        x = a.alloc()
        y = b.alloc()
        caught("foreign", lambda: a.free(y))
        x.free()
        caught("freed foreign", lambda: b.free(x))
        caught("address", lambda: a.free(y.address))
        print("b still", b.stats().active_objs, "y live", not y.freed)
        y.free()
        """
    )
    assert out[0].startswith("foreign: InvalidFreeError:") and "belongs to cache b" in out[0]
    assert out[1].startswith("freed foreign: DoubleFreeError")
    assert out[2].startswith("address: InvalidFreeError:")
    assert out[3] == "b still 1 y live True"


def test_a_child_forked_while_another_thread_runs_a_ctor_can_destroy_the_cache() -> None:
    # The ctor's thread does not exist in the child: its ctor is not running
    # there, and the child's cache can be destroyed.
    out = run(
        """
        import os, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        inside, leave = threading.Event(), threading.Event()

        def ctor(view):
            inside.set()
            leave.wait(10)

        cache = Cache("forked", 64, ctor=ctor)
        t = threading.Thread(target=cache.alloc)
        t.start()
        inside.wait(10)
        caught("parent, ctor running", cache.destroy)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                cache.destroy()
            except Exception as exc:
                os.write(1, f"child: {type(exc).__name__}: {exc}\\n".encode())
                os._exit(1)
            os.write(1, b"child: destroyed\\n")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        leave.set()
        t.join()
        print("child status", os.waitstatus_to_exitcode(status))
        """
    )
    assert out[0].startswith("parent, ctor running: CacheBusyError: Cannot destroy forked")
    assert out[1:] == ["child: destroyed", "child status 0"]
