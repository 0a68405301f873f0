"""kmemcache with Dask (kmemcache.dask): objects and arrays leave a worker with no
copy on the sending side, arrays arrive aligned where the worker asked for it;
checked on Dask's serializers, then on a real cluster, a scheduler and two worker
processes talking TCP, on loopback and, as root, on two test hosts (network
namespaces joined by a veth pair)."""

from __future__ import annotations

import os
import subprocess
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "distributed", reason="distributed is not installed (pip install 'kmemcache[dask]')"
)
np = pytest.importorskip("numpy")

import dask_cluster  # noqa: E402
from distributed.protocol import deserialize, serialize  # noqa: E402

import kmemcache  # noqa: E402
import kmemcache.dask  # noqa: E402
import kmemcache.numpy  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20


def address_of(frame: Any) -> int:
    return int(np.frombuffer(frame, dtype=np.uint8).ctypes.data)


@pytest.fixture
def receiving() -> Iterator[None]:
    """The process's received-array alignment set back to none after the test."""
    yield
    kmemcache.dask.receive_aligned(0)


# --- the sending side: Dask's serializers ------------------------------------------------


@pytest.mark.parametrize("size", [64 * KiB, 1 * MiB])
def test_an_object_is_serialized_as_a_view_of_its_own_memory(size: int) -> None:
    obj = kmemcache.kmalloc(size, align=64)
    tracemalloc.start()
    try:
        header, frames = serialize(obj, serializers=["dask", "pickle"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header["serializer"] == "pickle"  # protocol 5 alone: nothing registered for it
    pickled, data = frames
    assert len(pickled) < 200
    assert isinstance(data, memoryview) and data.nbytes == size
    assert address_of(data) == obj.address  # the object's memory, not a copy of it
    assert peak < size // 4


def test_a_kmemcache_array_is_serialized_as_a_view_of_its_data() -> None:
    with kmemcache.numpy.aligned(64):
        a = np.arange(MiB // 8, dtype=np.int64)
    header, frames = serialize(a, serializers=["dask", "pickle"])
    assert header["serializer"] == "dask"
    [data] = frames
    assert address_of(data) == a.ctypes.data


# --- the receiving side: arrays made aligned -----------------------------------------------


def received_at(offset: int, a: Any) -> tuple[dict[str, Any], list[Any]]:
    """``a``'s header and frames as a worker reads them: its data ``offset`` bytes
    into a larger buffer (aligned to 4096)."""
    header, frames = serialize(a, serializers=["dask"])
    [data] = frames
    with kmemcache.numpy.aligned(4096):
        buffer = np.empty(offset + data.nbytes, dtype=np.uint8)
    buffer[offset:] = np.frombuffer(data, dtype=np.uint8)
    return header, [buffer.data[offset:]]


def test_a_misaligned_array_is_left_alone_unless_asked(receiving: None) -> None:
    a = np.arange(1000, dtype=np.float64)
    header, frames = received_at(8, a)
    got = deserialize(header, frames)
    assert got.ctypes.data % 64 == 8 and (got == a).all()


@pytest.mark.parametrize("offset", [8, 16, 338])
def test_a_misaligned_array_is_copied_aligned(receiving: None, offset: int) -> None:
    kmemcache.dask.receive_aligned(64)
    a = np.arange(3000, dtype=np.float64).reshape(30, 100)[:, ::1]
    header, frames = received_at(offset, a)
    got = deserialize(header, frames)
    assert got.ctypes.data % 64 == 0
    assert not np.shares_memory(got, np.frombuffer(frames[0], dtype=np.uint8))
    assert got.shape == a.shape and got.dtype == a.dtype and (got == a).all()
    assert got.flags.writeable
    assert kmemcache.numpy.handler_align(kmemcache.numpy.get_handler()) == 0  # not left on


def test_an_aligned_array_is_not_copied(receiving: None) -> None:
    kmemcache.dask.receive_aligned(64)
    a = np.arange(3000, dtype=np.float64)
    header, frames = received_at(128, a)
    got = deserialize(header, frames)
    assert got.ctypes.data == address_of(frames[0])


def test_a_fortran_ordered_read_only_array_keeps_its_order_and_flag(receiving: None) -> None:
    kmemcache.dask.receive_aligned(4096)
    a = np.asfortranarray(np.arange(600, dtype=np.int32).reshape(20, 30))
    a.flags.writeable = False
    header, frames = received_at(64, a)
    got = deserialize(header, frames)
    assert got.ctypes.data % 4096 == 0 and got.flags.f_contiguous
    assert not got.flags.writeable and (got == a).all()


def test_alignments_are_checked(receiving: None) -> None:
    with pytest.raises(ValueError):
        kmemcache.dask.receive_aligned(48)
    with pytest.raises(TypeError):
        kmemcache.dask.receive_aligned(64.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kmemcache.dask.AlignedArrays(0)
    assert kmemcache.dask.receiving_align() == 0
    kmemcache.dask.receive_aligned(128)
    assert kmemcache.dask.receiving_align() == 128


# --- a real cluster ---------------------------------------------------------------------------


def check_report(report: dict[str, Any]) -> None:
    """What worker "b" found in what worker "a" made: everything intact; objects
    kmemcache objects of their alignment; arrays aligned once asked."""
    for phase in ("plain", "aligned"):
        seen = report[phase]
        assert set(seen) == {
            f"{kind}-{n}" for kind in ("object", "array") for n in dask_cluster.SIZES
        }
        for key, found in seen.items():
            kind, n = key.split("-")
            assert found["worker"] == report["workers"]["b"], found
            assert found["intact"] and found["nbytes"] == int(n), (phase, key, found)
            if kind == "object":
                assert found["kmemcache"] and found["address_mod_4096"] == 0, (phase, key, found)
            elif phase == "aligned":
                assert found["address_mod_4096"] % dask_cluster.ALIGN == 0, (key, found)


def test_two_workers_on_loopback(tmp_path: Path) -> None:
    with dask_cluster.cluster(tmp_path, ["127.0.0.1"] * 3) as c:
        report = dask_cluster.run_client(c)
    a, b = report["workers"]["a"], report["workers"]["b"]
    assert a.startswith("tcp://127.0.0.1:") and b.startswith("tcp://127.0.0.1:") and a != b
    check_report(report)


#: The two test hosts: RFC 5737's TEST-NET-1, never routed anywhere.
HOST_A, HOST_B = "192.0.2.1", "192.0.2.2"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, HOST_A in the first and
    HOST_B in the second; deleted (with the pair) at the end."""
    if os.geteuid() != 0:
        pytest.skip("two test hosts need network namespaces, which need root")
    if dask_cluster.ip_command() is None:
        pytest.skip("two test hosts need the ip command (Debian: apt-get install iproute2)")
    tag = uuid.uuid4().hex[:6]
    ns = (f"kmc-{tag}-a", f"kmc-{tag}-b")
    made: list[str] = []
    try:
        for name in ns:
            done = ip("netns", "add", name)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
            made.append(name)
        veth = (f"kmc{tag}a", f"kmc{tag}b")
        steps = [
            ("link", "add", veth[0], "netns", ns[0], "type", "veth", "peer", "name", veth[1]),
            ("link", "set", veth[1], "netns", ns[1]),
        ]
        for name, dev, addr in ((ns[0], veth[0], HOST_A), (ns[1], veth[1], HOST_B)):
            steps += [
                ("-n", name, "addr", "add", f"{addr}/24", "dev", dev),
                ("-n", name, "link", "set", dev, "up"),
                ("-n", name, "link", "set", "lo", "up"),
            ]
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(
                    f"cannot join two network namespaces: ip {' '.join(step)}: "
                    f"{done.stderr.strip()}"
                )
        for name in ns:  # a container may allow the namespaces but not running in one
            done = ip("netns", "exec", name, "true")
            if done.returncode != 0:
                pytest.skip(f"cannot run a command in a network namespace: {done.stderr.strip()}")
        yield ns
    finally:
        for name in made:
            ip("netns", "delete", name)


def test_two_workers_on_two_hosts(tmp_path: Path, two_hosts: tuple[str, str]) -> None:
    ns_a, ns_b = two_hosts
    in_a, in_b = ("ip", "netns", "exec", ns_a), ("ip", "netns", "exec", ns_b)
    # the scheduler and the client on the first host, a worker on each
    with dask_cluster.cluster(tmp_path, [HOST_A, HOST_A, HOST_B], [in_a, in_a, in_b]) as c:
        report = dask_cluster.run_client(c, in_a)
    assert report["workers"]["a"].startswith(f"tcp://{HOST_A}:")
    assert report["workers"]["b"].startswith(f"tcp://{HOST_B}:")
    check_report(report)
