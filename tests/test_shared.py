"""Shared caches from Python: the region, objects passed between processes by
reference, who holds what, and processes killed at any moment.

Every region a test makes has a name unique to the run (the ``shared_name``
fixture) and is unlinked after the test; the session ends by checking that
/dev/shm holds none of them.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import multiprocessing
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import run_python

import kmemcache
from kmemcache import (
    CacheBusyError,
    DoubleFreeError,
    Flags,
    InvalidFreeError,
    RedzoneError,
    SharedCache,
    SharedObject,
    StaleObjectError,
    shared,
)
from kmemcache import _kmemcache as _core

MiB = 1 << 20
Name = Callable[[], str]

# Python 3.12 warns at fork() in a process with threads (the engine's purge
# thread): the engine takes its locks around fork (pthread_atfork), and the
# children here use nothing else that a thread could hold.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)


@pytest.fixture
def cache(shared_name: Name) -> Iterator[SharedCache]:
    c = SharedCache(shared_name(), 1512, 64, capacity=64 * MiB)
    yield c
    if not c.destroyed:
        c.close()


# --- the region ---------------------------------------------------------------------


def test_create_and_attach(shared_name: Name) -> None:
    name = shared_name()
    with SharedCache(name, 1000, 128, capacity=32 * MiB, max_processes=8) as a:
        assert (a.name, a.size, a.align) == (name, 1000, 128)
        info = a.info()
        assert info["region"] == shared.region_name(name) == f"/kmemcache.{os.getuid()}.{name}"
        assert info["max_processes"] == 8 and info["processes"] == 1
        assert info["region_bytes"] <= 32 * MiB
        assert name in shared.regions()
        with SharedCache.attach(name) as b:
            assert isinstance(b, SharedCache)
            assert (b.size, b.align, b.nonce) == (1000, 128, a.nonce)
            assert a.info()["processes"] == 2
            o = a.zalloc()
            assert o.address % 128 == 0
            p = b.object_at(o.offset)
            assert p.address % 128 == 0 and p.address != o.address  # two mappings
            memoryview(o)[:5] = b"hello"
            assert bytes(memoryview(p)[:5]) == b"hello"
            p.free()  # any attachment frees
            with pytest.raises(DoubleFreeError):
                o.free()
        assert a.info()["processes"] == 1


def test_bad_arguments_change_nothing(shared_name: Name) -> None:
    name = shared_name()
    with pytest.raises(TypeError, match="capacity"):
        SharedCache(name, 64)  # type: ignore[call-arg]
    for kwargs, what in [
        ({"capacity": 4096}, "too small"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": MiB * 8, "max_processes": 0}, "max_processes"),
        ({"capacity": MiB * 8, "max_processes": 5000}, "max_processes"),
        ({"capacity": MiB * 8, "align": 3}, "align"),
        ({"capacity": MiB * 8, "flags": 1}, "flags"),
    ]:
        with pytest.raises(ValueError, match=what):
            SharedCache(name, 64, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'/'"):
        SharedCache("a/b", 64, capacity=8 * MiB)
    with pytest.raises(ValueError, match="whitespace"):
        SharedCache("a b", 64, capacity=8 * MiB)
    assert name not in shared.regions()
    with pytest.raises(FileNotFoundError):
        SharedCache.attach(name)
    with pytest.raises(FileNotFoundError):
        shared.unlink(name)


def test_too_small_says_what_fits(shared_name: Name) -> None:
    with pytest.raises(ValueError, match=r"\d+ bytes at least"):
        SharedCache(shared_name(), 4 * MiB, capacity=4 * MiB + 4096)


def test_exists(cache: SharedCache) -> None:
    with pytest.raises(FileExistsError, match="exists already"):
        SharedCache(cache.name, 64, capacity=8 * MiB)
    assert cache.info()["processes"] == 1


def test_unlink_keeps_attached_working(cache: SharedCache) -> None:
    o = cache.alloc()
    cache.unlink()
    assert cache.name not in shared.regions()
    with pytest.raises(FileNotFoundError):
        SharedCache.attach(cache.name)
    p = cache.alloc()
    o.free()
    p.free()
    assert cache.validate() == 0
    with pytest.raises(FileNotFoundError):
        cache.unlink()


def test_close_while_referenced(cache: SharedCache) -> None:
    o = cache.alloc()
    with pytest.raises(CacheBusyError, match="1 handle"):
        cache.close()
    assert not cache.destroyed
    o.free()
    cache.close()
    assert cache.destroyed
    with pytest.raises(ValueError, match="destroyed"):
        cache.alloc()
    assert repr(cache) == "<kmemcache.SharedCache (detached)>"


def test_misuse_of_the_type(shared_name: Name) -> None:
    raw = SharedCache.__new__(SharedCache)
    with pytest.raises(ValueError, match="uninitialised"):
        raw.alloc()
    kmemcache.Cache.__init__(raw, shared_name(), 64)  # a private cache inside
    with pytest.raises(TypeError, match="not shared"):
        raw.alloc()
    with pytest.raises(TypeError, match="not shared"):
        raw.object_at(0)
    kmemcache.Cache.destroy(raw)  # the private cache it holds
    with pytest.raises(TypeError):
        SharedCache.__init__(kmemcache.Cache("private", 64), "x", 64, capacity=MiB)  # type: ignore[arg-type]


def test_debug_flags_on_a_shared_cache(shared_name: Name) -> None:
    flags = Flags.CONSISTENCY_CHECKS | Flags.RED_ZONE | Flags.POISON | Flags.STORE_USER
    with SharedCache(shared_name(), 100, 64, flags, capacity=8 * MiB) as c:
        assert c.info()["magazine"] == 0  # every check at the call
        o = c.alloc()
        assert bytes(memoryview(o)[:4]) == b"\x5a" * 4  # POISON: uninitialised
        (leak,) = c.leaks()
        assert leak.address == o.address and leak.alloc is not None
        assert "test_debug_flags_on_a_shared_cache" in leak.alloc.site
        o.free()
        assert c.validate() == 0


def test_exit_never_replaces_the_blocks_exception(shared_name: Name) -> None:
    with pytest.warns(RuntimeWarning, match="the shared cache could not be closed: .*Busy"):
        with pytest.raises(KeyError) as raised:
            with SharedCache(shared_name(), 64, 64, capacity=4 * MiB) as c:
                obj = c.alloc()
                raise KeyError("the block's")
    assert raised.value.__context__ is None and not c.destroyed
    if hasattr(raised.value, "__notes__"):
        assert "CacheBusyError" in raised.value.__notes__[0]
    obj.free()
    assert c.__exit__(None, None, None) is None and c.destroyed


def test_krealloc_of_a_shared_object_is_refused(cache: SharedCache) -> None:
    obj = cache.alloc()
    memoryview(obj)[:4] = b"kept"
    with pytest.raises(TypeError, match="krealloc of a SharedObject"):
        kmemcache.krealloc(obj, 4096)
    assert bytes(memoryview(obj)[:4]) == b"kept" and cache.stats().active_objs == 1
    obj.free()


def test_emfile_is_reported_as_such(shared_name: Name) -> None:
    name = shared_name()
    SharedCache(name, 64, 64, capacity=4 * MiB).close()
    out = run_python(
        f"""
        import errno, os, resource
        from kmemcache import SharedCache
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(fds.pop())  # one left: the region's; /proc is refused
        try:
            SharedCache.attach({name!r})
        except OSError as e:
            print(errno.errorcode.get(e.errno), e)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("EMFILE"), out.stdout


