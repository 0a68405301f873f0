"""kmemcache.allocinfo: bytes by call site, exact, through every Python door."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import kmemcache
from kmemcache import (
    Cache,
    MemoryGroup,
    MemoryLimitError,
    allocinfo,
    kcalloc,
    kfree,
    kmalloc,
    krealloc,
    kzalloc,
)

HERE = os.path.abspath(__file__)


def here() -> int:
    """The caller's line."""
    return sys._getframe(1).f_lineno


def mine() -> dict[int, tuple[int, int]]:
    """{line: (bytes, count)} of this file's sites."""
    return {s.line: (s.bytes, s.count) for s in allocinfo.snapshot() if s.file == HERE}


@pytest.fixture(autouse=True)
def _recording() -> Iterator[None]:
    allocinfo.start()
    try:
        yield
    finally:
        allocinfo.stop()


def test_start_stop_and_snapshot_when_off() -> None:
    assert allocinfo.is_tracing()
    allocinfo.start()  # again: nothing changes
    assert allocinfo.is_tracing()
    obj, line = kmalloc(100), here()
    assert mine() == {line: (100, 1)}
    allocinfo.stop()
    assert not allocinfo.is_tracing()
    with pytest.raises(RuntimeError, match="allocinfo.start"):
        allocinfo.snapshot()
    allocinfo.start()
    assert mine() == {}  # stop forgot it; its free now is nobody's
    kfree(obj)
    assert mine() == {}


def test_bad_input_is_refused() -> None:
    with pytest.raises(TypeError, match="takes a str"):
        kmemcache._kmemcache._allocinfo_start(b"/x/")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kmemcache._kmemcache._allocinfo_sites(1)  # type: ignore[call-arg]
    assert allocinfo.is_tracing()


def test_cache_doors_by_line_largest_first(make_cache: Any) -> None:
    small = make_cache("ai-small", 24)
    big = make_cache("ai-big", 1000)
    a, la = [small.alloc() for _ in range(5)], here()
    b, lb = big.zalloc(), here()
    c, lc = big.alloc_bulk(3), here()
    assert mine() == {la: (120, 5), lb: (1000, 1), lc: (3000, 3)}
    sites = [s for s in allocinfo.snapshot() if s.file == HERE]
    assert [s.line for s in sites] == [lc, lb, la]
    assert sites[0].function == "test_cache_doors_by_line_largest_first"
    big.free_bulk(c)
    b.free()
    for o in a[:4]:
        small.free(o)
    assert mine() == {la: (24, 1)}
    del a  # the last handle dropped without free(): forgotten too
    assert mine() == {}


def test_the_kmalloc_family() -> None:
    a, la = kmalloc(100), here()
    b, lb = kzalloc(200, align=64), here()
    c, lc = kcalloc(3, 50), here()
    assert mine() == {la: (100, 1), lb: (200, 1), lc: (150, 1)}
    a2, l2 = krealloc(a, 120), here()  # in place: the same object, now krealloc's
    assert a2 is a and mine() == {l2: (120, 1), lb: (200, 1), lc: (150, 1)}
    a3, l3 = krealloc(a2, 5000), here()  # moved: the old one freed
    assert a3 is not a2 and mine() == {l3: (5000, 1), lb: (200, 1), lc: (150, 1)}
    big, lbig = kmalloc(1 << 20), here()  # whole pages
    assert mine()[lbig] == (1 << 20, 1)
    zero = kmalloc(0)  # zero-length objects share one address: not counted
    assert mine() == {l3: (5000, 1), lb: (200, 1), lc: (150, 1), lbig: (1 << 20, 1)}
    for o in (a3, b, c, big, zero):
        kfree(o)
    assert mine() == {}


def test_shared_cache_objects(shared_name: Any) -> None:
    with kmemcache.SharedCache(shared_name(), 256, capacity=4 << 20) as cache:
        objs, line = [cache.alloc() for _ in range(3)], here()
        assert mine() == {line: (768, 3)}
        for o in objs:
            o.free()
        assert mine() == {}


def test_the_package_own_frames_are_skipped() -> None:
    # a function whose code says it is the package's: its line is not the site
    package = os.path.dirname(kmemcache.__file__)
    helper: dict[str, Any] = {"kmalloc": kmalloc}
    exec(
        compile("def helper(n):\n    return kmalloc(n)\n", os.path.join(package, "_t.py"), "exec"),
        helper,
    )
    obj, line = helper["helper"](64), here()
    assert mine() == {line: (64, 1)}
    kfree(obj)


