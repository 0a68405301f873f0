"""Tests for the ``kmemcache`` command (kmemcache.cli) and the demo it runs.

The demo runs in a subprocess, as users run it, with tiny counts. No test
looks at timings: only at shapes, counts and arithmetic.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

import pytest

from kmemcache import cli
from kmemcache.demo import lbr_layout, xsave

TINY = ["--live", "24", "--tasks", "96", "--rounds", "2", "--no-progress"]
NAMES = ["kzalloc", "kzalloc_align_up", "pmu_callbacks", "kmem_cache", "bytearray"]
FIELDS = {"name", "bytes_per_object", "ns_per_alloc_free", "misaligned", "xsave"}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    prog = ["-c", code] if code else ["-m", "kmemcache.cli"]
    return subprocess.run(
        [sys.executable, *prog, *args], capture_output=True, text=True, timeout=300, check=False
    )


def demo_json(*args: str) -> dict[str, Any]:
    proc = run_cli("demo", "--json", *TINY, *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def default_json() -> dict[str, Any]:
    return demo_json()


def test_json_shape(default_json: dict[str, Any]) -> None:
    options = default_json["options"]
    assert [o["name"] for o in options] == NAMES
    assert [o["option"] for o in options] == [0, 1, 2, 3, 4]
    for o in options:
        assert FIELDS <= set(o)
        assert o["xsave"] in ("ok", "fault", "skipped")
        assert isinstance(o["misaligned"], int) and 0 <= o["misaligned"] <= 24
        assert o["contexts_checked"] == 24
        assert o["ns_per_alloc_free"] > 0 and o["ns_per_task"] > 0
        assert o["bytes_per_object"] >= o["requested_bytes"]  # measured covers the request
    assert default_json["config"]["size"] == lbr_layout.X86_LBR_CACHE_SIZE
    assert default_json["config"]["align"] == 64


def test_the_aligned_cache_hands_out_no_misaligned_context(default_json: dict[str, Any]) -> None:
    kc = default_json["options"][3]
    assert kc["misaligned"] == 0
    assert kc["xsave"] == ("ok" if xsave.is_supported() else "skipped")
    callbacks = default_json["options"][2]
    assert callbacks["misaligned"] == 0


def test_overalloc_arithmetic(default_json: dict[str, Any]) -> None:
    o1 = default_json["options"][1]
    size, align = lbr_layout.X86_LBR_CACHE_SIZE, 64
    assert o1["requested_bytes"] == size + align
    assert o1["bytes_per_object"] >= size + align
    assert o1["misaligned"] == 0  # rounding up always works


def test_struct_pmu_grows_for_options_1_and_2(default_json: dict[str, Any]) -> None:
    sizes = [o["pmu_struct_bytes"] for o in default_json["options"]]
    assert sizes[0] == sizes[3]
    assert sizes[1] == sizes[3] + 8 and sizes[2] == sizes[3] + 16


def test_python_heap_leaves_out_the_context_data(default_json: dict[str, Any]) -> None:
    # kmemcache traces its objects in a tracemalloc domain of its own: the column
    # counts the task and its handles on Python's heap, not the 1512 bytes of data
    heaps = [o["python_bytes_per_task"] for o in default_json["options"][:4]]
    assert all(0 < h < lbr_layout.X86_LBR_CACHE_SIZE for h in heaps), heaps


def test_the_bytearray_reference_row(default_json: dict[str, Any]) -> None:
    # Python's own allocator: the data is on Python's heap, and nothing aligns it
    ref, kc = default_json["options"][4], default_json["options"][3]
    size = lbr_layout.X86_LBR_CACHE_SIZE
    assert ref["label"] == "bytearray(size), for reference"
    assert size < ref["bytes_per_object"] < size + 128  # the buffer and its header
    assert ref["python_bytes_per_task"] > size + kc["python_bytes_per_task"] - 64
    assert ref["pmu_struct_bytes"] == kc["pmu_struct_bytes"]
    assert 0 <= ref["misaligned"] <= ref["contexts_checked"]
    assert ref["alloc_free_vs_option_3"] > 0


def test_misaligned_xsave_is_shown_to_fault(default_json: dict[str, Any]) -> None:
    expected = "fault" if xsave.is_supported() else "skipped"
    assert default_json["xsave"]["misaligned_result"] == expected


def test_claims_are_reported(default_json: dict[str, Any]) -> None:
    claims = default_json["claims"]
    assert len(claims) == 5
    assert all(isinstance(c["holds"], bool) and c["text"] for c in claims)


def test_a_small_alignment_shows_xsave_faults() -> None:
    """A cache aligned to 16 only: some XSAVE areas land off a 64-byte boundary."""
    data = demo_json("--align", "16")
    kc = data["options"][3]
    assert kc["misaligned"] == 0  # against the 16 asked for
    if xsave.is_supported():
        assert kc["xsave"] == "fault"
        assert "off a 64-byte boundary" in kc["xsave_note"]


def test_table_output() -> None:
    proc = run_cli("demo", *TINY)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("perf task context data: 1512 bytes, 64-byte aligned")
    assert "24 tasks alive per option" in out
    for label in ("kzalloc(size)", "round up", "callbacks", "kmem_cache_zalloc"):
        assert label in out
    assert "memory per context" in out and "ns per alloc+free" in out
    assert out.count("PASS") + out.count("MISS") == 5
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_writes_a_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "demo.png"
    proc = run_cli("demo", *TINY, "--plot", str(target))
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from kmemcache.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    target = tmp_path / "demo.png"
    proc = run_cli("demo", *TINY, "--plot", str(target), code=code)
    assert proc.returncode == 2
    assert "matplotlib" in proc.stderr and "kmemcache[plot]" in proc.stderr
    assert not target.exists() and proc.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "0"], "--size"),
        (["--size", "big"], "not an integer"),
        (["--align", "48"], "power of two"),
        (["--align", "4"], "--align"),
        (["--live", "-3"], "--live"),
        (["--rounds", "0"], "--rounds"),
        (["--tasks", "1.5"], "not an integer"),
        (["--plot", "out.svg"], ".png"),
        (["--live", "1000000", "--size", "1000000"], "MiB"),
        (["--tasks", "1073741824", "--rounds", "1"], "tasks a round"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2(args: list[str], message: str) -> None:
    proc = run_cli("demo", *args)
    assert proc.returncode == 2
    assert "error" in proc.stderr and message in proc.stderr
    assert proc.stdout == ""


def test_unknown_command_and_no_command() -> None:
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = run_cli()
    assert proc.returncode == 2 and "demo" in proc.stderr


def test_slabinfo_command() -> None:
    proc = run_cli("slabinfo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "slabinfo - version: 2.1"
    assert lines[1].startswith("# name")


def test_slabinfo_lists_live_caches() -> None:
    code = (
        "import sys\n"
        "from kmemcache import Cache\n"
        "from kmemcache.cli import main\n"
        "c = Cache('task_ctx_demo', 1512, align=64); o = c.zalloc()\n"
        "sys.exit(main(['slabinfo']))"
    )
    proc = run_cli(code=code)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("task_ctx_demo"))
    fields = row.split()
    assert fields[1] == "1" and fields[3] == "1536"  # active_objs, objsize


def test_bench_without_benchmarks_says_where_they_are(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cli, "_find_benchmarks", lambda: None)
    assert cli.main(["bench"]) == 1
    err = capsys.readouterr().err
    assert "benchmarks/" in err and "source repository" in err


def test_bench_runs_each_benchmark_with_the_arguments(tmp_path, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name in ("bench_a.py", "bench_b.py"):
        (folder / name).write_text("import sys; print('ran', sys.argv[1:])\n")
    monkeypatch.setattr(cli, "_find_benchmarks", lambda: folder)
    assert cli.main(["bench", "--quick", "--json", "x.json"]) == 0
    out = capfd.readouterr().out
    assert out.count("ran ['--quick', '--json', 'x.json']") == 2
    assert "== bench_a.py" in out and "== bench_b.py" in out
    (folder / "run_all.py").write_text("import sys; print('all', sys.argv[1:]); sys.exit(3)\n")
    assert cli.main(["bench"]) == 3  # a runner, when there is one, runs instead
    out = capfd.readouterr().out
    assert "all []" in out and "ran" not in out


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("kmemcache") == "kmemcache.cli:main"


# --- the demo's arithmetic, in process ------------------------------------------


def test_paired_ratio() -> None:
    from kmemcache.demo import paired_ratio

    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == (2.0, 2.0, 2.0)
    median, q1, q3 = paired_ratio([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)
    assert (median, q1, q3) == (3.0, 2.0, 4.0)
    assert paired_ratio([3.0], [2.0]) == (1.5, 1.5, 1.5)


def test_demo_config_rejects_bad_values() -> None:
    from kmemcache.demo import DemoConfig

    with pytest.raises(ValueError):
        DemoConfig(align=48)
    with pytest.raises(ValueError):
        DemoConfig(live=0)
    with pytest.raises(TypeError):
        DemoConfig(size=1.5)  # type: ignore[arg-type]
    assert DemoConfig(tasks=10, rounds=3).steps_per_round == 3
