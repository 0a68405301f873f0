"""The typed face: every C method has a signature that ``inspect`` reads, and a user
program that uses the stubs passes ``mypy --strict``."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kmemcache
from kmemcache import _kmemcache as _core

USER_PROGRAM = '''
"""A program as a user writes it, typed strictly against kmemcache's stubs."""

import ctypes
import os
import pickle
import warnings

import kmemcache
from kmemcache import (
    Cache, DoubleFreeError, Flags, Object, RedzoneError, SharedCache, SharedObject,
    SlabError, SlabStats, SlabWarning, StaleObjectError, kcalloc, kfree, kmalloc, krealloc,
    ksize, kzalloc,
)
from kmemcache.shared import peek, regions, unlink
from kmemcache.debug import LiveObject, Track, set_on_error
from kmemcache.kmalloc import SIZE_CLASSES, SizeClass, large_stats, shrink, size_class


def report(exc: SlabError) -> str:
    where: int | None = exc.address
    offset: int | None = exc.offset
    name: str | None = exc.cache
    alloc: Track | None = exc.alloc_track
    lines = [f"{name} {where} {offset} {exc.problems} {exc.report['message']}"]
    if alloc is not None:
        lines.append(alloc.site)
    if exc.free_track is not None:
        lines.append(exc.free_track.site)
    lines += [f"{o.address:x}" for o in exc.objects]
    return "\\n".join(lines)


def main() -> int:
    with Cache("task_ctx", 1512, align=64, flags=Flags.RED_ZONE | Flags.STORE_USER) as cache:
        ctx: Object = cache.zalloc()
        view = memoryview(ctx)
        view[:4] = b"abcd"
        view.release()
        assert ctx.address % 64 == 0 and len(ctx) == 1512
        owner: Cache | None = ctx.cache
        assert owner is cache
        ctypes.memmove(ctx.address + 1512, b"A", 1)
        try:
            ctx.free()
        except RedzoneError as exc:
            print(report(exc))
            ctx.free()
        objs: list[Object] = cache.alloc_bulk(3, zero=True)
        cache.free_bulk(objs)
        try:
            cache.free(objs[0])
        except DoubleFreeError as exc:
            print(report(exc))
        stats: SlabStats = cache.stats()
        leaks: list[LiveObject] = cache.leaks()
        problems: int = cache.validate()
        given: int = cache.shrink()
        print(stats.active_objs, len(leaks), problems, given, cache.name, cache.size)
    buf = kzalloc(100, align=64)
    buf = krealloc(buf, 3000)
    print(ksize(buf), kmemcache.slabinfo().count("\\n"))
    kfree(buf)
    kfree(kcalloc(4, 8))
    kmalloc(0).free()
    cls: SizeClass | None = size_class(100)
    print(cls, SIZE_CLASSES[0].name, large_stats().objects, shrink())
    previous: str = set_on_error("warn")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        obj = Cache("warned", 64).alloc()
        obj.free()
        obj.free()
    for w in seen:
        if isinstance(w.message, SlabWarning):
            error: SlabError = w.message.error
            print(w.message.report["kind"], type(error).__name__)
    set_on_error(previous)
    name = f"typed-{os.getpid()}"
    with SharedCache(name, 1512, align=64, capacity=8 << 20) as shared:
        try:
            frame: SharedObject = shared.zalloc()
            offset: int = frame.offset
            again: SharedObject = pickle.loads(pickle.dumps(frame))
            same: SharedObject = shared.object_at(offset)
            print(again.generation == frame.generation, same.cache is shared)
            del again, same
            frame.free()
            try:
                shared.object_at(offset)
            except StaleObjectError as exc:
                print(type(exc).__name__)
            other: SharedCache = SharedCache.attach(name)
            other.close()
            stats, info = peek(name)
            print(stats.active_objs, info["processes"], name in regions(), shared.reclaim())
        finally:
            unlink(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def _methods() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for cls in (kmemcache.Cache, kmemcache.Object, kmemcache.SharedCache, kmemcache.SharedObject):
        for name, member in vars(cls).items():
            if callable(member) and (
                not name.startswith("__") or name in ("__enter__", "__exit__")
            ):
                found.append((f"{cls.__name__}.{name}", getattr(cls, name)))
    for name in dir(_core):
        member = getattr(_core, name)
        if inspect.isbuiltin(member):
            found.append((name, member))
    return found


@pytest.mark.parametrize("name,method", _methods(), ids=[n for n, _ in _methods()])
def test_every_c_method_has_a_signature(name: str, method: object) -> None:
    signature = inspect.signature(method)  # type: ignore[arg-type]
    if name.startswith(("Cache.", "Object.", "SharedObject.")) or (
        name.startswith("SharedCache.") and name != "SharedCache.attach"
    ):
        assert next(iter(signature.parameters)) == "self", signature


def test_signatures_say_what_the_calls_take() -> None:
    assert str(inspect.signature(kmemcache.Cache.alloc_bulk)) == "(self, /, n, zero=False)"
    assert str(inspect.signature(kmemcache.Cache.free)) == "(self, obj, /)"
    assert str(inspect.signature(kmemcache.kmalloc)) == "(size, align=0)"
    assert str(inspect.signature(kmemcache.krealloc)) == "(obj, new_size, align=0)"
    assert (
        str(inspect.signature(kmemcache.Cache))
        == "(name, size, align=0, flags=0, ctor=None, *, limit=None)"
    )
    assert (
        str(inspect.signature(kmemcache.SharedCache))
        == "(name, size, align=0, flags=0, *, capacity, max_processes=64, ctor=None)"
    )
    assert str(inspect.signature(kmemcache.SharedCache.attach)) == "(name, *, ctor=None)"


def test_buffer_dunders_exist_where_the_stub_says() -> None:
    assert hasattr(kmemcache.Object, "__buffer__") == (sys.version_info >= (3, 12))


def test_a_user_program_passes_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