def test_attachments_made_by_unpickling_are_bounded(shared_name: Name) -> None:
    """A worker that unpickles objects of many short-lived regions, one after the
    other, keeps a bounded number of descriptors (it kept one per region)."""
    names = [shared_name() for _ in range(40)]
    out = run_python(
        f"""
        import gc, os, pickle
        from kmemcache import SharedCache, shared
        fds = []
        for name in {names!r}:
            c = SharedCache(name, 64, 64, capacity=2 << 20, max_processes=2)
            obj = c.alloc()
            data = pickle.dumps(obj)  # a reference in flight keeps the object
            del obj
            c.close()  # as if made by another process: this one holds nothing
            got = pickle.loads(data)  # attaches
            got.free()
            del got
            shared.unlink(name)
            gc.collect()
            fds.append(len(os.listdir("/proc/self/fd")))
        print(fds[20], fds[-1])
        """
    )
    assert out.returncode == 0, out.stderr
    settled, last = map(int, out.stdout.split())
    assert last == settled, out.stdout


def test_peek_reads_without_attaching(cache: SharedCache) -> None:
    objs = cache.alloc_bulk(30)
    stats, info = shared.peek(cache.name)
    assert stats.active_objs == 30 and stats.objsize == 1536
    assert info["processes"] == 1 and info["nonce"] == cache.nonce
    cache.free_bulk(objs)
    assert shared.peek(cache.name)[0].active_objs == 0


