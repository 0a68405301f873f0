"""A real Dask cluster for tests/test_dask.py: a scheduler and two workers, each a
process of its own talking TCP, on loopback or on two test hosts (network
namespaces joined by a veth pair); and, run as a script, the client that moves
kmemcache objects and arrays from one worker to the other and prints what the
receiver found, as one JSON line.

    python tests/dask_cluster.py SCHEDULER_FILE
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A Dask process that does not start, or a check that does not finish, in this many
#: seconds fails the test instead of hanging it.
START_TIMEOUT = 60.0
RUN_TIMEOUT = 180.0

#: The array and object sizes moved between the workers: a small message (joined
#: by Dask's comm), one just under its 128 KiB limit, and two above it.
SIZES = (1000, 64 << 10, 1 << 20, 8 << 20)
ALIGN = 64


def child_env() -> dict[str, str]:
    """The environment of the Dask processes: this interpreter's modules, no
    KMEMCACHE_* setting from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["DASK_DISTRIBUTED__COMM__COMPRESSION"] = "False"  # compression would copy anyway
    return env


@dataclass
class Cluster:
    """The processes started, to stop; the scheduler's file."""

    folder: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def scheduler_file(self) -> Path:
        return self.folder / "scheduler.json"

    def start(self, name: str, argv: Sequence[str], prefix: Sequence[str] = ()) -> None:
        with open(self.folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                start_new_session=True,  # its own process group, stopped whole
            )
        self.procs.append(proc)

    def wait_for_scheduler(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                address: str = json.loads(self.scheduler_file.read_text())["address"]
                return address
            time.sleep(0.1)
        raise TimeoutError(f"no scheduler after {START_TIMEOUT:g} s\n{self.logs()}")

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def cluster(
    folder: Path, hosts: Sequence[str], prefixes: Sequence[Sequence[str]] = ((), (), ())
) -> Iterator[Cluster]:
    """A scheduler on ``hosts[0]``, worker "a" on ``hosts[1]`` and "b" on ``hosts[2]``;
    each command run behind its prefix (``ip netns exec NS``). Stopped at exit."""
    c = Cluster(folder)
    try:
        c.start(
            "scheduler",
            [
                "distributed.cli.dask_scheduler",
                "--host",
                hosts[0],
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(c.scheduler_file),
            ],
            prefixes[0],
        )
        address = c.wait_for_scheduler()
        for name, host, prefix in (("a", hosts[1], prefixes[1]), ("b", hosts[2], prefixes[2])):
            c.start(
                f"worker-{name}",
                [
                    "distributed.cli.dask_worker",
                    address,
                    "--name",
                    name,
                    "--host",
                    host,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--memory-limit",
                    "0",
                ],
                prefix,
            )
        yield c
    finally:
        c.stop()


def run_client(c: Cluster, prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Run this file as the client (behind ``prefix``); its JSON line."""
    proc = subprocess.run(
        [*prefix, sys.executable, __file__, str(c.scheduler_file)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=child_env(),
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"client exited with {proc.returncode}\n{proc.stderr}\n{c.logs()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def ip_command() -> str | None:
    return shutil.which("ip")


# --- the client, run as a script ----------------------------------------------------------
#
# The functions below run on the workers (Dask pickles them by value, from __main__).


def _make_object(n: int) -> Any:
    import kmemcache

    obj = kmemcache.kmalloc(n, align=4096)
    with memoryview(obj) as view:
        for i in range(0, n, 4096):
            view[i] = (i >> 12) & 0xFF
    return obj


def _make_array(n: int) -> Any:
    import numpy as np

    import kmemcache.numpy

    with kmemcache.numpy.aligned(ALIGN):
        return np.arange(n // 8, dtype=np.int64)


def _look_at(x: Any) -> dict[str, Any]:
    import numpy as np
    from distributed import get_worker

    import kmemcache

    if isinstance(x, np.ndarray):
        address, nbytes = x.ctypes.data, x.nbytes
        intact = bool((x == np.arange(x.size, dtype=np.int64)).all())
    else:
        address, nbytes = x.address, len(x)
        with memoryview(x) as view:
            intact = all(view[i] == (i >> 12) & 0xFF for i in range(0, nbytes, 4096))
    return {
        "type": f"{type(x).__module__}.{type(x).__qualname__}",
        "kmemcache": isinstance(x, kmemcache.Object),
        "nbytes": nbytes,
        "address_mod_4096": address % 4096,
        "intact": intact,
        "worker": get_worker().address,
    }


def main(scheduler_file: str) -> int:
    from distributed import Client

    import kmemcache.dask

    with Client(scheduler_file=scheduler_file, timeout=START_TIMEOUT) as client:
        client.wait_for_workers(2, timeout=START_TIMEOUT)
        workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
        report: dict[str, Any] = {"workers": workers, "plain": {}, "aligned": {}}
        for phase in ("plain", "aligned"):
            if phase == "aligned":
                client.register_plugin(kmemcache.dask.AlignedArrays(ALIGN))
            for kind, make in (("object", _make_object), ("array", _make_array)):
                for n in SIZES:
                    made = client.submit(make, n, workers=[workers["a"]], pure=False)
                    seen = client.submit(_look_at, made, workers=[workers["b"]], pure=False)
                    report[phase][f"{kind}-{n}"] = seen.result(timeout=RUN_TIMEOUT)
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
