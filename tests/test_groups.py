"""Memory groups and cache limits: what a thread allocates inside ``with group:`` is
charged to the group (and its parents) until freed by any thread; a limit refuses with
MemoryLimitError and changes nothing; usage matches a model."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import kmemcache
from kmemcache import Cache, GroupEvents, MemoryGroup, MemoryLimitError, kfree, kmalloc, ksize
from kmemcache.kmalloc import size_class

PAGE = kmemcache.PAGE_SIZE


def test_a_cache_object_is_charged_until_freed() -> None:
    group = MemoryGroup("job")
    with Cache("grp-py", 100) as cache:
        outside = cache.alloc()
        with group:
            assert MemoryGroup.current() is group
            obj = cache.alloc()
            small = kmalloc(100)
            large = kmalloc(100_000)
        assert MemoryGroup.current() is None
        pages = -(-100_000 // PAGE) * PAGE
        assert group.usage == 100 + ksize(small) + pages
        # the peak reads the counter, which holds this thread's last batch too
        assert group.usage <= group.peak <= group.usage + 64 * 1024
        assert group.objects == 3
        cache.free(outside)
        assert group.usage == 100 + ksize(small) + pages
        cache.free(obj)
        kfree(small)
        kfree(large)
        assert group.usage == 0 and group.objects == 0
        assert 100 + 128 + pages <= group.peak <= 100 + 128 + pages + 64 * 1024
        group.reset_peak()
        assert group.peak == 0


def test_an_object_freed_by_another_thread_is_given_back() -> None:
    group = MemoryGroup("threads")
    with Cache("grp-thr", 64) as cache:
        with group:
            objs = [cache.alloc() for _ in range(100)]
        assert group.usage == 6400
        t = threading.Thread(target=lambda: [cache.free(o) for o in objs])
        t.start()
        t.join()
        assert group.usage == 0


def test_the_limit_refuses_and_changes_nothing() -> None:
    group = MemoryGroup("bounded", limit=1000)
    with Cache("grp-lim", 96) as cache:
        objs = []
        with group, pytest.raises(MemoryLimitError) as info:
            while True:
                objs.append(cache.alloc())
        assert len(objs) == 10
        err = info.value
        assert isinstance(err, MemoryError)
        assert err.group is group and err.cache is None
        assert (err.requested, err.usage, err.limit, err.peak) == (96, 960, 1000, 960)
        assert "memory group bounded" in str(err) and "grp-lim: 960 bytes" in err.report
        assert cache.stats().active_objs == 10  # the refused alloc took no object
        assert group.usage == 960
        assert group.events == GroupEvents(soft_limit_hits=0, limit_failures=1, purges=0)
        group.limit = 2000  # writable at any time
        with group:
            objs.append(cache.alloc())
        group.limit = None
        assert group.limit is None
        for o in objs:
            cache.free(o)
    assert group.usage == 0


def test_a_child_counts_in_its_parent_and_obeys_the_parents_limit() -> None:
    parent = MemoryGroup("parent", limit=300)
    child = MemoryGroup("child", parent=parent)
    assert child.parent is parent and parent.parent is None
    with Cache("grp-nest", 100) as cache:
        with child:
            objs = [cache.alloc() for _ in range(3)]
            with pytest.raises(MemoryLimitError) as info:
                cache.alloc()
        assert info.value.group is parent
        assert child.usage == parent.usage == 300
        assert parent.events.limit_failures == 1 and child.events.limit_failures == 0
        for o in objs:
            cache.free(o)
    assert child.usage == parent.usage == 0


def test_with_blocks_nest_and_put_back_the_group_before() -> None:
    a, b = MemoryGroup("a"), MemoryGroup("b")
    with Cache("grp-with", 64) as cache:
        with a:
            x = cache.alloc()
            with b:
                y = cache.alloc()
                with a:  # entered again, inside b
                    z = cache.alloc()
                assert MemoryGroup.current() is b
            assert MemoryGroup.current() is a
        assert (a.usage, b.usage) == (128, 64)
        for o in (x, y, z):
            cache.free(o)


def test_leaving_a_group_out_of_order_is_an_error() -> None:
    a, b = MemoryGroup("a"), MemoryGroup("b")
    a.__enter__()
    b.__enter__()
    with pytest.raises(RuntimeError, match="must nest"):
        a.__exit__(None, None, None)
    assert MemoryGroup.current() is b  # nothing changed
    b.__exit__(None, None, None)
    a.__exit__(None, None, None)
    assert MemoryGroup.current() is None
    with pytest.raises(RuntimeError, match="must nest"):
        a.__exit__(None, None, None)


def test_an_exception_in_the_block_leaves_the_group() -> None:
    group = MemoryGroup("raises")
    with pytest.raises(ZeroDivisionError), group:
        1 / 0  # noqa: B018
    assert MemoryGroup.current() is None


def test_crossing_the_soft_limit_purges_every_cache_once() -> None:
    group = MemoryGroup("soft", soft_limit=250)
    with Cache("grp-soft", 100) as cache:
        with group:
            objs = [cache.alloc() for _ in range(4)]
        assert group.events == GroupEvents(soft_limit_hits=1, limit_failures=0, purges=1)
        for o in objs:
            cache.free(o)


def test_a_group_lives_on_while_its_objects_do() -> None:
    with Cache("grp-life", 64) as cache:
        group = MemoryGroup("short")
        with group:
            obj = cache.alloc()
        del group
        gc.collect()
        cache.free(obj)  # gives the charge back to a group nobody names


def test_a_group_per_job_never_runs_out() -> None:
    """Each job's group goes when its last object does, after its handle: more jobs
    than there are group ids (65,535) all run."""
    with Cache("grp-jobs", 64) as cache:
        for _ in range(70_000):
            group = MemoryGroup("job")
            with group:
                obj = cache.alloc()
            del group
            cache.free(obj)


def test_each_kind_of_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="name"):
        MemoryGroup("two words")
    with pytest.raises(TypeError):
        MemoryGroup(7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limit must be an int"):
        MemoryGroup("g", limit="1 GiB")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limit must be an int"):
        MemoryGroup("g", limit=True)
    with pytest.raises(ValueError, match="positive"):
        MemoryGroup("g", limit=0)
    with pytest.raises(ValueError, match="positive"):
        MemoryGroup("g", limit=-1)
    with pytest.raises(ValueError, match="below 2\\*\\*64"):
        MemoryGroup("g", limit=2**64)
    with pytest.raises(ValueError, match="soft limit"):
        MemoryGroup("g", limit=100, soft_limit=200)
    with pytest.raises(TypeError, match="parent must be a MemoryGroup"):
        MemoryGroup("g", parent="p")  # type: ignore[arg-type]
    g = MemoryGroup("g", limit=100)
    with pytest.raises(ValueError, match="soft limit"):
        g.soft_limit = 200
    assert g.soft_limit is None and g.limit == 100
    with pytest.raises(AttributeError):
        del g.limit
    with pytest.raises(AttributeError):
        g.usage = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        g.consumers(0)
    chain = [MemoryGroup("level")]
    for _ in range(7):
        chain.append(MemoryGroup("level", parent=chain[-1]))
    with pytest.raises(ValueError, match="8 deep"):
        MemoryGroup("level", parent=chain[-1])
    uninitialised = MemoryGroup.__new__(MemoryGroup)
    with pytest.raises(RuntimeError, match="__init__"):
        uninitialised.__enter__()
    with pytest.raises(RuntimeError, match="twice"):
        g.__init__("again")  # type: ignore[misc]


def test_a_cache_limit_caps_its_slabs() -> None:
    with Cache("grp-cache", 64, limit=65536) as cache:
        assert cache.limit == 65536
        objs = []
        with pytest.raises(MemoryLimitError) as info:
            while True:
                objs.append(cache.alloc())
        err = info.value
        assert err.group is None and err.cache == "grp-cache"
        assert err.limit == 65536 and err.usage == 65536
        assert cache.stats().num_slabs == 1
        cache.limit = None
        objs.append(cache.alloc())
        for o in objs:
            cache.free(o)
    with pytest.raises(ValueError, match="positive"):
        Cache("grp-bad", 64, limit=0)
    with pytest.raises(TypeError, match="limit must be an int"):
        Cache("grp-bad", 64, limit=1.5)  # type: ignore[arg-type]


def test_shared_cache_objects_are_not_charged(shared_name: Callable[[], str]) -> None:
    with kmemcache.SharedCache(shared_name(), 64, capacity=8 << 20) as cache:
        group = MemoryGroup("shared")
        with group:
            obj = cache.alloc()
        assert group.usage == 0
        cache.free(obj)
        with pytest.raises(ValueError, match="shared"):
            cache.limit = 4096


def test_consumers_name_the_largest_caches_first() -> None:
    group = MemoryGroup("top")
    with Cache("grp-big", 1000) as big, Cache("grp-small", 10) as small:
        with group:
            keep = [big.alloc() for _ in range(3)] + [small.alloc() for _ in range(5)]
        assert group.consumers() == [("grp-big", 3000), ("grp-small", 50)]
        assert group.consumers(1) == [("grp-big", 3000)]
        for o in keep[:3]:
            big.free(o)
        for o in keep[3:]:
            small.free(o)


def test_numpy_reports_the_limit_in_a_note_on_its_own_error() -> None:
    np = pytest.importorskip("numpy")
    import kmemcache.numpy as knp

    group = MemoryGroup("arrays", limit=1 << 20)
    with knp.aligned(64), group:
        a = np.zeros(1000)
        with pytest.raises(MemoryError) as info:
            np.empty(1 << 20)
    assert not isinstance(info.value, MemoryLimitError)  # NumPy's own
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and "memory group arrays" in notes[0]
    assert group.usage == charge_of(a.nbytes, 64)
    del a
    assert group.usage == 0
    # an unrelated NumPy MemoryError carries no stale note
    with knp.aligned(64), pytest.raises(MemoryError) as other:
        np.empty(1 << 62, dtype=np.uint8)
    assert not getattr(other.value, "__notes__", [])


def charge_of(size: int, align: int = 0) -> int:
    """What kmalloc(size, align) charges: its size class's size, or its pages."""
    cls = size_class(size, align)
    return cls.size if cls else -(-size // PAGE) * PAGE


def test_the_c_api_is_charged_and_refused_from_c() -> None:
    """A C API call from a thread inside a group is charged; refused, it returns NULL
    and the report names the group (run where a crash cannot take the suite)."""
    code = """
import ctypes, kmemcache
from kmemcache import MemoryGroup
g = MemoryGroup("capi", limit=4096)
with g:
    p = kmemcache.kmalloc(4000)
    try:
        kmemcache.kmalloc(200)
    except kmemcache.MemoryLimitError as e:
        print("refused", e.requested, e.usage, e.limit)
print("usage", g.usage)
kmemcache.kfree(p)
print("usage", g.usage)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["refused 256 4096 4096", "usage 4096", "usage 0"]


class GroupModel(RuleBasedStateMachine):
    """Random allocs and frees through a cache and kmalloc, inside a group with a
    limit and a child, against a model of what each group holds."""

    def __init__(self) -> None:
        super().__init__()
        self.parent = MemoryGroup("model", limit=20_000)
        self.child = MemoryGroup("model-child", parent=self.parent)
        self.cache = Cache("grp-model", 120)
        self.live: list[tuple[Any, int, bool]] = []  # (object, charged bytes, in child)

    def charged(self, child_only: bool) -> int:
        return sum(b for _, b, c in self.live if c or not child_only)

    @rule(size=st.sampled_from([0, 1, 64, 120, 300, 5000, 9000]), child=st.booleans())
    def alloc(self, size: int, child: bool) -> None:
        group = self.child if child else self.parent
        charge = 120 if size == 0 else charge_of(size)
        with group:
            try:
                obj = self.cache.alloc() if size == 0 else kmalloc(size)
            except MemoryLimitError as err:
                assert self.charged(False) + charge > 20_000
                assert err.group is self.parent and err.usage == self.charged(False)
                return
        assert self.charged(False) + charge <= 20_000
        self.live.append((obj, charge, child))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(min_value=0))
    def free(self, i: int) -> None:
        obj, _, _ = self.live.pop(i % len(self.live))
        kfree(obj)  # kfree takes any cache's objects

    @invariant()
    def usage_matches(self) -> None:
        assert self.parent.usage == self.charged(False)
        assert self.child.usage == self.charged(True)
        assert self.parent.peak <= 20_000

    def teardown(self) -> None:
        for obj, _, _ in self.live:
            kfree(obj)
        assert self.parent.usage == 0
        self.cache.destroy()


TestGroupModel = GroupModel.TestCase
TestGroupModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