# --- objects ------------------------------------------------------------------------


def test_the_cache_api(cache: SharedCache) -> None:
    o = cache.zalloc()
    assert isinstance(o, SharedObject) and isinstance(o, kmemcache.Object)
    assert len(o) == 1512 and o.address % 64 == 0 and o.cache is cache
    assert bytes(o) == bytes(1512)
    view = memoryview(o)
    with pytest.raises(BufferError):
        o.free()
    view.release()
    objs = cache.alloc_bulk(50, zero=True)
    assert len({x.address for x in objs}) == 50
    s = cache.stats()
    assert s.active_objs == 51 and s.objsize == 1536 and s.allocs >= 51
    assert cache.validate() == 0
    assert len(cache.leaks()) == 51
    cache.free_bulk(objs)
    cache.free(o)
    with pytest.raises(DoubleFreeError):
        cache.free(o)
    assert cache.stats().active_objs == 0
    assert cache.shrink() >= 0
    assert repr(cache).startswith(f"<kmemcache.SharedCache '{cache.name}' size=1512")


def test_free_bulk_is_all_or_nothing(cache: SharedCache) -> None:
    objs = cache.alloc_bulk(5)
    with pytest.raises(DoubleFreeError):
        cache.free_bulk([objs[0], objs[1], objs[0]])
    objs[3].free()
    with pytest.raises(DoubleFreeError, match="item 3"):
        cache.free_bulk(objs)
    assert cache.stats().active_objs == 4
    cache.free_bulk(objs[:3] + objs[4:])
    assert cache.stats().active_objs == 0


def test_foreign_objects(cache: SharedCache, make_cache: Callable[..., kmemcache.Cache]) -> None:
    private = make_cache("private", 1512, 64)
    p = private.alloc()
    with pytest.raises(InvalidFreeError):
        cache.free(p)
    o = cache.alloc()
    with pytest.raises(InvalidFreeError):
        private.free(o)
    kmemcache.kfree(o)  # kfree finds shared objects too
    assert o.freed
    p.free()


