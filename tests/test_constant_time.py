"""alloc and free are O(1): their work does not grow with the live objects.

Timing is not evidence here (shared machines are noisy, and no test holds a
timing threshold), so these tests check the work itself. An allocation takes
the head of the partial list and scans one slab's free bitmap from that
slab's hint; the engine records the longest scan ever made. Whatever the
number of live objects and however fragmented the cache, that scan stays
within one slab's bitmap. A free is a table lookup, one bit and a list move.
"""

from __future__ import annotations

import random

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


def test_bitmap_scan_is_bounded_by_one_slab_at_any_population() -> None:
    scans = {}
    for live in (1_000, 100_000):
        with Cache(f"scan{live}", 8) as cache:  # 512 objects, 8 words per slab
            churn(cache, live, rounds=20_000, seed=live)
            s = cache.stats()
            assert s.bitmap_words == 8
            assert s.max_scan < s.bitmap_words
            scans[live] = s.max_scan
    # the bound is the slab's, not the population's
    assert scans[100_000] < 8 and scans[1_000] < 8


def test_scan_bound_holds_for_odd_sizes() -> None:
    # 170 objects of 24 bytes per slab: a partly used last bitmap word
    with Cache("scanwide", 24, align=8) as cache:
        churn(cache, 50_000, rounds=10_000, seed=7)
        s = cache.stats()
        assert s.max_scan < s.bitmap_words


def test_stats_count_every_slab_once_at_any_population() -> None:
    # the lists stay consistent (validate walks every slab and compares the
    # list counts with the slabs' states) after heavy churn
    with Cache("lists", 64, align=64) as cache:
        churn(cache, 60_000, rounds=30_000, seed=3)
        assert cache.validate() == 0
        assert cache.stats().active_objs == 0
