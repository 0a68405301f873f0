"""The C API is written in four places: the table (kmemcache.h's struct), the
macros callers use (kmemcache.h), the table's initializer and its member list
(csrc/binding/capi.c), and Cython's declarations (kmemcache.pxd). They must
name the same entries in the same order, and the .pxd the engine's enums, so
that none of them drifts from the others."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "src" / "kmemcache" / "include" / "kmemcache.h"
PXD = ROOT / "src" / "kmemcache" / "include" / "kmemcache.pxd"
CAPI = ROOT / "csrc" / "binding" / "capi.c"
KMC = ROOT / "csrc" / "engine" / "kmc.h"
#: Table entries that take the caller's sizeof: callers call them without it.
SIZED = {
    "kmc_cache_stats_sized": "kmc_cache_stats",
    "kmc_kmalloc_large_stats_sized": "kmc_kmalloc_large_stats",
}

pytestmark = pytest.mark.skipif(not CAPI.exists(), reason="needs the source tree")


def between(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def table_entries() -> list[str]:
    struct = between(HEADER.read_text(), "typedef struct kmemcache_capi_s {", "} kmemcache_capi_t;")
    return [a or b for a, b in re.findall(r"\(\*(kmc_\w+)\)\(|\*(kmc_kmalloc_classes);", struct)]


def caller_names() -> list[str]:
    return [SIZED.get(name, name) for name in table_entries()]


def test_the_macros_cover_the_table_in_order() -> None:
    macros = re.findall(r"^#define (kmc_\w+)", HEADER.read_text(), re.M)
    assert macros == caller_names()


def test_the_initializer_and_the_member_list_follow_the_table() -> None:
    capi = CAPI.read_text()
    init = between(capi, "static const kmemcache_capi_t capi = {", "};")
    assert re.findall(r"\.(kmc_\w+) =", init) == table_entries()
    assert re.findall(r"MEMBER\((kmc_\w+)\)", capi) == table_entries()


def test_the_pxd_declares_every_entry_in_order() -> None:
    code = "\n".join(ln for ln in PXD.read_text().splitlines() if not ln.lstrip().startswith("#"))
    declared = re.findall(r"^    \S.*?\b(kmc_\w+)(?:\(|$)", code, re.M)
    assert declared == caller_names()


@pytest.mark.parametrize("enum", ["kmc_status", "kmc_option"])
def test_the_pxd_enums_are_the_engines(enum: str) -> None:
    body = between(KMC.read_text(), f"typedef enum {enum}", f"}} {enum};")
    engine = re.findall(r"^\s+(KMC_\w+)", body, re.M)
    pxd = between(PXD.read_text(), f"ctypedef enum {enum}:", "\n\n")
    assert re.findall(r"^\s+(KMC_\w+)", pxd, re.M) == engine