def test_zalloc_and_ctor(shared_name: Name) -> None:
    calls = []

    def ctor(view: memoryview) -> None:
        calls.append(1)
        view[:4] = b"ctor"

    with SharedCache(shared_name(), 256, capacity=8 * MiB, ctor=ctor) as c:
        o = c.alloc()
        assert bytes(memoryview(o)[:4]) == b"ctor"
        assert len(calls) == c.stats().objperslab  # once per object of the slab
        with pytest.raises(ValueError, match="ctor"):
            c.zalloc()
        # attached without the ctor: it uses objects, and cannot build slabs
        with SharedCache.attach(c.name) as b:
            seen = b.object_at(o.offset)
            assert bytes(memoryview(seen)[:4]) == b"ctor"
            del seen
            with pytest.raises(ValueError, match="constructor"):
                b.alloc_bulk(c.stats().num_objs + 1)
        o.free()
        # attached with it: it builds slabs, running the ctor itself
        with SharedCache.attach(c.name, ctor=ctor) as b:
            before = len(calls)
            objs = b.alloc_bulk(c.stats().num_objs + 1)
            assert len(calls) > before
            assert all(bytes(memoryview(x)[:4]) == b"ctor" for x in objs)
            b.free_bulk(objs)
    with SharedCache(shared_name(), 256, capacity=8 * MiB) as plain:
        with pytest.raises(ValueError, match="without a constructor"):
            SharedCache.attach(plain.name, ctor=ctor)
        assert plain.info()["processes"] == 1


# --- references -------------------------------------------------------------------------


def test_pickles_are_small_references(cache: SharedCache) -> None:
    o = cache.zalloc()
    memoryview(o)[:3] = b"abc"
    data = pickle.dumps(o)
    assert len(data) < 100  # whatever the object's size
    assert cache.info()["pickled"] == 1
    p = pickle.loads(data)
    assert p.address == o.address and p.generation == o.generation
    assert p.cache is cache  # the attachment this process has
    assert cache.info()["pickled"] == 0
    assert copy.copy(o).address == o.address
    # one process, three handles: it lets go when the last one goes
    del o
    assert cache.stats().active_objs == 1
    del p
    assert cache.stats().active_objs == 0


def test_a_pickle_keeps_its_object_until_loaded(cache: SharedCache) -> None:
    o = cache.alloc()
    data = pickle.dumps(o)
    del o  # the only handle: but a reference is in flight
    assert cache.stats().active_objs == 1
    p = pickle.loads(data)
    del p
    assert cache.stats().active_objs == 0
    with pytest.raises(StaleObjectError, match="freed"):
        pickle.loads(data)


def test_a_stale_reference_is_refused_after_reuse(cache: SharedCache) -> None:
    o = cache.alloc()
    data = pickle.dumps(o)
    o.free()
    q = cache.alloc()  # the same slot again, most likely
    with pytest.raises(StaleObjectError):
        pickle.loads(data)
    assert cache.reclaim(pickled=True) == 0
    q.free()


def test_a_lost_pickle_is_reclaimed_on_demand(cache: SharedCache) -> None:
    o = cache.alloc()
    pickle.dumps(o)
    del o
    assert cache.stats().active_objs == 1
    assert cache.reclaim() == 0  # nobody died
    assert cache.reclaim(pickled=True) == 1
    assert cache.stats().active_objs == 0


def test_a_region_made_again_is_another(shared_name: Name) -> None:
    name = shared_name()
    with SharedCache(name, 64, capacity=8 * MiB) as a:
        data = pickle.dumps(a.alloc())
        a.unlink()
        a.reclaim(pickled=True)
    with SharedCache(name, 64, capacity=8 * MiB):
        with pytest.raises(StaleObjectError, match="made again"):
            pickle.loads(data)


def _reference(
    cache: SharedCache, offset: int, generation: int, nonce: int | None = None, name: bytes = b""
) -> bytes:
    """A reference as a SharedObject pickles it: nonce, offset, generation, name."""
    nonce = cache.nonce if nonce is None else nonce
    return struct.pack("=QQI", nonce, offset, generation) + (name or cache.name.encode())


def test_a_reference_is_its_fields_packed(cache: SharedCache) -> None:
    obj = cache.alloc()
    fn, (data,) = obj.__reduce_ex__(5)
    assert fn is kmemcache._shared_ref
    assert data == _reference(cache, obj.offset, obj.generation)
    got = fn(data)  # claims the reference in flight
    assert got.address == obj.address and got.cache is cache
    assert cache.info()["pickled"] == 0
    obj.free()


