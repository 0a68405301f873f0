"""The background thread that gives empty memory back: named, there only while
something waits, and never the reason a process lives on or a fork warns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, sys, threading, time, warnings
import kmemcache

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                  for t in os.listdir("/proc/self/task"))

def wait_for(cond, seconds=10.0):
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()

def empty_some_slabs():
    cache = kmemcache.Cache("purged", 4096)
    objs = [cache.alloc() for _ in range(200)]
    for o in objs:
        o.free()
    return cache
"""


def run(code: str) -> list[str]:
    env = {**os.environ, "KMEMCACHE_PURGE_DELAY_MS": "50"}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_the_thread_is_named_and_ends_when_nothing_waits() -> None:
    out = run(
        """
        cache = empty_some_slabs()
        print("while memory waits:", wait_for(lambda: "kmemcache-purge" in threads(), 2))
        print("after:", wait_for(lambda: len(threads()) == 1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print("fork warnings:", len([w for w in caught if "multi-threaded" in str(w.message)]))
        cache = empty_some_slabs()  # and it comes back for the next
        print("again:", wait_for(lambda: "kmemcache-purge" in threads(), 2))
        print("memory back:", wait_for(lambda: cache.stats().num_slabs == 0))
        """
    )
    assert out == [
        "while memory waits: True",
        "after: True",
        "fork warnings: 0",
        "again: True",
        "memory back: True",
    ]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_a_child_forked_from_a_thread_exits_when_its_thread_ends() -> None:
    # In the child the forking thread is the only one; once it ends, only the
    # purge thread could keep the process alive.
    out = run(
        """
        warnings.simplefilter("ignore", DeprecationWarning)
        pids = []

        def worker():
            pid = os.fork()
            if pid == 0:
                empty_some_slabs()  # the child arms the purge thread, then its thread ends
                return
            pids.append(pid)

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        pid, reaped = pids[0], []

        def exited():
            if not reaped and os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
            return bool(reaped)

        gone = wait_for(exited, seconds=20)
        print("child exited:", gone)
        if not gone:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        """
    )
    assert out == ["child exited: True"]
