"""What a first hour with the command finds: each test failed before its fix."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

from helpers import run_python


def test_slabinfo_without_pid_says_where_the_caches_are() -> None:
    done = run_python("from kmemcache.cli import main; raise SystemExit(main(['slabinfo']))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("slabinfo - version: 2.1\n")
    assert "--pid PID" in done.stderr and "kmemcache top" in done.stderr


def on_a_terminal(columns: int) -> tuple[int, int, dict[str, str]]:
    """A pseudo-terminal of ``columns`` columns (leader, follower), and the
    environment a child needs to import this kmemcache."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env = {k: v for k, v in env.items() if not k.startswith("KMEMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return leader, follower, env


def read_all(leader: int, proc: subprocess.Popen[bytes]) -> bytes:
    out = b""
    while True:
        try:
            ready = select.select([leader], [], [], 1)[0]
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            break
        out += chunk
        if not chunk and proc.poll() is not None:
            break
    return out


def test_the_demo_fits_an_80_column_terminal() -> None:
    leader, follower, env = on_a_terminal(80)
    tiny = ["--live", "24", "--tasks", "96", "--rounds", "2", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmemcache", "demo", *tiny],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    try:
        out = read_all(leader, proc).decode()
        assert proc.wait(timeout=300) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 9  # heading, rule, a row per measure
    assert max(len(line) for line in table) <= 80, "\n".join(table)
    assert "option 3: kmem_cache_zalloc (the change)" in out


def test_q_quits_top_on_a_terminal() -> None:
    leader, follower, env = on_a_terminal(80)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmemcache", "top", "--interval", "0.2"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"\x1b[2J" not in seen and time.monotonic() < deadline:  # the first frame
            if select.select([leader], [], [], 1)[0]:
                seen += os.read(leader, 65536)
        assert b"\x1b[2J" in seen, seen
        os.write(leader, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