_BAD_REFERENCES: list[tuple[str, Callable[[SharedCache, SharedObject], Any], type, str]] = [
    ("str", lambda c, o: "x" * 30, TypeError, "is bytes, not str"),
    ("bytearray", lambda c, o: bytearray(30), TypeError, "is bytes, not bytearray"),
    ("no name", lambda c, o: _reference(c, o.offset, o.generation)[:20], ValueError, "of 20 bytes"),
    ("too long", lambda c, o: _reference(c, 0, 1) + b"x" * 64, ValueError, "not a reference"),
    ("generation 0", lambda c, o: _reference(c, o.offset, 0), ValueError, "generation 0"),
    ("offset far out", lambda c, o: _reference(c, 1 << 60, 1), ValueError, "no object slot"),
    ("offset 2^64-1", lambda c, o: _reference(c, 2**64 - 1, 1), ValueError, "no object slot"),
    ("between slots", lambda c, o: _reference(c, o.offset + 1, 1), ValueError, "no object slot"),
    (
        "generation",
        lambda c, o: _reference(c, o.offset, o.generation + 1),
        StaleObjectError,
        "gone",
    ),
    ("nonce", lambda c, o: _reference(c, 0, 1, c.nonce ^ 1), StaleObjectError, "made again"),
    ("unknown name", lambda c, o: _reference(c, 0, 1, name=b"no-such"), OSError, "no shared cache"),
    ("not UTF-8", lambda c, o: _reference(c, 0, 1, name=b"\xff\xfe"), ValueError, "utf-8"),
    ("whitespace", lambda c, o: _reference(c, 0, 1, name=b"a b"), ValueError, "whitespace"),
]


@pytest.mark.parametrize(
    "make,error,match", [case[1:] for case in _BAD_REFERENCES], ids=[c[0] for c in _BAD_REFERENCES]
)
def test_a_bad_reference_is_refused_and_changes_nothing(
    cache: SharedCache,
    make: Callable[[SharedCache, SharedObject], Any],
    error: type[Exception],
    match: str,
) -> None:
    obj = cache.alloc()
    info = cache.info()
    with pytest.raises(error, match=match):
        kmemcache._shared_ref(make(cache, obj))
    after = cache.info()
    assert (after["pickled"], after["processes"]) == (info["pickled"], info["processes"])
    assert cache.stats().active_objs == 1 and not obj.freed
    obj.free()


