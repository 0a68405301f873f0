"""Differential tests: random operation sequences against a pure-Python model.

A hypothesis state machine drives a few caches of random sizes and
alignments with alloc, zalloc, alloc_bulk, free, free_bulk (good and bad),
double frees, dropped handles, shrink, and tag writes and checks. The model
is a dict of live objects with the byte each was last filled with. After
every step:

- every address is a multiple of its cache's alignment;
- live objects never overlap, and each lies in memory its cache owns
  (the engine's owner lookup maps its first and last byte to its start);
- each cache's active_objs equals the model's count, and validate() finds
  nothing wrong;
- no object's contents changed behind our back.

HYPOTHESIS_PROFILE=ci runs many more and longer sequences (see conftest.py).
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kmemcache import Cache, CacheBusyError, DoubleFreeError, Flags, InvalidFreeError, Object
from kmemcache import _kmemcache as _core

SIZES = st.one_of(
    st.sampled_from([1, 7, 8, 24, 64, 100, 192, 1000, 4096, 5000]),
    st.integers(1, 20_000),
)
ALIGNS = st.sampled_from([0, 8, 16, 32, 64, 128, 256, 4096])


@dataclass
class Live:
    obj: Object
    cache: int
    fill: int | None  # the byte every position holds, None if unknown


class CacheModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.caches: list[Cache] = []
        self.aligns: list[int] = []  # the alignment each cache must give
        self.live: dict[int, Live] = {}  # address -> what we know
        self.freed: list[Object] = []  # handles already freed
        self.counter = 0

    # --- set-up and tear-down ------------------------------------------------

    @initialize(specs=st.lists(st.tuples(SIZES, ALIGNS, st.booleans()), min_size=1, max_size=3))
    def make_caches(self, specs: list[tuple[int, int, bool]]) -> None:
        for i, (size, align, hw) in enumerate(specs):
            flags = Flags.HWCACHE_ALIGN if hw else 0
            self.caches.append(Cache(f"model{i}", size, align=align, flags=flags))
            self.aligns.append(max(align, 8, 64 if hw else 0))

    def teardown(self) -> None:
        self.live.clear()
        self.freed.clear()
        gc.collect()
        for cache in self.caches:
            # after a failed step its traceback may still hold an object;
            # the invariants have checked the counts at every step
            with contextlib.suppress(CacheBusyError):
                cache.destroy()

    # --- helpers -----------------------------------------------------------

    def track(self, obj: Object, index: int, fill: int | None) -> None:
        cache = self.caches[index]
        assert obj.address not in self.live, "a live object was handed out again"
        assert len(obj) == cache.size
        assert obj.cache is cache
        if fill is not None:
            assert bytes(memoryview(obj)) == bytes([fill]) * len(obj)
        self.live[obj.address] = Live(obj, index, fill)

    def pick(self, data: st.DataObject, many: bool = False) -> list[Live]:
        # allocation order, not address order: a replay picks the same objects
        # whatever addresses the allocator gave them this time
        addresses = list(self.live)
        if many:
            chosen = data.draw(st.lists(st.sampled_from(addresses), unique=True, max_size=8))
        else:
            chosen = [data.draw(st.sampled_from(addresses))]
        return [self.live[a] for a in chosen]

    def cache_index(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.caches) - 1))

    # --- rules -----------------------------------------------------------------

    @rule(data=st.data())
    def alloc(self, data: st.DataObject) -> None:
        i = self.cache_index(data)
        self.track(self.caches[i].alloc(), i, None)

    @rule(data=st.data())
    def zalloc(self, data: st.DataObject) -> None:
        i = self.cache_index(data)
        self.track(self.caches[i].zalloc(), i, 0)

    @rule(data=st.data(), n=st.integers(0, 40), zero=st.booleans())
    def alloc_bulk(self, data: st.DataObject, n: int, zero: bool) -> None:
        i = self.cache_index(data)
        objs = self.caches[i].alloc_bulk(n, zero=zero)
        assert len(objs) == n
        for obj in objs:
            self.track(obj, i, 0 if zero else None)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        (item,) = self.pick(data)
        self.check_contents(item)
        address = item.obj.address
        if data.draw(st.booleans()):
            item.obj.free()
        else:
            self.caches[item.cache].free(item.obj)
        assert item.obj.freed
        del self.live[address]
        self.freed.append(item.obj)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free_bulk(self, data: st.DataObject) -> None:
        items = self.pick(data, many=True)
        by_cache: dict[int, list[Live]] = {}
        for item in items:
            by_cache.setdefault(item.cache, []).append(item)
        for index, group in by_cache.items():
            addresses = [g.obj.address for g in group]
            for g in group:
                self.check_contents(g)
            self.caches[index].free_bulk([g.obj for g in group])
            for address, g in zip(addresses, group, strict=True):
                del self.live[address]
                self.freed.append(g.obj)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), kind=st.sampled_from(["duplicate", "freed", "foreign", "garbage"]))
    def free_bulk_refused(self, data: st.DataObject, kind: str) -> None:
        items = self.pick(data, many=True)
        if not items:
            return
        index = items[0].cache
        good = [i.obj for i in items if i.cache == index]
        cache = self.caches[index]
        if kind == "duplicate":
            bad, error = good[0], DoubleFreeError
        elif kind == "freed":
            if not self.freed:
                return
            bad, error = data.draw(st.sampled_from(self.freed)), DoubleFreeError
        elif kind == "foreign":
            # draw an address, not the handle: hypothesis keeps what it draws
            others = [a for a, v in self.live.items() if v.cache != index]
            if not others:
                return
            bad, error = self.live[data.draw(st.sampled_from(others))].obj, InvalidFreeError
        else:
            bad, error = bytearray(cache.size), InvalidFreeError
        position = data.draw(st.integers(0, len(good)))
        before = cache.stats()
        with pytest.raises(error):
            cache.free_bulk([*good[:position], bad, *good[position:]])
        after = cache.stats()
        assert (after.active_objs, after.frees) == (before.active_objs, before.frees)
        assert not any(obj.freed for obj in good)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def double_free(self, data: st.DataObject) -> None:
        obj = data.draw(st.sampled_from(self.freed))
        with pytest.raises(DoubleFreeError):
            obj.free()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """A handle dropped without free() gives its object back."""
        (item,) = self.pick(data)
        del self.live[item.obj.address]
        del item  # the model held the last reference

    @precondition(lambda self: self.live)
    @rule(data=st.data(), fill=st.integers(0, 255))
    def write(self, data: st.DataObject, fill: int) -> None:
        (item,) = self.pick(data)
        memoryview(item.obj)[:] = bytes([fill]) * len(item.obj)
        item.fill = fill

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def check(self, data: st.DataObject) -> None:
        (item,) = self.pick(data)
        self.check_contents(item)

    @rule(data=st.data())
    def shrink(self, data: st.DataObject) -> None:
        cache = self.caches[self.cache_index(data)]
        before = cache.stats()
        given_back = cache.shrink()
        s = cache.stats()
        assert s.empty_slabs == 0
        assert s.num_slabs == s.active_slabs
        # what it says it gave back is what it released: slabs, and the
        # metadata of the arenas left empty
        released = s.slabs_released - before.slabs_released
        assert released == before.num_slabs - s.num_slabs
        assert given_back == released * s.slab_size + before.metadata_bytes - s.metadata_bytes

    # --- invariants ------------------------------------------------------------

    def check_contents(self, item: Live) -> None:
        if item.fill is not None:
            data = bytes(memoryview(item.obj))
            assert data == bytes([item.fill]) * len(data), "contents changed behind our back"

    @invariant()
    def addresses_aligned_owned_and_apart(self) -> None:
        spans = []
        for address, item in self.live.items():
            cache = self.caches[item.cache]
            assert item.obj.address == address
            assert cache.align == self.aligns[item.cache]
            assert address % cache.align == 0
            assert _core._owner_of(address) == (cache.name, address)
            assert _core._owner_of(address + cache.size - 1) == (cache.name, address)
            spans.append((address, address + cache.size))
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, "live objects overlap"

    @invariant()
    def counts_match_the_model(self) -> None:
        for index, cache in enumerate(self.caches):
            expected = sum(1 for item in self.live.values() if item.cache == index)
            s = cache.stats()
            assert s.active_objs == expected
            assert s.allocs - s.frees == expected
            assert s.num_objs == s.num_slabs * s.objperslab >= expected
            assert cache.validate() == 0

    @invariant()
    def contents_unchanged(self) -> None:
        for item in self.live.values():
            self.check_contents(item)


TestCacheModel = CacheModel.TestCase