def test_numpy_arrays_under_the_handler() -> None:
    np = pytest.importorskip("numpy")
    import kmemcache.numpy as knp

    plain, lp = np.empty(1000), here()  # NumPy's own memory: not kmemcache's
    with knp.aligned(64):
        a, la = np.empty(1000), here()
        b, lb = np.zeros((10, 10)), here()
        c = np.ones(10)
        c.resize(2000, refcheck=False)
        lc = here() - 1  # realloc: the array's line is now resize's
    assert lp not in mine()
    assert mine() == {la: (8000, 1), lb: (800, 1), lc: (16000, 1)}
    del a, b, c
    assert mine() == {}
    del plain


def test_numpy_without_the_gil_has_no_python_frame() -> None:
    pytest.importorskip("numpy")
    import kmemcache.numpy as knp

    capsule = knp.handler(64)
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    handler = get(capsule, b"mem_handler")
    # NEP 49: name[127], version, then ctx and malloc, calloc, realloc, free
    ctx, malloc, _calloc, _realloc, free = (ctypes.c_void_p * 5).from_address(handler + 128)
    c_malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(malloc)
    c_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(free)
    p = c_malloc(ctx, 777)  # a ctypes call releases the GIL
    assert p
    nogil = [s for s in allocinfo.snapshot() if s.file == allocinfo.NO_FRAME]
    assert [(s.line, s.function, s.bytes, s.count) for s in nogil] == [(0, "", 777, 1)]
    c_free(ctx, p, 777)
    assert not [s for s in allocinfo.snapshot() if s.file == allocinfo.NO_FRAME]