def test_a_reference_to_a_detached_cache_attaches_again(shared_name: Name) -> None:
    name = shared_name()
    c = SharedCache(name, 64, 64, capacity=4 * MiB)
    keeper = SharedCache.attach(name)  # the region lives on while one is attached
    obj = c.alloc()
    data = pickle.dumps(obj)
    del obj
    c.close()
    got = pickle.loads(data)  # not the detached attachment: a new one
    assert got.cache is not c and not got.cache.destroyed and got.cache.nonce == c.nonce
    got.free()
    del got
    data = pickle.dumps(keeper.alloc())
    keeper.close()
    shared.unlink(name)
    gc.collect()  # the attachment made above goes with its last handle
    for attachment in shared._attachments():
        assert attachment.name != name
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_an_attachment_in_use_outlives_those_of_other_regions(shared_name: Name) -> None:
    """Attachments made by unpickling are kept, the 8 most recently used: one that
    references keep naming stays while a worker sees many other regions."""
    names = [shared_name() for _ in range(12)]
    out = run_python(
        f"""
        import pickle, weakref
        from kmemcache import SharedCache, shared

        def references(name, n):
            c = SharedCache(name, 64, 64, capacity=2 << 20, max_processes=2)
            obj = c.alloc()
            data = [pickle.dumps(obj) for _ in range(n)]
            del obj
            c.close()  # as if made by another process: this one holds nothing
            return data

        hot = references({names[0]!r}, 13)
        first = pickle.loads(hot.pop())
        kept = weakref.ref(first.cache)
        del first  # only the list of attachments holds it now
        for name in {names[1:]!r}:
            pickle.loads(references(name, 1)[0]).free()
            pickle.loads(hot.pop())  # the hot region, named again
        print(kept() is not None, pickle.loads(hot.pop()).cache is kept())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_an_attachment_being_dropped_is_not_found(shared_name: Name) -> None:
    """A weakref callback runs while an attachment is deallocated: a reference it
    unpickles resolves to another attachment, not to the dying one."""
    out = run_python(
        f"""
        import pickle, weakref
        from kmemcache import SharedCache

        keeper = SharedCache({shared_name()!r}, 64, 64, capacity=2 << 20)
        obj = keeper.alloc()
        data = pickle.dumps(obj)
        second = SharedCache.attach(keeper.name)  # found first: the latest made
        got = []
        ref = weakref.ref(second, lambda _: got.append(pickle.loads(data)))
        del second
        print(got[0].cache is keeper)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"], out.stdout


def test_object_at(cache: SharedCache) -> None:
    o = cache.alloc()
    assert cache.object_at(o.offset).address == o.address
    with pytest.raises(ValueError, match="no object slot"):
        cache.object_at(o.offset + 1)
    with pytest.raises(ValueError, match="no object slot"):
        cache.object_at(1 << 60)
    with pytest.raises(TypeError):
        cache.object_at("0")  # type: ignore[arg-type]
    off = o.offset
    o.free()
    with pytest.raises(StaleObjectError, match="no live object"):
        cache.object_at(off)


def test_the_cache_pickles_by_name(cache: SharedCache) -> None:
    assert pickle.loads(pickle.dumps(cache)) is cache


# --- other processes ---------------------------------------------------------------------


def _fill(obj: SharedObject, value: int) -> SharedObject:
    memoryview(obj)[:] = bytes([value]) * len(obj)
    return obj


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_fills_buffers_in_place(shared_name: Name, method: str) -> None:
    with SharedCache(shared_name(), 4096, 4096, capacity=16 * MiB) as c:
        bufs = [c.zalloc() for _ in range(16)]
        with multiprocessing.get_context(method).Pool(2) as pool:
            back = pool.starmap(_fill, [(b, i) for i, b in enumerate(bufs)])
        for i, (b, r) in enumerate(zip(bufs, back, strict=True)):
            assert r.address == b.address  # the same memory came back
            assert bytes(memoryview(b)) == bytes([i]) * 4096
            assert b.address % 4096 == 0
        del back, b, r  # handles of the same objects: gone before the close
        c.free_bulk(bufs)
        assert c.stats().active_objs == 0
        c.reclaim()
        assert c.validate() == 0


def _free_it(obj: SharedObject) -> None:
    obj.free()


def test_double_free_across_processes(cache: SharedCache) -> None:
    o = cache.alloc()
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_free_it, args=(o,))
    p.start()
    p.join()
    assert p.exitcode == 0
    with pytest.raises(DoubleFreeError, match="allocated again|already free"):
        o.free()
    again = cache.alloc()  # the slot lives again: the old handle is still stale
    with pytest.raises(DoubleFreeError):
        cache.free(o)
    again.free()


