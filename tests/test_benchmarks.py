"""Smoke test of the benchmarks: they run, and their JSON has the promised shape.

Counts are tiny (--quick), so nothing here looks at how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kmemcache

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK_SIZES = [64, 65536]
QUICK_ALIGNS = [64, 4096]
STATUSES = {"ok", "not installed", "failed"}
TARGET_STATUSES = {"PASS", "MISS", "SKIP"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_quick(script: str, out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/<script> --quick --json out`` in a fresh process."""
    # The child must see the same modules as this process (e.g. kmemcache from src/).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("KMEMCACHE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--no-progress", "--json", str(out)]
        + list(extra),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=BENCHMARKS.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def check_targets(targets: list[dict[str, Any]]) -> None:
    for t in targets:
        assert t["status"] in TARGET_STATUSES, t
        assert (t["ratio"] is None) == (t["status"] == "SKIP"), t
        assert t["better"] in ("higher", "lower") and t["threshold"] > 0
        assert t["description"] and t["key"]


def target_lines(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith(("- PASS", "- MISS", "- SKIP"))]


def table_is_whole(stdout: str) -> None:
    table = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    assert table
    # every table's rows have as many cells as its header (tables are separated by text)
    blocks: list[list[str]] = []
    previous = False
    for ln in stdout.splitlines():
        is_row = ln.startswith("|")
        if is_row and not previous:
            blocks.append([])
        if is_row:
            blocks[-1].append(ln)
        previous = is_row
    for block in blocks:
        assert len({ln.count("|") for ln in block}) == 1, block


# --- bench_alloc ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_alloc(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "alloc.json"
    return run_quick("bench_alloc.py", out)


