"""Fuzz the Python API with atheris: random operation sequences against a model.

Each input is a sequence of operations drawn from the bytes: caches made with random
sizes, alignments and debug flags (F, Z, P, U), alloc, zalloc, alloc_bulk, free,
free_bulk (with duplicates and freed handles mixed in), frees of freed handles,
views held across a free, the kmalloc family (kmalloc, kzalloc, kcalloc, krealloc,
ksize, kfree, size 0 and pages included), validate, shrink, stats and destroy. A
model keeps what every live object must hold and which exception each misuse must
raise; anything else (a wrong byte, a wrong count, an unexpected exception, a
crash) is a finding. Every input ends with everything freed and destroyed.

    python fuzz/fuzz_api.py CORPUS_OUT fuzz/corpus -max_total_time=60

The first folder receives new inputs; the committed seeds are read from the second.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import kmemcache
    from kmemcache import Cache, Flags

FLAG_CHOICES = [
    Flags(0),
    Flags.CONSISTENCY_CHECKS,
    Flags.RED_ZONE,
    Flags.POISON,
    Flags.STORE_USER,
    Flags.RED_ZONE | Flags.POISON,
    Flags.CONSISTENCY_CHECKS | Flags.RED_ZONE | Flags.POISON | Flags.STORE_USER,
    Flags.HWCACHE_ALIGN | Flags.RED_ZONE,
]
MAX_OPS = 200
MAX_LIVE = 400


class Live:
    """One object the model knows: its handle, its cache (None: kmalloc) and byte."""

    __slots__ = ("handle", "cache", "fill", "size")

    def __init__(self, handle: kmemcache.Object, cache: Cache | None, fill: int) -> None:
        self.handle = handle
        self.cache = cache
        self.fill = fill
        self.size = len(handle)
        if self.size:
            memoryview(handle)[:] = bytes([fill]) * self.size

    def check(self) -> None:
        if self.size:
            data = bytes(memoryview(self.handle))
            assert data == bytes([self.fill]) * self.size, "an object's bytes changed"


class Model:
    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp
        self.caches: list[Cache] = []
        self.live: list[Live] = []
        self.freed: list[kmemcache.Object] = []
        self.made = 0

    # --- helpers ---------------------------------------------------------------

    def pick(self, items: list) -> int:  # type: ignore[type-arg]
        return self.fdp.ConsumeIntInRange(0, len(items) - 1)

    def adopt(self, handle: kmemcache.Object, cache: Cache | None, align: int) -> None:
        if len(handle):
            assert handle.address % max(align, 8) == 0, "misaligned object"
        self.live.append(Live(handle, cache, self.fdp.ConsumeIntInRange(1, 255)))

    def live_in(self, cache: Cache) -> int:
        return sum(1 for o in self.live if o.cache is cache)

    # --- operations -------------------------------------------------------------

    def new_cache(self) -> None:
        if len(self.caches) >= 6:
            return
        size = self.fdp.ConsumeIntInRange(1, 5000)
        align = 1 << self.fdp.ConsumeIntInRange(3, 13) if self.fdp.ConsumeBool() else 0
        flags = FLAG_CHOICES[self.fdp.ConsumeIntInRange(0, len(FLAG_CHOICES) - 1)]
        self.made += 1
        self.caches.append(Cache(f"fuzz{self.made}", size, align, flags))

    def alloc(self) -> None:
        if not self.caches or len(self.live) >= MAX_LIVE:
            return
        cache = self.caches[self.pick(self.caches)]
        how = self.fdp.ConsumeIntInRange(0, 2)
        if how == 2:
            n = self.fdp.ConsumeIntInRange(0, 20)
            objs = cache.alloc_bulk(n, zero=self.fdp.ConsumeBool())
            assert len(objs) == n and len({o.address for o in objs}) == n
            for o in objs:
                self.adopt(o, cache, cache.align)
            return
        obj = cache.zalloc() if how else cache.alloc()
        if how:
            assert bytes(memoryview(obj)) == bytes(len(obj)), "zalloc() not zeroed"
        self.adopt(obj, cache, cache.align)

    def kmalloc(self) -> None:
        if len(self.live) >= MAX_LIVE:
            return
        size = self.fdp.ConsumeIntInRange(0, 20000)
        align = 1 << self.fdp.ConsumeIntInRange(3, 14) if self.fdp.ConsumeBool() else 0
        how = self.fdp.ConsumeIntInRange(0, 2)
        if how == 2:
            n = self.fdp.ConsumeIntInRange(0, 16)
            obj = kmemcache.kcalloc(n, size // 16)
            align = 0
        else:
            obj = kmemcache.kzalloc(size, align) if how else kmemcache.kmalloc(size, align)
        assert kmemcache.ksize(obj) >= len(obj)
        self.adopt(obj, None, align)

    def free(self) -> None:
        if not self.live:
            return
        o = self.live.pop(self.pick(self.live))
        o.check()
        how = self.fdp.ConsumeIntInRange(0, 3)
        if how == 0:
            o.handle.free()
        elif how == 1:
            kmemcache.kfree(o.handle)
        elif how == 2 and o.cache is not None:
            o.cache.free(o.handle)
        else:
            view = memoryview(o.handle)
            try:
                o.handle.free()
            except BufferError:
                pass
            else:
                raise AssertionError("free() while a view exists")
            view.release()
            o.handle.free()
        assert o.handle.freed
        self.freed.append(o.handle)

    def free_bulk(self) -> None:
        if not self.caches:
            return
        cache = self.caches[self.pick(self.caches)]
        mine = [o for o in self.live if o.cache is cache]
        chosen = [o for o in mine if self.fdp.ConsumeBool()]
        items = [o.handle for o in chosen]
        bad = self.fdp.ConsumeIntInRange(0, 3) if items else 0
        if bad == 1:
            items.append(items[0])  # listed twice
        elif bad == 2:
            if self.freed:
                items.insert(0, self.freed[-1])  # freed before
            else:
                bad = 0
        elif bad == 3:
            items.append(b"not an object")  # type: ignore[arg-type]
        before = [o.handle.freed for o in chosen]
        try:
            cache.free_bulk(items)
        except (kmemcache.DoubleFreeError, kmemcache.InvalidFreeError):
            assert bad, "free_bulk() refused good objects"
            assert [o.handle.freed for o in chosen] == before, "free_bulk() not all or nothing"
            return
        assert not bad, "free_bulk() took bad objects"
        for o in chosen:
            self.live.remove(o)
            self.freed.append(o.handle)

    def double_free(self) -> None:
        if not self.freed:
            return
        handle = self.freed[self.pick(self.freed)]
        try:
            kmemcache.kfree(handle) if self.fdp.ConsumeBool() else handle.free()
        except kmemcache.DoubleFreeError:
            return
        raise AssertionError("a double free went unnoticed")

    def krealloc(self) -> None:
        kmalloced = [o for o in self.live if o.cache is None]
        if not kmalloced:
            return
        o = kmalloced[self.pick(kmalloced)]
        o.check()
        new_size = self.fdp.ConsumeIntInRange(0, 20000)
        align = 1 << self.fdp.ConsumeIntInRange(3, 12) if self.fdp.ConsumeBool() else 0
        new = kmemcache.krealloc(o.handle, new_size, align)
        keep = min(o.size, new_size)
        assert bytes(memoryview(new)[:keep]) == bytes([o.fill]) * keep, "krealloc lost bytes"
        self.live.remove(o)
        if new is not o.handle:
            assert o.handle.freed
            self.freed.append(o.handle)
        self.adopt(new, None, align)

    def check_caches(self) -> None:
        for cache in self.caches:
            assert cache.validate() == 0
            assert cache.stats().active_objs == self.live_in(cache), "active_objs is wrong"
        if self.fdp.ConsumeBool():
            for cache in self.caches:
                cache.shrink()
            sys.modules["kmemcache.kmalloc"].shrink()

    def destroy(self) -> None:
        if not self.caches:
            return
        i = self.pick(self.caches)
        cache = self.caches[i]
        try:
            cache.destroy()
        except kmemcache.CacheBusyError:
            assert self.live_in(cache), "destroy refused an empty cache"
            return
        assert not self.live_in(cache), "destroy took a cache with live objects"
        del self.caches[i]

    OPS = (
        new_cache,
        alloc,
        alloc,
        kmalloc,
        free,
        free,
        free_bulk,
        double_free,
        krealloc,
        check_caches,
        destroy,
    )

    def run(self) -> None:
        for _ in range(self.fdp.ConsumeIntInRange(0, MAX_OPS)):
            if self.fdp.remaining_bytes() == 0:
                break
            self.OPS[self.fdp.ConsumeIntInRange(0, len(self.OPS) - 1)](self)
        for o in self.live:
            o.check()
            o.handle.free()
        self.live.clear()
        for cache in self.caches:
            assert cache.validate() == 0
            cache.destroy()


def test_one_input(data: bytes) -> None:
    Model(atheris.FuzzedDataProvider(data)).run()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