def test_a_forked_child_holds_nothing_it_inherited(cache: SharedCache) -> None:
    o = cache.alloc()
    pid = os.fork()
    if pid == 0:
        # dropping an inherited handle does not let the parent's object go
        global _inherited
        _inherited = None
        handle = o
        del handle
        os._exit(0 if cache.stats().active_objs == 1 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.stats().active_objs == 1
    o.free()


def test_exit_lets_go(cache: SharedCache) -> None:
    out = run_python(
        f"""
        from kmemcache import SharedCache
        c = SharedCache.attach({cache.name!r})
        keep = [c.alloc() for _ in range(10)]
        print(c.stats().active_objs)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10"]
    # its free objects at exit, its objects as their handles went at shutdown
    assert cache.stats().active_objs == 0 and cache.stats().cached_objs == 0
    assert cache.info()["processes"] == 1


def test_a_write_while_exiting_reaches_no_other_process(cache: SharedCache) -> None:
    """An exit handler that runs after kmemcache's (registered before it) writes
    through a handle that still works: the object is still the exiting
    process's, so the write lands in no object another process was given."""
    code = f"""
        import atexit, sys
        from kmemcache import SharedCache

        def late():
            print("exiting", flush=True)
            sys.stdin.readline()  # the other process fills the region meanwhile
            view[:] = b"\\xab" * len(view)
            print("wrote", flush=True)

        atexit.register(late)
        c = SharedCache.attach({cache.name!r})
        obj = c.alloc()
        view = memoryview(obj)
        print(obj.offset, flush=True)
        """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        offset = int(child.stdout.readline())
        assert child.stdout.readline() == "exiting\n"
        mine = []
        with pytest.raises(MemoryError):
            while True:
                mine.append(cache.zalloc())
        assert offset not in {o.offset for o in mine}  # still the exiting process's
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "wrote\n"
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    assert not any(bytes(memoryview(o)).strip(b"\0") for o in mine)
    cache.free_bulk(mine)
    assert cache.stats().active_objs == 0  # its handle went at shutdown


def test_a_dead_process_is_reclaimed(cache: SharedCache) -> None:
    mine = cache.alloc()
    pid = os.fork()
    if pid == 0:
        objs = [cache.alloc() for _ in range(7)]
        os.kill(os.getpid(), signal.SIGKILL)
        del objs
    os.waitpid(pid, 0)
    assert cache.stats().active_objs == 8
    assert cache.reclaim() == 7
    assert cache.stats().active_objs == 1
    assert cache.validate() == 0
    mine.free()


def test_red_zones_across_processes(shared_name: Name) -> None:
    with SharedCache(shared_name(), 100, 64, Flags.RED_ZONE, capacity=8 * MiB) as c:
        o = c.alloc()
        pid = os.fork()
        if pid == 0:
            ctypes.memmove(o.address + 100, b"A", 1)  # one byte too far, in another process
            os._exit(0)
        os.waitpid(pid, 0)
        with pytest.raises(RedzoneError, match="Right Redzone overwritten"):
            o.free()
        o.free()  # repaired, then freed


# --- crashes -----------------------------------------------------------------------------


def _churn(cache: SharedCache, seed: int) -> None:
    """What a child does until it is killed: alloc, free, pickle and unpickle,
    drop, hold a second handle; never returns. Two handles of one object may
    be freed both: the second free is a DoubleFreeError, as it must be."""
    rng = random.Random(seed)
    held: list[SharedObject] = []
    while True:
        r = rng.random()
        try:
            if r < 0.4 or not held:
                held.append(cache.alloc())
            elif r < 0.6:
                held.pop(rng.randrange(len(held))).free()
            elif r < 0.7:
                held.append(pickle.loads(pickle.dumps(held[rng.randrange(len(held))])))
            elif r < 0.8:
                del held[rng.randrange(len(held))]
            elif r < 0.85:
                held.append(cache.object_at(held[rng.randrange(len(held))].offset))
            elif r < 0.9:
                pickle.dumps(held[rng.randrange(len(held))])  # never loaded
        except (DoubleFreeError, StaleObjectError):
            pass
        except ValueError as exc:  # a handle whose object another handle freed
            assert "freed" in str(exc), exc
        if len(held) > 40:
            del held[:20]


def _check_after_deaths(cache: SharedCache, live: int) -> None:
    cache.reclaim()
    assert cache.validate() == 0
    cache.reclaim(pickled=True)
    assert cache.stats().active_objs == live
    assert cache.validate() == 0
    info = cache.info()
    assert info["processes"] == 1 and info["pickled"] == 0


def test_children_killed_at_random_moments(shared_name: Name) -> None:
    """Three hundred children, each SIGKILLed at a random moment of its churn."""
    with SharedCache(shared_name(), 200, 64, capacity=16 * MiB) as c:
        mine = c.alloc_bulk(5)
        rng = random.Random(7)
        for round_ in range(100):
            pids = []
            for k in range(3):
                pid = os.fork()
                if pid == 0:
                    try:
                        _churn(c, round_ * 3 + k)
                    finally:
                        os._exit(1)
                pids.append(pid)
            time.sleep(rng.random() * 0.01)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            _check_after_deaths(c, 5)
        c.free_bulk(mine)


def test_children_killed_at_every_crash_point(shared_name: Name) -> None:
    """A death at each of the first 150 crash points of the engine's paths, and
    at 150 more anywhere: mid-alloc, mid-free, mid-grow, mid-pickle, with the
    region's lock held or not."""
    with SharedCache(shared_name(), 200, 64, capacity=16 * MiB) as c:
        mine = c.alloc_bulk(5)
        rng = random.Random(11)
        recoveries = c.info()["recoveries"]
        for i in range(300):
            point = i + 1 if i < 150 else rng.randrange(150, 3000)
            pid = os.fork()
            if pid == 0:
                try:
                    signal.alarm(20)
                    _core._shared_crash_after(point)
                    _churn(c, i)
                finally:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
            _check_after_deaths(c, 5)
        assert c.info()["recoveries"] > recoveries  # some died holding the lock
        c.free_bulk(mine)


def test_a_dead_process_cached_objects_come_back(shared_name: Name) -> None:
    """A process dies with objects in its magazine (free, reserved for it):
    filling the region afterwards gets every slot of it, those included. Live
    counts and validate() do not see cached objects; counting slots does."""
    name = shared_name()
    with SharedCache(name, 256, 64, capacity=2 * MiB, max_processes=2) as c:
        pid = os.fork()
        if pid == 0:
            try:
                theirs = SharedCache.attach(name)
                theirs.alloc().free()  # a refill: half a magazine, cached
                assert theirs.stats().cached_objs > 1
                os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        objs = []
        with pytest.raises(MemoryError):
            while True:
                objs.append(c.alloc())
        slots = c.info()["nslabs"] * c.stats().objperslab
        assert len(objs) == slots and c.stats().cached_objs == 0
        assert c.info()["processes"] == 1
        c.free_bulk(objs)


@pytest.mark.parametrize("call", ["alloc", "free"])
def test_validate_right_after_a_kill_reports_no_corruption(shared_name: Name, call: str) -> None:
    """A process killed inside a fast path (a magazine entry taken, its record
    not yet written; or the record written, the entry not yet pushed) left
    nothing corrupt, only what a reclaim gives back: validate reclaims first."""
    with SharedCache(shared_name(), 64, 64, capacity=16 * MiB) as c:
        pid = os.fork()
        if pid == 0:
            try:
                obj = c.alloc()  # registered, the magazine filled
                _core._shared_crash_after(1)
                obj.free() if call == "free" else c.alloc()
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert c.validate() == 0
        assert c.stats().active_objs == 0 and c.info()["processes"] == 1


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_no_region_left_by_a_killed_creator(shared_name: Name) -> None:
    name = shared_name()
    out = run_python(
        f"""
        import os, signal
        from kmemcache import SharedCache
        c = SharedCache({name!r}, 64, capacity=8 << 20)
        o = c.alloc()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert out.returncode == -signal.SIGKILL
    with SharedCache.attach(name) as c:  # the region outlives its creator
        assert c.stats().active_objs == 0  # attaching reclaimed the dead one's object
        assert c.info()["reclaimed"] == 1 and c.reclaim() == 0
        c.unlink()