def test_alloc_top_level_shape(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    assert data["benchmark"] == "alloc"
    assert data["sizes"] == QUICK_SIZES
    assert data["aligns"] == QUICK_ALIGNS
    assert data["quick"] is True
    assert data["baselines"] == {
        "zeroed": "kmemcache_zalloc_free",
        "unzeroed": "kmemcache_alloc_free",
    }
    assert data["environment"]["clock"].startswith("thread CPU time")  # the default
    overhead = data["loop_overhead"]
    assert overhead["bare_loop_ns"] > 0 and overhead["empty_op_call_ns"] > 0
    assert set(data["results"]) == {str(a) for a in QUICK_ALIGNS}
    for by_size in data["results"].values():
        assert set(by_size) == {str(s) for s in QUICK_SIZES}


def test_alloc_every_peer_reported_everywhere(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    keys = None
    for by_size in data["results"].values():
        for records in by_size.values():
            if keys is None:
                keys = [r["key"] for r in records]
            assert [r["key"] for r in records] == keys  # same peers, same order
            for rec in records:
                assert rec["status"] in STATUSES, rec
                assert rec["status"] != "failed", rec
                if rec["status"] == "ok":
                    assert isinstance(rec["aligned"], bool)
                    assert len(rec["samples_ns"]) == data["repeats"]
                    # the wall clock's samples are kept beside the CPU clock's
                    assert len(rec["other_clock_samples_ns"]) == data["repeats"]
                    assert rec["min_ns"] <= rec["median_ns"] <= rec["max_ns"]
                else:
                    assert "median_ns" not in rec and rec["note"]
    assert keys is not None
    assert {"bytearray", "posix_memalign", "posix_memalign_nozero", "mmap"} <= set(keys)


@pytest.mark.parametrize(
    ("module", "keys"),
    [
        (
            "numpy",
            [
                "numpy_slice",
                "numpy_zeros",
                "numpy_empty",
                "numpy_slice_empty",
                "numpy_kmemcache",
                "numpy_kmemcache_empty",
            ],
        ),
        ("pyfftw", ["pyfftw_zeros", "pyfftw_empty"]),
        ("kmemcache", ["kmemcache_zalloc_free", "kmemcache_zalloc_drop", "kmemcache_alloc_free"]),
    ],
)
def test_alloc_optional_peers_match_what_is_installed(
    bench_alloc: tuple[dict[str, Any], str], module: str, keys: list[str]
) -> None:
    data, _ = bench_alloc
    expected = "ok" if installed(module) else "not installed"
    for by_size in data["results"].values():
        for records in by_size.values():
            by_key = {r["key"]: r for r in records}
            for key in keys:
                assert by_key[key]["status"] == expected, by_key[key]


def test_alloc_always_aligned_peers_are_aligned(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    prefixes = (
        "kmemcache",
        "kmalloc",
        "posix_memalign",
        "numpy_slice",
        "pyfftw",
        "numpy_kmemcache",
        "numpy_c_handler",
    )
    for by_size in data["results"].values():
        for records in by_size.values():
            for rec in records:
                if rec["key"].startswith(prefixes) and rec["status"] == "ok":
                    assert rec["aligned"] is True, rec


def test_alloc_ratios_are_like_against_like(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, _ = bench_alloc
    for by_size in data["results"].values():
        for records in by_size.values():
            by_key = {r["key"]: r for r in records}
            for rec in records:
                want = "kmemcache_zalloc_free" if rec["zeroed"] else "kmemcache_alloc_free"
                assert rec["baseline"] == want
                base = by_key[want]
                has_ratio = rec["status"] == "ok" and base["status"] == "ok"
                assert ("ratio" in rec) == has_ratio, rec
            for key in ("kmemcache_zalloc_free", "kmemcache_alloc_free"):
                if by_key[key]["status"] == "ok":
                    assert by_key[key]["ratio"] == pytest.approx(1.0)


def test_alloc_targets(bench_alloc: tuple[dict[str, Any], str]) -> None:
    data, stdout = bench_alloc
    assert [t["key"] for t in data["targets"]] == ["alloc.bytearray_64", "alloc.pyfftw_zeros"]
    check_targets(data["targets"])
    if installed("kmemcache"):
        assert data["targets"][0]["status"] != "SKIP"
    pyfftw_target = data["targets"][1]
    if installed("pyfftw"):
        # quick sizes up to 64 KiB, at both alignments
        assert {(p["size"], p["align"]) for p in pyfftw_target["points"]} == {
            (s, a) for s in QUICK_SIZES for a in QUICK_ALIGNS
        }
        assert pyfftw_target["ratio"] == min(p["ratio"] for p in pyfftw_target["points"])
    assert len(target_lines(stdout)) == 2


def test_alloc_markdown(bench_alloc: tuple[dict[str, Any], str]) -> None:
    _, stdout = bench_alloc
    table_is_whole(stdout)
    assert stdout.count("| allocator") == 2 * len(QUICK_ALIGNS)  # zeroed and not, per align
    assert any("bytearray(n) create+drop" in line for line in stdout.splitlines())


# --- bench_memory --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_memory(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "memory.json"
    return run_quick("bench_memory.py", out)


def test_memory_shape(bench_memory: tuple[dict[str, Any], str]) -> None:
    data, stdout = bench_memory
    assert data["benchmark"] == "memory" and data["quick"] is True
    [cfg] = data["configs"]
    assert (cfg["size"], cfg["align"], cfg["ideal"], cfg["ns"]) == (64, 64, 64, [1000])
    assert {"kmemcache_engine", "kmemcache", "bytearray", "posix_memalign"} <= set(cfg["runs"])
    for key, by_n in cfg["runs"].items():
        rec = by_n["1000"]
        assert rec["status"] in STATUSES | {"skipped"}, (key, rec)
        assert rec["status"] != "failed", (key, rec)
        if rec["status"] == "ok":
            assert rec["rss_after"] >= rec["rss_before"] > 0
            assert rec["bytes_per_object"] >= 0
            assert isinstance(rec["aligned"], bool)
            assert "handle_bytes" in rec
    runs = cfg["runs"]
    if installed("kmemcache"):
        engine, handles = runs["kmemcache_engine"]["1000"], runs["kmemcache"]["1000"]
        assert engine["status"] == "ok" and engine["aligned"] is True
        assert engine["handle_bytes"] == 0
        assert engine["engine"]["active_objs"] == 1000  # the ctypes view of kmc_stats_t
        assert handles["status"] == "ok" and handles["handle_how"] == "measured"
        assert handles["handle_sizeof"] > 0
    assert runs["posix_memalign"]["1000"]["aligned"] is True
    # no 1e6 run in --quick: the memory target is not evaluated
    assert data["targets"] == []
    assert data["layout"]["status"] in ("ok", "not installed")
    if data["layout"]["status"] == "ok":
        assert data["layout"]["checked"] > 1000
        assert 1.0 <= data["layout"]["worst"]["ratio"] < 1.1
    table_is_whole(stdout)


def test_memory_child_refuses_nothing_silently(tmp_path: Path) -> None:
    # an allocator too slow for big N is skipped with a reason, without a child
    out = tmp_path / "memory.json"
    data, _ = run_quick(
        "bench_memory.py",
        out,
        "--config",
        "64:64:1e3,2e4",
        "--holders",
        "mmap",
        "--max-n",
        "1e4",
    )
    runs = data["configs"][0]["runs"]["mmap"]
    assert runs["1000"]["status"] == "ok"
    assert runs["20000"]["status"] == "skipped" and "--max-n" in runs["20000"]["note"]


# --- bench_scaling -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_scaling(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "scaling.json"
    return run_quick("bench_scaling.py", out)


def test_scaling_shape(bench_scaling: tuple[dict[str, Any], str]) -> None:
    data, stdout = bench_scaling
    assert data["benchmark"] == "scaling" and data["levels"] == [1000, 10000]
    assert data["patterns"] == ["lifo", "random", "touch"]
    assert set(data["results"]) == {"kmemcache", "bytearray"}
    for key, res in data["results"].items():
        assert res["status"] in STATUSES and res["status"] != "failed", (key, res)
        if res["status"] != "ok":
            continue
        for pattern in data["patterns"]:
            rows = res[pattern]
            assert set(rows) == {"1000", "10000"}
            assert rows["1000"]["ratio"] == pytest.approx(1.0)
            assert rows["10000"]["median_ns"] > 0 and rows["10000"]["ratio"] > 0
            assert len(rows["10000"]["samples_ns"]) == data["repeats"]
    assert [t["key"] for t in data["targets"]] == ["scaling.lifo", "scaling.random"]
    check_targets(data["targets"])
    assert len(target_lines(stdout)) == 2
    table_is_whole(stdout)


# --- bench_bulk and bench_threads ------------------------------------------------------


def test_bulk_shape(tmp_path: Path) -> None:
    out = tmp_path / "bulk.json"
    data, stdout = run_quick("bench_bulk.py", out)
    assert data["benchmark"] == "bulk" and data["counts"] == [16, 256, 4096]
    kinds = {(r["kind"], r["zero"]) for r in data["results"]}
    assert kinds == {
        ("bulk", True),
        ("loop", True),
        ("bytearray", True),
        ("bulk", False),
        ("loop", False),
    }
    for rec in data["results"]:
        assert rec["status"] in STATUSES and rec["status"] != "failed", rec
        if rec["status"] == "ok":
            assert rec["ns_per_object"] == pytest.approx(rec["median_ns"] / rec["n"])
            assert "ratio" in rec
            if rec["kind"] == "bulk":
                assert rec["ratio"] == pytest.approx(1.0)
    table_is_whole(stdout)


def test_threads_shape(tmp_path: Path) -> None:
    out = tmp_path / "threads.json"
    data, stdout = run_quick("bench_threads.py", out)
    assert data["benchmark"] == "threads" and data["gil"]
    by_key = {r["key"]: r for r in data["results"]}
    assert {"kmemcache-1", "kmemcache-2-shared", "kmemcache-2-own", "bytearray-2"} <= set(by_key)
    for rec in data["results"]:
        assert rec["status"] in STATUSES and rec["status"] != "failed", rec
        if rec["status"] == "ok":
            assert len(rec["samples_ops_per_s"]) == data["repeats"]
            assert rec["min_ops_per_s"] <= rec["median_ops_per_s"] <= rec["max_ops_per_s"]
            assert rec["median_ops_per_s"] > 0
    if installed("kmemcache"):
        assert by_key["kmemcache-2-shared"]["vs_1_thread"] > 0
        assert by_key["bytearray-1"]["vs_kmemcache"] > 0
    table_is_whole(stdout)


# --- bench_numpy ---------------------------------------------------------------------


def test_numpy_shape(tmp_path: Path) -> None:
    if not installed("numpy"):
        pytest.skip("numpy not installed")
    data, stdout = run_quick("bench_numpy.py", tmp_path / "numpy.json")
    assert data["benchmark"] == "numpy" and data["align"] == 64
    assert data["sizes"] == [64, 65536]
    for size in data["sizes"]:
        records = {r["key"]: r for r in data["results"][str(size)]}
        assert set(records) == {
            f"{f}_{h}"
            for f in ("empty", "zeros")
            for h in ("default", "kmemcache", "aligned_alloc")
        }
        for key, rec in records.items():
            assert rec["status"] in STATUSES, rec
            assert rec["baseline"] == key.split("_")[0] + "_default"
            if key.endswith(("_kmemcache", "_aligned_alloc")) and rec["status"] == "ok":
                assert rec["aligned"] is True and "ratio" in rec, rec
    # the handler is entered once per timed loop, not left installed afterwards
    assert data["aligned"]["kmemcache"]["share"] == 1.0
    assert data["aligned"]["kmemcache"]["arrays"] >= 100
    check_targets(data["targets"])
    assert {t["key"] for t in data["targets"]} == {
        "numpy.vs_default",
        "numpy.vs_aligned_alloc",
        "numpy.aligned_share",
    }
    assert len(target_lines(stdout)) == 3
    table_is_whole(stdout)
    assert "kmemcache / aligned_alloc" in stdout


def test_allocinfo_shape(tmp_path: Path) -> None:
    data, stdout = run_quick("bench_allocinfo.py", tmp_path / "allocinfo.json")
    assert data["benchmark"] == "allocinfo" and (data["size"], data["align"]) == (64, 64)
    assert set(data["results"]) == {"cache", "kmalloc"}
    for op, records in data["results"].items():
        assert [r["key"] for r in records] == [f"{op}_off", f"{op}_on"]
        assert all(r["status"] == "ok" for r in records), records
        assert "ratio" in records[1] and records[1]["ratio"] > 0
    check_targets(data["targets"])
    assert [t["key"] for t in data["targets"]] == ["allocinfo.on_vs_off"]
    (line,) = target_lines(stdout)
    assert "allocinfo on <= 1.5x off" in line
    table_is_whole(stdout)


def test_groups_shape(tmp_path: Path) -> None:
    data, stdout = run_quick("bench_groups.py", tmp_path / "groups.json")
    assert data["benchmark"] == "groups"
    keys = {op: [r["key"] for r in recs] for op, recs in data["results"].items()}
    assert keys["cache"] == ["cache_never", "cache_before", "cache_group"]
    assert keys["kmalloc"] == ["kmalloc_none", "kmalloc_group"]
    for op in ("np_empty", "np_zeros"):
        assert keys[op] == [f"{op}_none", f"{op}_group"]
    for records in data["results"].values():
        assert all(r["status"] == "ok" for r in records), records
        assert all("ratio" in r and r["ratio"] > 0 for r in records[1:])
    check_targets(data["targets"])
    assert [t["key"] for t in data["targets"]] == ["groups.in_group_vs_none"]
    (line,) = target_lines(stdout)
    assert "in a group with a limit <= 1.10x no group" in line
    table_is_whole(stdout)


def test_allocinfo_refuses_to_run_with_allocinfo_on(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_allocinfo.py"), "--quick", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "KMEMCACHE_ALLOCINFO": "1"},
    )
    assert proc.returncode != 0 and "allocinfo is on" in proc.stderr


def test_harness_enters_an_op_once_per_loop() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    events: list[str] = []

    def op() -> None:
        events.append("call")

    op.enter = lambda: events.append("enter") or "token"  # type: ignore[attr-defined]
    op.exit = lambda token: events.append(f"exit {token}")  # type: ignore[attr-defined]
    cand = _harness.Candidate(key="k", label="k", op=op)
    _harness.run_round_robin([cand], repeats=2, number=5, target_ns=0)
    assert events.count("enter") == events.count("exit token") == 3  # warm-up, 2 loops
    assert events[0] == "enter" and events[-1] == "exit token"
    assert events.count("call") == 5 + 2 * 5


def test_shared_shape(tmp_path: Path) -> None:
    out = tmp_path / "shared.json"
    data, stdout = run_quick("bench_shared.py", out)
    assert data["benchmark"] == "shared"
    for size in ("64", "1512"):
        keys = [r["key"] for r in data["alloc"][size]]
        assert keys == ["private", "shared", "shared-locked"]
        for rec in data["alloc"][size]:
            assert rec["status"] == "ok" and rec["median_ns"] > 0, rec
    handoff = {r["key"]: r for r in data["handoff"]["results"]}
    assert set(handoff) == {"shared", "bytes", "shm", "int"}
    assert handoff["shared"]["vs_shared"] == pytest.approx(1.0)
    assert all(len(r["samples_ns"]) == data["handoff"]["repeats"] for r in handoff.values())
    scale = data["scale"]["results"]
    assert {(r["key"], r["processes"]) for r in scale} == {
        (k, p) for k in ("shared", "shared-locked", "private") for p in (1, 2)
    }
    assert all(r["median_ops_per_s"] > 0 for r in scale)
    pipe = data["pipe"]
    assert [r["key"] for r in pipe["results"]] == ["shared", "bytes"]
    assert all(len(r["samples_ns"]) == pipe["repeats"] for r in pipe["results"])
    ref, raw = (r["median_ns"] for r in pipe["results"])
    assert pipe["extra_ns"] == pytest.approx(ref - raw) and pipe["ratio"] == pytest.approx(
        ref / raw
    )
    check_targets(data["targets"])
    assert {t["key"] for t in data["targets"]} == {
        "shared-alloc-free",
        "handoff-vs-bytes",
        "handoff-vs-shm",
        "two-processes",
        "reference-vs-bytes",
    }
    assert len(target_lines(stdout)) == 5
    table_is_whole(stdout)
    assert not [n for n in kmemcache.shared.regions() if n.startswith("bench-shared-")]


# --- bench_transport ------------------------------------------------------------------------


def test_transport_shape(tmp_path: Path) -> None:
    data, stdout = run_quick("bench_transport.py", tmp_path / "transport.json")
    assert data["benchmark"] == "transport" and data["sizes"] == [65536, 1 << 20]
    for p in data["pickle"]:
        # counted, not timed: these hold in --quick too
        assert p["buffers"] == 1 and p["out_of_band_bytes"] == p["size"]
        assert p["inband_bytes"] < 200 and p["copies"] == 0
    ways = ["shared", "object", "bytes", "shm", "int"]
    transports = data["transports"]
    assert set(transports) == {"queue", "pipe", "dask"}
    expected_dask = "ok" if installed("distributed") else "not installed"
    assert transports["dask"]["status"] == expected_dask
    for kind, res in transports.items():
        if res["status"] != "ok":
            assert res["note"]
            continue
        assert set(res["by_size"]) == {"65536", str(1 << 20)}
        for by_size in res["by_size"].values():
            recs = by_size["results"]
            assert [r["key"] for r in recs] == ways, kind
            assert recs[0]["vs_shared"] == pytest.approx(1.0)
            for rec in recs:
                assert len(rec["samples_ns"]) == data["repeats"] and rec["median_ns"] > 0
    [target] = data["targets"]
    check_targets(data["targets"])
    assert target["key"] == "pickle5-1MiB" and target["status"] == "PASS", target
    assert len(target_lines(stdout)) == 1
    table_is_whole(stdout)
    assert not [n for n in kmemcache.shared.regions() if n.startswith("bench-shared-")]


# --- bench_pool --------------------------------------------------------------------------


def test_pool_measures_every_allocator_at_every_size(tmp_path: Path) -> None:
    data, stdout = run_quick("bench_pool.py", tmp_path / "pool.json")
    assert data["benchmark"] == "pool"
    assert [(r["size"], r["live"]) for r in data["rows"]] == [
        (size, live) for size in (64, 1512, 4096) for live in (256, 4096)
    ]
    for row in data["rows"]:
        recs = {r["key"]: r for r in row["records"]}
        assert set(recs) == {"alloc", "zalloc", "kzalloc", "bytearray", "numpy", "pyarrow"}
        for key in ("alloc", "zalloc", "kzalloc"):
            assert recs[key]["status"] == "ok" and recs[key]["aligned"] is True
            assert recs[key]["median_ns"] > 0
        assert "ratio" not in recs["alloc"] and recs["bytearray"]["ratio"] > 0
        for rec in recs.values():
            assert rec["status"] in STATUSES
            if rec["status"] == "ok":
                assert len(rec["samples_ns"]) == data["repeats"]
    check_targets(data["targets"])
    assert len(target_lines(stdout)) == 1
    table_is_whole(stdout)


# --- run_all ---------------------------------------------------------------------------


def test_run_all_writes_json_report_and_plots(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("KMEMCACHE_DEBUG", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run_all.py"),
            "--quick",
            "--no-progress",
            "--only",
            "bulk,threads",
            "--out",
            str(tmp_path),
            "--plots-dir",
            str(tmp_path),
            "--docs-page",
            str(tmp_path / "docs" / "benchmarks.md"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert page.startswith("# Benchmarks\n") and "(bench-bulk)=" in page
    assert "## threads (`bench_threads.py`)" in page and "A --quick run" in page
    combined = json.loads((tmp_path / "results.json").read_text())
    assert set(combined["benchmarks"]) == {"bulk", "threads"}
    assert combined["quick"] is True and "run_all.py" in combined["command"]
    assert all(b["status"] == "ok" for b in combined["benchmarks"].values())
    assert isinstance(combined["targets"], list)
    report = (tmp_path / "report.md").read_text()
    assert "### bulk" in report and "### threads" in report and "### Targets" in report
    plots = sorted(p.name for p in tmp_path.glob("*.png"))
    if installed("matplotlib"):
        assert plots == ["bulk_threads.png"]
        assert (tmp_path / "bulk_threads.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert plots == [] and "matplotlib is not installed" in proc.stdout


def test_run_all_refuses_an_unknown_benchmark(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--only", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no such benchmark: nope" in proc.stderr


def test_the_docs_page_comes_from_the_results() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    combined = {
        "command": "python benchmarks/run_all.py",
        "date": "2026-01-02T03:04:05+00:00",
        "seconds": 540.2,
        "quick": False,
        "git": {"commit": "0123456789abcdef0123", "dirty": False},
        "environment": {
            "implementation": "CPython",
            "python": "3.12.1",
            "system": "Linux",
            "machine": "x86_64",
            "cpu_count": 2,
            "packages": {"kmemcache": "0.1.0", "numpy": None},
            "clock": None,
        },
        "targets": [
            {
                "status": "MISS",
                "description": "a target",
                "ratio": 1.5,
                "better": "lower",
                "threshold": 1.0,
                "benchmark": "alloc",
            }
        ],
        "benchmarks": {"alloc": {"status": "ok"}, "bulk": {"status": "ok"}, "threads": {}},
    }
    reports = {
        "alloc": "| a | b |\n| - | - |\n| 1 | 2 |\n",
        "bulk": "#### Part\nbulk table\n",
        "threads": "",
    }
    docs = Path("/x/docs")
    plots = [docs / "bench" / "alloc.png", docs / "bench" / "bulk_threads.png"]
    page = _harness.docs_page(combined, reports, plots, docs / "benchmarks.md")
    assert page.startswith("# Benchmarks\n\n" + _harness.DOCS_PAGE_MARK + "\n")
    assert "on 2026-01-02T03:04:05+00:00, at commit 0123456789ab, in 540 s" in page
    assert "CPython 3.12.1, Linux x86_64, 2 CPUs; kmemcache 0.1.0." in page
    assert "- MISS: a target: 1.50x (target <= 1x) (`bench_alloc`)" in page
    assert "Failed to run: `bench_threads.py`." in page
    assert "\n### Part\n" in page  # under the page's level-2 heading, no level skipped
    alloc = page.index("(bench-alloc)=")
    assert page.index("| 1 | 2 |") > alloc
    assert page.index("![alloc: alloc](bench/alloc.png)") > alloc
    # bulk_threads.png belongs after the last of its two benchmarks
    assert page.index("![threads: bulk threads](bench/bulk_threads.png)") > page.index(
        "(bench-threads)="
    )


def test_the_checked_in_docs_page_says_where_it_came_from() -> None:
    page = BENCHMARKS.parent / "docs" / "benchmarks.md"
    if not page.exists():
        pytest.skip("docs/ is not in this tree")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    text = page.read_text()
    assert text.splitlines()[2] == _harness.DOCS_PAGE_MARK
    assert re.search(r"at commit [0-9a-f]{7,}", text)
