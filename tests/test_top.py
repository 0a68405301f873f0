"""``kmemcache top`` and ``kmemcache slabinfo --pid``, and the statistics that
processes publish for them (kmemcache.publishing). Each command runs in a
subprocess; the statistics folder is the test's own (KMEMCACHE_STATS_DIR)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kmemcache
from kmemcache import SharedCache, publishing

CLI = [sys.executable, "-m", "kmemcache.cli"]
MiB = 1 << 20


@pytest.fixture
def stats_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "stats"
    monkeypatch.setenv("KMEMCACHE_STATS_DIR", str(folder))
    return folder


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "KMEMCACHE_PUBLISH"}
    e["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return e


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env())


@pytest.fixture
def publisher(stats_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A process with a private cache of 1000 live objects that publishes."""
    code = textwrap.dedent(
        """
        import sys, time, kmemcache
        c = kmemcache.Cache("published_cache", 100, align=64)
        objs = c.alloc_bulk(1000)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env(), "KMEMCACHE_PUBLISH": "0.1"},
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 10
    while publishing.read(proc.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def test_top_shows_shared_and_published_caches(
    shared_name: Callable[[], str], publisher: subprocess.Popen[str]
) -> None:
    with SharedCache(shared_name(), 4096, 4096, capacity=16 * MiB) as c:
        objs = c.alloc_bulk(300)
        proc = run("top", "--json")
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)["caches"]
        (mine,) = [r for r in rows if r["name"] == c.name]
        assert (mine["where"], mine["pid"], mine["active"], mine["objsize"]) == (
            "shared",
            None,
            300,
            4096,
        )
        assert mine["memory"] == c.stats().committed_bytes >= 300 * 4096
        (theirs,) = [r for r in rows if r["name"] == "published_cache"]
        assert theirs["pid"] == publisher.pid and theirs["active"] == 1000
        assert theirs["objsize"] == 128
        memories = [r["memory"] for r in rows]
        assert memories == sorted(memories, reverse=True)  # largest memory first
        table = run("top", "--once")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith(" kmemcache top - ")
        assert "OBJS   ACTIVE  USE OBJ SIZE" in table.stdout
        line = next(ln for ln in lines if ln.endswith(" " + c.name))
        assert line.split()[:2] == [str(c.stats().num_objs), "300"] and " shared " in line
        by_name = run("top", "--once", "--sort", "name")
        names = [ln.split()[-1] for ln in by_name.stdout.splitlines()[6:]]
        assert names == sorted(names)
        c.free_bulk(objs)


def test_top_refreshes(stats_dir: Path) -> None:
    proc = run("top", "-n", "3", "--interval", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" kmemcache top - ") == 3


def test_slabinfo_of_another_process(publisher: subprocess.Popen[str]) -> None:
    proc = run("slabinfo", "--pid", str(publisher.pid))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "slabinfo - version: 2.1"
    (row,) = [ln for ln in lines if ln.startswith("published_cache ")]
    assert row.split()[1:4] == ["1000", "1024", "128"]
    as_json = json.loads(run("slabinfo", "--pid", str(publisher.pid), "--json").stdout)
    assert as_json["pid"] == publisher.pid
    assert any(c["name"] == "published_cache" for c in as_json["caches"])


def test_slabinfo_of_a_process_that_does_not_publish(stats_dir: Path) -> None:
    proc = run("slabinfo", "--pid", str(os.getpid()))
    assert proc.returncode == 1
    assert "does not publish" in proc.stderr and "KMEMCACHE_PUBLISH=1" in proc.stderr
    assert proc.stdout == ""


def test_a_dead_publishers_file_is_ignored_and_removed(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    (stats_dir / "999999.json").write_text(json.dumps({"pid": 999999, "caches": []}))
    stale = {"pid": os.getpid(), "start": 1, "caches": []}  # a reused pid's
    (stats_dir / f"{os.getpid()}.json").write_text(json.dumps(stale))
    assert publishing.published() == []
    assert list(stats_dir.iterdir()) == []


@pytest.mark.parametrize(
    "args,usage,message",
    [
        (["top", "--interval", "0"], "usage: kmemcache top", "argument --interval"),
        (["top", "--sort", "colour"], "usage: kmemcache top", "invalid choice"),
        (["top", "-n", "0"], "usage: kmemcache top", "argument -n/--iterations"),
        (["top", "--bogus"], "usage: kmemcache top", "unrecognized arguments"),
        (["slabinfo", "--pid", "0"], "usage: kmemcache slabinfo", "argument --pid"),
        (["slabinfo", "--pid", "x"], "usage: kmemcache slabinfo", "not an integer"),
    ],
)
def test_errors_print_the_subcommands_usage(args: list[str], usage: str, message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(usage), proc.stderr
    assert message in proc.stderr


def test_top_ctrl_c_is_130(stats_dir: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "top", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "kmemcache: interrupted\n"
    assert " kmemcache top - " in out


def test_top_into_a_closed_pipe_ends_quietly(stats_dir: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "top", "-n", "50", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert proc.stderr.read().decode() == ""
    assert proc.wait(timeout=60) in (0, 141)


# --- publishing ------------------------------------------------------------------------


def test_publish_in_process(stats_dir: Path) -> None:
    cache = kmemcache.Cache("publish_me", 64)
    objs = cache.alloc_bulk(5)
    try:
        kmemcache.publish(interval=0.1)
        assert publishing.publishing()
        deadline = time.monotonic() + 5
        while publishing.read(os.getpid()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        data = publishing.read(os.getpid())
        assert data is not None and data["pid"] == os.getpid()
        (mine,) = [c for c in data["caches"] if c["name"] == "publish_me"]
        assert mine["active_objs"] == 5 and mine["shared"] is False
        assert (stats_dir.stat().st_mode & 0o777) == 0o700
    finally:
        kmemcache.publish(False)
        cache.free_bulk(objs)
        cache.destroy()
    assert not publishing.publishing()
    assert publishing.read(os.getpid()) is None  # its file went with it
    with pytest.raises(ValueError, match="interval"):
        kmemcache.publish(interval=0.01)


def test_publish_is_off_by_default_and_a_bad_value_warns(stats_dir: Path) -> None:
    code = "import kmemcache; from kmemcache import publishing; print(publishing.publishing())"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert off.stdout == "False\n"
    bad = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env(), "KMEMCACHE_PUBLISH": "often"},
    )
    assert bad.stdout == "False\n"
    assert "KMEMCACHE_PUBLISH='often'" in bad.stderr


# --- what is read is untrusted ---------------------------------------------------------

SITE = {"file": "a.py", "line": 3, "function": "f", "bytes": 100, "count": 1}
#: Call sites no publisher writes: each is a reason to skip the whole file.
BAD_SITES = [
    "all",
    {"a.py": 100},
    [SITE] * (publishing.SITES_MAX + 1),
    [SITE, [1, 2]],
    [{**SITE, "line": "3"}],
    [{**SITE, "bytes": -1}],
    [{**SITE, "count": True}],
    [{**SITE, "count": 1.0}],
    [{k: v for k, v in SITE.items() if k != "function"}],
    [{**SITE, "file": "x" * (publishing.SITE_NAME_MAX + 1)}],
    [{**SITE, "function": None}],
]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"pid": "me", "caches": []}),
        json.dumps({"pid": 0, "caches": []}),  # another process's pid
        json.dumps({"pid": None, "caches": [{"name": "x"}]}),
        json.dumps({"pid": None, "caches": "all"}),
        json.dumps({"pid": None, "caches": [{"name": "x", "num_objs": "many"}]}),
        *(json.dumps({"pid": None, "caches": [], "sites": sites}) for sites in BAD_SITES),
    ],
)
def test_a_malformed_statistics_file_is_skipped_with_a_warning(
    stats_dir: Path, content: str
) -> None:
    """The file of a live process (this one), malformed: top and slabinfo --pid
    skip it with a warning, never a traceback."""
    stats_dir.mkdir(mode=0o700)
    pid = os.getpid()
    (stats_dir / f"{pid}.json").write_text(content.replace("null", str(pid), 1))
    top = run("top", "--once")
    assert top.returncode == 0 and "Traceback" not in top.stderr, top.stderr
    assert "skipping" in top.stderr
    info = run("slabinfo", "--pid", str(pid))
    assert info.returncode == 1 and "Traceback" not in info.stderr, info.stderr
    assert "skipping" in info.stderr and "does not publish" in info.stderr
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert publishing.published() == []


def test_a_folder_others_may_write_is_not_used(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    os.chmod(stats_dir, 0o777)
    good = {"pid": os.getpid(), "caches": []}
    (stats_dir / f"{os.getpid()}.json").write_text(json.dumps(good))
    with pytest.warns(RuntimeWarning, match="mode 0777: other users may write"):
        assert publishing.read(os.getpid()) is None
    os.chmod(stats_dir, 0o700)
    assert publishing.read(os.getpid()) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_files_are_neither_read_nor_removed(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    dead, live = stats_dir / "999999.json", stats_dir / f"{os.getpid()}.json"
    for f in (dead, live):
        f.write_text(json.dumps({"pid": int(f.stem), "caches": []}))
        os.chown(f, 65534, 65534)
    with pytest.warns(RuntimeWarning, match="belongs to uid 65534"):
        assert publishing.published() == []
    assert dead.exists() and live.exists()


def test_a_fifo_in_the_folder_hangs_nothing(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    os.mkfifo(stats_dir / f"{os.getpid()}.json", 0o600)
    top = subprocess.run(
        [*CLI, "top", "--once"], capture_output=True, text=True, timeout=30, env=env()
    )
    assert top.returncode == 0 and "not a regular file" in top.stderr


def test_the_publisher_leaves_no_temporary_files(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    (stats_dir / ".tmp-999999").write_text("{")  # a publisher that died mid-write
    code = "import time, kmemcache; kmemcache.publish(interval=0.1); time.sleep(1)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env())
    assert done.returncode == 0, done.stderr
    assert publishing.published() == []
    assert list(stats_dir.iterdir()) == []


# --- call sites (kmemcache.allocinfo) ----------------------------------------------------


@pytest.fixture
def site_publisher(stats_dir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A publishing process that records call sites: 10 objects of 100 bytes
    allocated on line 4 of its script, 3 of 5000 bytes on line 5."""
    code = textwrap.dedent(
        """\
        import sys, kmemcache
        c = kmemcache.Cache("sites_cache", 100)
        keep, big = [], []
        for _ in range(10): keep.append(c.alloc())
        for _ in range(3): big.append(kmemcache.kmalloc(5000))
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env(), "KMEMCACHE_PUBLISH": "0.1", "KMEMCACHE_ALLOCINFO": "1"},
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = publishing.read(proc.pid)
        if data is not None and len(data.get("sites", [])) == 2:
            break
        time.sleep(0.05)
    yield proc, proc.pid
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


EXPECTED_SITES = [
    {"file": "<string>", "line": 5, "function": "<module>", "bytes": 15000, "count": 3},
    {"file": "<string>", "line": 4, "function": "<module>", "bytes": 1000, "count": 10},
]


def test_top_sites(site_publisher: tuple[subprocess.Popen[str], int]) -> None:
    _, pid = site_publisher
    as_json = json.loads(run("top", "--json", "--sites").stdout)
    (theirs,) = [p for p in as_json["sites"] if p["pid"] == pid]
    assert theirs["sites"] == EXPECTED_SITES
    assert "sites" not in json.loads(run("top", "--json").stdout)
    table = run("top", "--once", "--sites")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    at = lines.index(f" call sites of {pid} (-c):")
    assert lines[at + 1].split() == ["BYTES", "OBJS", "CALL", "SITE"]
    assert lines[at + 2].split() == ["14.6K", "3", "<string>:5", "(<module>)"]
    assert lines[at + 3].split() == ["1000B", "10", "<string>:4", "(<module>)"]
    assert "call sites" not in run("top", "--once").stdout


def test_slabinfo_sites(site_publisher: tuple[subprocess.Popen[str], int]) -> None:
    _, pid = site_publisher
    text = run("slabinfo", "--pid", str(pid), "--sites")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = lines.index("# call sites of live objects, largest first")
    assert [ln.split()[:3] for ln in lines[at + 2 :]] == [
        ["14.6K", "3", "<string>:5"],
        ["1000B", "10", "<string>:4"],
    ]
    as_json = json.loads(run("slabinfo", "--pid", str(pid), "--sites", "--json").stdout)
    assert as_json["sites"] == EXPECTED_SITES


def test_slabinfo_sites_of_a_process_that_records_none(
    publisher: subprocess.Popen[str],
) -> None:
    proc = run("slabinfo", "--pid", str(publisher.pid), "--sites")
    assert proc.returncode == 0 and "# call sites" not in proc.stdout
    assert f"process {publisher.pid} records no call sites" in proc.stderr
    assert "KMEMCACHE_ALLOCINFO=1" in proc.stderr
    own = run("slabinfo", "--sites", "--json")
    assert json.loads(own.stdout)["sites"] is None
    assert "this command's own process records no call sites" in own.stderr


def test_published_sites_cannot_drive_the_terminal(stats_dir: Path) -> None:
    stats_dir.mkdir(mode=0o700)
    pid = os.getpid()
    site = {**SITE, "file": "\x1b[2J\x1b[31mevil.py", "function": "f\rg"}
    (stats_dir / f"{pid}.json").write_text(json.dumps({"pid": pid, "caches": [], "sites": [site]}))
    top = run("top", "--once", "--sites")
    assert top.returncode == 0, top.stderr
    assert "\x1b" not in top.stdout and "\r" not in top.stdout
    assert "?[2J?[31mevil.py:3 (f?g)" in top.stdout
    info = run("slabinfo", "--pid", str(pid), "--sites")
    assert "\x1b" not in info.stdout and "?[2J?[31mevil.py:3" in info.stdout
