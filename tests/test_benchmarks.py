"""Smoke test of the benchmarks: they run, and their JSON has the promised shape.

Counts are tiny (--quick), so nothing here looks at how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SIZES = [64, 1472, 4096]
STATUSES = {"ok", "not installed", "failed"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def bench_alloc(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "alloc.json"
    # The child must see the same modules as this process (e.g. kmemcache from src/).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_alloc.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_top_level_shape(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    assert data["benchmark"] == "alloc"
    assert data["sizes"] == SIZES
    assert data["align"] == 64
    assert data["quick"] is True
    assert data["baseline"] == "kmemcache_zalloc_free"
    overhead = data["loop_overhead"]
    assert overhead["bare_loop_ns"] > 0 and overhead["empty_op_call_ns"] > 0
    assert set(data["results"]) == {str(s) for s in SIZES}


def test_every_peer_reported_for_every_size(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    keys = None
    for size in SIZES:
        records = data["results"][str(size)]
        if keys is None:
            keys = [r["key"] for r in records]
        assert [r["key"] for r in records] == keys  # same peers, same order
        for rec in records:
            assert rec["status"] in STATUSES, rec
            assert rec["status"] != "failed", rec
            if rec["status"] == "ok":
                assert isinstance(rec["aligned"], bool)
                assert len(rec["samples_ns"]) == data["repeats"]
                assert rec["min_ns"] <= rec["median_ns"] <= rec["max_ns"]
            else:
                assert "median_ns" not in rec and rec["note"]
    assert keys is not None and {"bytearray", "posix_memalign", "mmap"} <= set(keys)


@pytest.mark.parametrize(
    ("module", "keys"),
    [
        ("numpy", ["numpy_slice", "numpy_zeros", "numpy_empty"]),
        ("pyfftw", ["pyfftw_zeros", "pyfftw_empty"]),
        ("kmemcache", ["kmemcache_zalloc_free", "kmemcache_zalloc_drop", "kmemcache_alloc_free"]),
    ],
)
def test_optional_peers_match_what_is_installed(
    bench_alloc: tuple[dict[str, Any], str], module: str, keys: list[str]
) -> None:
    data, _ = bench_alloc
    expected = "ok" if installed(module) else "not installed"
    for size in SIZES:
        records = {r["key"]: r for r in data["results"][str(size)]}
        for key in keys:
            assert records[key]["status"] == expected, records[key]


def test_always_aligned_peers_are_aligned(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    for size in SIZES:
        for rec in data["results"][str(size)]:
            if rec["key"].startswith(("kmemcache", "posix_memalign", "mmap", "numpy_slice")):
                if rec["status"] == "ok":
                    assert rec["aligned"] is True, rec


def test_ratios_and_targets(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    for size in SIZES:
        records = data["results"][str(size)]
        base = records[0]
        assert base["key"] == data["baseline"]
        for rec in records:
            # A ratio exists exactly when both the peer and kmemcache were measured.
            has_ratio = rec["status"] == "ok" and base["status"] == "ok"
            assert ("ratio" in rec) == has_ratio, rec
        if base["status"] == "ok":
            assert base["ratio"] == pytest.approx(1.0)
    assert [t["peer"] for t in data["targets"]] == ["bytearray", "pyfftw_zeros"]
    for target in data["targets"]:
        assert target["status"] in {"PASS", "MISS", "SKIP"}
        assert (target["ratio"] is None) == (target["status"] == "SKIP")
    if installed("kmemcache"):
        assert data["targets"][0]["status"] != "SKIP"


def test_markdown_output(bench_alloc: tuple[dict[str, Any], str]) -> None:
    _, stdout = bench_alloc
    lines = stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| allocator")
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert any("bytearray(n) create+drop" in line for line in table)
    assert sum(line.startswith(("- PASS", "- MISS", "- SKIP")) for line in lines) == 2
