"""What a first hour with the command finds: each test failed before its fix."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from helpers import run_python


def test_slabinfo_without_pid_says_where_the_caches_are() -> None:
    done = run_python("from kmemcache.cli import main; raise SystemExit(main(['slabinfo']))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("slabinfo - version: 2.1\n")
    assert "--pid PID" in done.stderr and "kmemcache top" in done.stderr


def test_q_quits_top_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
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
