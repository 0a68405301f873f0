"""alloc and free are O(1): their work does not grow with the live objects.

Timing is not evidence here (shared machines are noisy, and no test holds a
timing threshold), so these tests check the work itself. An allocation takes
a bit of the thread's current slab, scanning its free bitmap from the word the
last allocation used (and around to the start); the engine counts the bitmap
words the longest scan skipped (``max_scan``). That count stays below
``bitmap_words`` by construction, so no test rests on that bound: they build
allocations whose scans are known exactly, and check that the count is that,
at any number of live objects.
"""

from __future__ import annotations

import random

import pytest

from kmemcache import Cache


def churn(cache: Cache, live: int, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    objs = cache.alloc_bulk(live)
    # free a random half: every slab ends up partial, bitmaps full of holes
    rng.shuffle(objs)
    keep, drop = objs[: live // 2], objs[live // 2 :]
    cache.free_bulk(drop)
    for _ in range(rounds):
        i = rng.randrange(len(keep))
        keep[i].free()
        keep[i] = cache.alloc()
    cache.free_bulk(keep)


@pytest.mark.parametrize("live", [1_000, 200_000])
def test_filling_a_cache_scans_one_word_past_each_full_one(live: int) -> None:
    # Allocation takes up where the last one left off: a word of the bitmap is
    # skipped once it is full, so filling any number of slabs skips one word at
    # a time. Scanning from the start of the bitmap would skip up to
    # bitmap_words - 1 = 15 words here.
    with Cache(f"fill{live}", 8) as cache:  # 1024 objects, 16 words per slab
        objs = [cache.alloc() for _ in range(live)]
        s = cache.stats()
        assert (s.objperslab, s.bitmap_words, s.num_slabs) == (1024, 16, -(-live // 1024))
        assert s.max_scan == 1
        cache.free_bulk(objs)


@pytest.mark.parametrize(
    "size, skip",
    [(8, k) for k in range(1, 15)]  # 1024 objects, 16 words per slab (the last one
    # is where the scan starts)
    + [(24, 2)],  # 682 objects, 11 words: the last one partly used
)
def test_max_scan_is_the_words_an_allocation_skipped(size: int, skip: int) -> None:
    # One full slab; free slot 0 and the first slot of word `skip`. The next
    # allocation finds the last word full and takes slot 0 (one word skipped,
    # around to the start), and the one after it finds words 0 to skip - 1
    # full: it skips exactly `skip` words.
    with Cache("skip", size) as cache:
        per_slab = cache.stats().objperslab
        objs = sorted((cache.alloc() for _ in range(per_slab)), key=lambda o: o.address)
        assert cache.stats().num_slabs == 1 and cache.stats().max_scan == 1
        base = objs[0].address
        assert base % cache.stats().slab_size == 0
        assert objs[-1].address == base + (per_slab - 1) * size
        objs[0].free()
        objs[64 * skip].free()
        first, second = cache.alloc(), cache.alloc()
        assert (first.address, second.address) == (base, base + 64 * skip * size)
        assert cache.stats().max_scan == skip
        objs[0], objs[64 * skip] = first, second
        cache.free_bulk(objs)


def test_stats_count_every_slab_once_at_any_population() -> None:
    # the lists stay consistent (validate walks every slab and compares the
    # list counts with the slabs' states) after heavy churn
    with Cache("lists", 64, align=64) as cache:
        churn(cache, 60_000, rounds=30_000, seed=3)
        assert cache.validate() == 0
        assert cache.stats().active_objs == 0
