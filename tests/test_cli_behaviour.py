"""How the ``kmemcache`` command behaves at its edges: closed pipes, Ctrl-C, bad
arguments (each subcommand's own usage), --plot paths checked before the run,
--version and slabinfo --json. Each runs the command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kmemcache

CLI = [sys.executable, "-m", "kmemcache.cli"]
TINY = ["--live", "24", "--tasks", "96", "--rounds", "2", "--no-progress"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["slabinfo"], ["demo", "--json", *TINY], ["--help"]])
def test_output_into_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=300)
    assert err == ""
    assert status in (0, 141)  # 0 only if everything fitted before the close was seen


def test_ctrl_c_is_one_line_and_status_130() -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--no-progress", "--tasks", str(1 << 28), "--rounds", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the interrupt must come once the demo runs, not while Python imports it
    # (then Python's own traceback is right): wait for a second of its CPU
    # time, which the imports never take, however loaded the machine
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / tick >= 1.0:  # utime + stime
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "kmemcache: interrupted\n"
    assert out == ""


@pytest.mark.parametrize(
    "args,usage,message",
    [
        (["demo", "--size", "0"], "usage: kmemcache demo", "argument --size"),
        (["demo", "--bogus"], "usage: kmemcache demo", "unrecognized arguments: --bogus"),
        (["demo", "--live", "1048576", "--size", "1048576"], "usage: kmemcache demo", "MiB"),
        (["demo", "--plot", "x.svg"], "usage: kmemcache demo", "must end in .png"),
        (["slabinfo", "--bogus"], "usage: kmemcache slabinfo", "unrecognized arguments"),
        (["nothing"], "usage: kmemcache [-h]", "invalid choice"),
    ],
)
def test_errors_print_the_subcommands_usage(args: list[str], usage: str, message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(usage), proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize(
    "where,message",
    [
        ("missing/dir/plot.png", "does not exist"),
        ("adir.png", "is a directory"),
        ("readonly/plot.png", "cannot write there"),
    ],
)
def test_plot_path_is_checked_before_the_run(tmp_path: Path, where: str, message: str) -> None:
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "readonly").mkdir()
    (tmp_path / "readonly").chmod(0o500)
    if os.geteuid() == 0 and message == "cannot write there":
        pytest.skip("root may write anywhere")
    started = time.monotonic()
    proc = run("demo", *TINY, "--plot", str(tmp_path / where))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""  # nothing ran
    assert time.monotonic() - started < 30


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"kmemcache {kmemcache.__version__}\n"


def test_slabinfo_json() -> None:
    code = (
        "import sys, kmemcache; from kmemcache import cli;"
        "c = kmemcache.Cache('json_me', 100, align=64); objs = c.alloc_bulk(3);"
        "sys.exit(cli.main(['slabinfo', '--json']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["version"] == "2.1"
    (cache,) = [c for c in data["caches"] if c["name"] == "json_me"]
    assert cache["active_objs"] == 3 and cache["objsize"] == 128 and cache["align"] == 64
    assert set(cache) == {f.name for f in kmemcache.SlabStats.__dataclass_fields__.values()}