def test_two_threads_exact_counts(make_cache: Any) -> None:
    cache = make_cache("ai-threads", 40)
    lines: dict[str, int] = {}
    start = threading.Barrier(2)

    def work(name: str, keep: int) -> None:
        start.wait()
        mine_ = []
        for i in range(3000):
            mine_.append(cache.alloc())
            lines[name] = here() - 1
            if len(mine_) > keep or i % 3 == 0:
                mine_.pop(0).free()
            k = kmalloc(100)
            kfree(k)
        held[name] = mine_

    held: dict[str, list[Any]] = {}
    threads = [threading.Thread(target=work, args=(n, k)) for n, k in (("a", 7), ("b", 13))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = len(held["a"]) + len(held["b"])
    assert total > 0
    assert mine() == {lines["a"]: (40 * total, total)}  # one line, both threads
    for objs in held.values():
        for o in objs:
            o.free()
    assert mine() == {}


def test_a_limit_report_names_the_group_call_sites() -> None:
    parent = MemoryGroup("ai-parent", limit=64 << 10)
    child = MemoryGroup("ai-child", parent=parent)
    keep = []
    with child:
        keep += [kmalloc(4000) for _ in range(4)]
        lk = here() - 1
    other = kmalloc(8000)  # no group: not in the report
    with parent, pytest.raises(MemoryLimitError) as info:
        while True:
            keep.append(kmalloc(2000))
            lp = here() - 1
    report = info.value.report
    assert "largest call sites:" in report
    tail = report.split("largest call sites:")[1].splitlines()[1:]
    n = len(keep) - 4
    assert tail[0].strip() == (
        f"{HERE}:{lp} (test_a_limit_report_names_the_group_call_sites): {n * 2000} bytes in "
        f"{n} objects"
    ) or tail[1].strip().startswith(f"{HERE}:{lp} ")
    assert any(line.strip().startswith(f"{HERE}:{lk} ") for line in tail)
    assert f"{HERE}:{here() - 13} " not in report  # the ungrouped kmalloc(8000)
    allocinfo.stop()
    with parent, pytest.raises(MemoryLimitError) as off:
        keep.append(kmalloc(1 << 16))
    assert "call sites" not in off.value.report
    for o in [*keep, other]:
        kfree(o)


def test_numpy_s_note_names_the_call_sites_too() -> None:
    np = pytest.importorskip("numpy")
    import kmemcache.numpy as knp

    group = MemoryGroup("ai-arrays", limit=1 << 20)
    with knp.aligned(64), group:
        a, la = np.zeros(100_000), here()
        with pytest.raises(MemoryError) as info:
            np.empty(100_000)
    (note,) = info.value.__notes__
    assert "largest call sites:" in note
    site = f"{HERE}:{la} (test_numpy_s_note_names_the_call_sites_too): 800000 bytes in 1 object"
    assert note.splitlines()[-1].strip() == site
    del a


# --- Python code in the middle -----------------------------------------------------


def run(code: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def test_finalizers_that_free_allocate_and_stop_in_the_middle() -> None:
    out = run(
        """
        import gc, sys
        from kmemcache import Cache, allocinfo, kfree, kmalloc
        cache = Cache("fin", 64)
        allocinfo.start()
        made, lines = [], {}
        class Cycle:
            def __init__(self, obj):
                self.me, self.obj = self, obj
            def __del__(self):
                self.obj.free()
                made.append(kmalloc(10))
                lines["made"] = sys._getframe().f_lineno - 1
        gc.set_threshold(1)
        live = []
        for i in range(2000):
            Cycle(cache.alloc())
            live += cache.alloc_bulk(2)  # its list is a GC allocation: finalizers inside
            lines["live"] = sys._getframe().f_lineno - 1
        gc.collect()
        gc.set_threshold(700)
        sites = {s.line: (s.bytes, s.count) for s in allocinfo.snapshot()}
        want = {lines["live"]: (64 * len(live), len(live))}
        want[lines["made"]] = (10 * len(made), len(made))
        print(sites == want, len(made) > 0)

        class Stopper:
            def __init__(self):
                self.me = self
            def __del__(self):
                allocinfo.stop()
                allocinfo.start()
        gc.set_threshold(1)
        for i in range(500):
            Stopper()
            live.append(cache.alloc())
        gc.collect()
        gc.set_threshold(700)
        snap = allocinfo.snapshot()
        total = sum(s.count for s in snap)
        print(total <= len(live), all(s.bytes == 64 * s.count for s in snap))
        for o in live:
            o.free()
        for o in made:
            kfree(o)
        print(allocinfo.snapshot())
        """
    )
    assert out == ["True True", "True True", "[]"]


def test_the_environment_variable_starts_it_at_import() -> None:
    code = "import kmemcache; print(kmemcache.allocinfo.is_tracing())"
    assert run(code, {"KMEMCACHE_ALLOCINFO": "1"}) == ["True"]
    assert run(code, {"KMEMCACHE_ALLOCINFO": "0"}) == ["False"]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KMEMCACHE_ALLOCINFO": "sometimes"},
    )
    assert done.stdout.strip() == "False"
    assert "KMEMCACHE_ALLOCINFO='sometimes'" in done.stderr


# --- against a model ----------------------------------------------------------------


class SitesModel(RuleBasedStateMachine):
    """Allocs from three lines through three doors and frees in any order, against
    a model of the live objects of each line."""

    def __init__(self) -> None:
        super().__init__()
        allocinfo.start()
        self.cache = Cache("ai-model", 72)
        self.live: list[tuple[Any, int, int]] = []  # (object, line, bytes)

    @rule(door=st.sampled_from(["cache", "kmalloc", "bulk"]), size=st.integers(1, 5000))
    def alloc(self, door: str, size: int) -> None:
        if door == "cache":
            obj, line = self.cache.alloc(), here()
            self.live.append((obj, line, 72))
        elif door == "kmalloc":
            obj, line = kmalloc(size), here()
            self.live.append((obj, line, size))
        else:
            objs, line = self.cache.alloc_bulk(3), here()
            self.live += [(o, line, 72) for o in objs]

    @precondition(lambda self: self.live)
    @rule(i=st.integers(min_value=0), drop=st.booleans())
    def free(self, i: int, drop: bool) -> None:
        obj, _, _ = self.live.pop(i % len(self.live))
        if not drop:
            kfree(obj)  # else the handle's last reference goes: given back

    @precondition(lambda self: self.live)
    @rule(i=st.integers(min_value=0), size=st.integers(1, 5000))
    def resize(self, i: int, size: int) -> None:
        j = i % len(self.live)
        obj, _, _ = self.live[j]
        if obj.cache is not None and obj.cache.name == "ai-model":
            return  # krealloc of a Cache's object is kmalloc's business
        new, line = krealloc(obj, size), here()
        self.live[j] = (new, line, size)

    @invariant()
    def sites_match(self) -> None:
        want: dict[int, list[int]] = {}
        for _, line, nbytes in self.live:
            entry = want.setdefault(line, [0, 0])
            entry[0] += nbytes
            entry[1] += 1
        assert mine() == {k: (b, c) for k, (b, c) in want.items()}

    def teardown(self) -> None:
        for obj, _, _ in self.live:
            kfree(obj)
        self.live.clear()
        gc.collect()
        assert mine() == {}
        self.cache.destroy()


TestSitesModel = SitesModel.TestCase
TestSitesModel.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
