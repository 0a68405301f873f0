"""What misuse is told: every out-of-range error names its argument, names that would
break slabinfo's columns are refused, POISON with a ctor is never dropped in silence,
and an uninitialised Cache says that it is one."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import kmemcache
from kmemcache import Cache, Flags, kcalloc, kmalloc, krealloc, kzalloc

HUGE = 2**70


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: Cache("x", HUGE), "size"),
        (lambda: Cache("x", 64, HUGE), "align"),
        (lambda: Cache("x", 64, flags=HUGE), "flags"),
        (lambda: Cache("x", -1), "size"),
        (lambda: Cache("x", 64, align=3), "align"),
        (lambda: Cache("x", 64, align=-8), "align"),
        (lambda: Cache("x", 64, flags=1 << 40), "flags"),
        (lambda: Cache("x", 64, flags=-1), "flags"),
        (lambda: Cache("x", True), "size"),
        (lambda: kmalloc(-1), "size"),
        (lambda: kmalloc(HUGE), "size"),
        (lambda: kzalloc(8, align=HUGE), "align"),
        (lambda: kzalloc(8, align=24), "align"),
        (lambda: kcalloc(HUGE, 1), "n"),
        (lambda: kcalloc(1, -1), "size"),
        (lambda: krealloc(None, HUGE), "new_size"),
        (lambda: krealloc(None, 8, align=HUGE), "align"),
    ],
)
def test_out_of_range_errors_name_the_argument(call: Callable[[], Any], argument: str) -> None:
    with pytest.raises((ValueError, TypeError, MemoryError)) as info:
        call()
    assert str(info.value).startswith(argument + " "), str(info.value)


@pytest.mark.parametrize("n", [HUGE, -1, True])
def test_alloc_bulk_errors_name_n(make_cache: Callable[..., Cache], n: Any) -> None:
    cache = make_cache("bulk_n", 64)
    with pytest.raises((ValueError, TypeError)) as info:
        cache.alloc_bulk(n)
    assert str(info.value).startswith("n "), str(info.value)


@pytest.mark.parametrize(
    "name,code",
    [
        ("a b", 0x20),
        ("tab\there", 0x09),
        ("new\nline", 0x0A),
        ("nbsp\u00a0here", 0xA0),
        ("line\u2028sep", 0x2028),
        ("ideo\u3000space", 0x3000),
        ("nel\u0085", 0x85),
        ("del\x7f", 0x7F),
        ("esc\x1b[31m", 0x1B),
        ("zero\u200bwidth", 0x200B),
        ("bidi\u202eoverride", 0x202E),
        ("nul\x00", 0x00),
    ],
)
def test_names_with_whitespace_or_control_characters_are_refused(name: str, code: int) -> None:
    with pytest.raises(ValueError) as info:
        Cache(name, 64)
    message = str(info.value)
    assert "whitespace or control characters" in message
    assert f"U+{code:04X} at index {name.index(chr(code))}" in message


def test_printable_unicode_names_are_fine_and_length_is_in_utf8_bytes() -> None:
    with Cache("tâche_ctx_ünïcödé", 64) as cache:
        assert cache.name == "tâche_ctx_ünïcödé"
        assert "tâche_ctx_ünïcödé" in kmemcache.slabinfo()
    Cache("é" * 31, 8).destroy()  # 62 bytes
    with pytest.raises(ValueError, match="1 to 63 bytes of UTF-8, not 64"):
        Cache("é" * 32, 8)
    with pytest.raises(ValueError, match="1 to 63 bytes of UTF-8, not 0"):
        Cache("", 8)


def test_poison_asked_for_on_a_cache_with_a_ctor_is_refused() -> None:
    with pytest.raises(ValueError, match="POISON on a cache with a ctor"):
        Cache("poisoned_ctor", 64, flags=Flags.POISON, ctor=lambda view: None)


def test_poison_from_the_debug_options_on_a_cache_with_a_ctor_warns() -> None:
    previous = kmemcache.debug.set_debug("FZP")
    try:
        with pytest.warns(RuntimeWarning, match="POISON is not applied to cache 'ctor_dbg'"):
            cache = Cache("ctor_dbg", 64, ctor=lambda view: None)
        assert cache.flags & Flags.RED_ZONE and not cache.flags & Flags.POISON
        cache.destroy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plain = Cache("no_ctor_dbg", 64)  # no ctor: poisoned, no warning
        assert plain.flags & Flags.POISON
        plain.destroy()
    finally:
        kmemcache.debug.set_debug(previous)


UNINITIALISED = "operation on an uninitialised kmemcache cache (Cache.__init__ was not called)"


@pytest.mark.parametrize(
    "use",
    [
        lambda c: c.alloc(),
        lambda c: c.zalloc(),
        lambda c: c.alloc_bulk(2),
        lambda c: c.free(None),
        lambda c: c.free_bulk([]),
        lambda c: c.shrink(),
        lambda c: c.destroy(),
        lambda c: c.validate(),
        lambda c: c.stats(),
        lambda c: c.leaks(),
        lambda c: c.__enter__(),
        lambda c: c.name,
        lambda c: c.size,
        lambda c: c.align,
        lambda c: c.flags,
        lambda c: c._stats(),
        lambda c: c._live_addresses(),
        lambda c: c._set_track(None),
    ],
)
def test_an_uninitialised_cache_says_so(use: Callable[[Cache], Any]) -> None:
    cache = Cache.__new__(Cache)
    with pytest.raises(ValueError) as info:
        use(cache)
    assert str(info.value) == UNINITIALISED
    assert repr(cache) == "<kmemcache.Cache (uninitialised)>"


def test_a_subclass_that_skips_init_is_uninitialised() -> None:
    class Lazy(Cache):
        def __init__(self) -> None:
            pass

    with pytest.raises(ValueError, match="uninitialised"):
        Lazy().alloc()


def test_a_destroyed_cache_still_says_destroyed() -> None:
    cache = Cache("gone", 64)
    cache.destroy()
    with pytest.raises(ValueError, match="^operation on a destroyed kmemcache cache$"):
        cache.alloc()
    assert repr(cache) == "<kmemcache.Cache (destroyed)>"


@pytest.mark.parametrize(
    "size,owner", [(0, "kmalloc(0)"), (1 << 16, "kmalloc pages"), (64, "cache kmalloc-64")]
)
def test_a_foreign_free_names_what_the_object_belongs_to(size: int, owner: str) -> None:
    obj = kmalloc(size)
    with Cache("names", 64) as cache:
        with pytest.raises(
            kmemcache.InvalidFreeError, match=re.escape(f"belongs to {owner}") + "$"
        ):
            cache.free(obj)
    obj.free()
