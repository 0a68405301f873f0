"""Moving 64 KiB and 1 MiB objects to another process: through a multiprocessing
queue, a pipe and Dask, as a SharedObject reference, as a kmemcache Object
pickled, and as bytes, beside a multiprocessing.shared_memory block.

Two parts:

1. **the pickle** of an Object of each size under protocol 5, counted, not timed:
   the in-band part's length, the out-of-band buffers, and the most memory
   tracemalloc sees allocated while ``pickle.dumps`` runs (a copy of the data
   would show as its size: bytes are Python memory). The target: under 200 bytes
   in band for 1 MiB, with no copy on the sending side.
2. **handing objects to another process**, one way, N objects a trial: time per
   object from the sender's first send to the receiver's last receive (wall
   clock), for each transport and way:

   - *SharedObject*: a reference (a SharedCache object, its memory shared); the
     receiver reads a byte and frees it;
   - *kmemcache Object*: its bytes travel. Through the pipe, pickled under
     protocol 5 with its one buffer sent as it is (``send_bytes`` of the
     PickleBuffer: no copy on the sending side); through the queue, pickled by
     the queue itself (protocol ``pickle.DEFAULT_PROTOCOL``, in band); through
     Dask, by Dask's pickle serializer (protocol 5, out of band). The receiver
     gets a kmalloc object (one copy, into aligned memory) and frees it;
   - *bytes*: the object's bytes as a ``bytes`` (made from the buffer each time,
     as a program holding a buffer must);
   - *SharedMemory*: a ``multiprocessing.shared_memory`` block per object,
     made by the sender, attached, closed and unlinked by the receiver;
   - *an int*: no buffer, the transport's own cost per item.

   The queue and the pipe run between a forked receiver and this process. Dask
   (when ``distributed`` is installed) runs a local cluster of two worker
   processes over TCP on loopback: worker A makes the N objects, then one task
   on worker B takes them all, and the time is that task's, from submit to
   result (one task's scheduling shared by the N objects).

    python benchmarks/bench_transport.py                  # Markdown tables on stdout
    python benchmarks/bench_transport.py --json out.json  # also machine-readable
    python benchmarks/bench_transport.py --quick          # tiny counts: checks it runs

It takes a minute or two; the regions and blocks it makes are unlinked at the end.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import pickle
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory
from typing import Any

import _harness as h
from bench_shared import _UNTRACKED, _Regions, _untrack

import kmemcache
from kmemcache.demo import measure as m

KiB, MiB = 1 << 10, 1 << 20
SIZES = (64 * KiB, 1 * MiB)
#: Objects per trial, by size: (queue and pipe, Dask), and in --quick.
N = {64 * KiB: (2000, 200), 1 * MiB: (300, 50)}
QUICK_N = (20, 5)
INBAND_LIMIT = 200  # bytes: issue 20's target for a protocol-5 pickle of 1 MiB
TIMEOUT = 600.0

WAYS = [
    ("shared", "SharedObject (a reference)"),
    ("object", "kmemcache Object (its bytes pickled)"),
    ("bytes", "bytes"),
    ("shm", "a SharedMemory block per object"),
    ("int", "an int, no buffer (the transport's own cost)"),
]


# --- 1. the pickle --------------------------------------------------------------------------


def part_pickle() -> list[dict[str, Any]]:
    out = []
    for size in SIZES:
        obj = kmemcache.kmalloc(size, align=64)
        buffers: list[pickle.PickleBuffer] = []
        tracemalloc.start()
        try:
            dumped = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        with buffers[0].raw() as raw:
            oob = raw.nbytes
        out.append(
            {
                "size": size,
                "inband_bytes": len(dumped),
                "buffers": len(buffers),
                "out_of_band_bytes": oob,
                "traced_peak_bytes": peak,
                # how many times the data was copied, as tracemalloc saw it
                "copies": peak // size,
            }
        )
        buffers.clear()
        obj.free()
    return out


# --- 2. queue and pipe ------------------------------------------------------------------------


class Channel:
    """One direction of a queue or a pipe, with what each way needs of it."""

    def __init__(self, kind: str) -> None:
        ctx = multiprocessing.get_context("fork")
        self.kind = kind
        if kind == "queue":
            self.queue = ctx.Queue()
            self.put: Callable[[Any], None] = self.queue.put
            self.get: Callable[[], Any] = self.queue.get
            self.put_bytes: Callable[[Any], None] = self.queue.put
            self.get_bytes: Callable[[], Any] = self.queue.get
        else:
            reader, writer = ctx.Pipe(duplex=False)
            self.ends = (reader, writer)
            self.put, self.get = writer.send, reader.recv
            self.put_bytes, self.get_bytes = writer.send_bytes, reader.recv_bytes

    def close(self) -> None:
        if self.kind == "queue":
            self.queue.close()
            self.queue.join_thread()
        else:
            for end in self.ends:
                end.close()


def sender(way: str, ch: Channel, size: int, cache: kmemcache.SharedCache) -> Callable[[int], None]:
    """What sends n objects of ``way`` through ``ch``."""
    if way == "shared":

        def send(n: int) -> None:
            for i in range(n):
                o = cache.alloc()
                memoryview(o)[0] = i & 0xFF
                ch.put(o)
                del o

    elif way == "object":
        obj = kmemcache.kmalloc(size, align=64)

        def send(n: int) -> None:
            for i in range(n):
                memoryview(obj)[0] = i & 0xFF
                if ch.kind == "queue":
                    ch.put(obj)  # the queue's own pickling
                    continue
                buffers: list[pickle.PickleBuffer] = []
                ch.put_bytes(pickle.dumps(obj, protocol=5, buffer_callback=buffers.append))
                for buffer in buffers:
                    with buffer.raw() as raw:
                        ch.put_bytes(raw)

    elif way == "bytes":
        payload = bytearray(size)

        def send(n: int) -> None:
            for i in range(n):
                payload[0] = i & 0xFF
                ch.put_bytes(bytes(payload))

    elif way == "shm":

        def send(n: int) -> None:
            for i in range(n):
                block = shared_memory.SharedMemory(create=True, size=size, **_UNTRACKED)
                _untrack(block)
                block.buf[0] = i & 0xFF
                ch.put(block.name)
                block.close()  # the receiver unlinks it

    else:

        def send(n: int) -> None:
            for i in range(n):
                ch.put(i)

    return send


def receive(way: str, ch: Channel, n: int, done: Any) -> None:
    """The forked receiver: a warm-up item, then n objects of ``way``."""
    ch.get()
    for _ in range(n):
        if way == "shared":
            o = ch.get()
            memoryview(o)[0]
            o.free()
        elif way == "object":
            if ch.kind == "queue":
                o = ch.get()
            else:
                inband = ch.get_bytes()
                o = pickle.loads(inband, buffers=[ch.get_bytes()])
            memoryview(o)[0]
            o.free()
        elif way == "bytes":
            ch.get_bytes()[0]
        elif way == "shm":
            block = shared_memory.SharedMemory(ch.get(), **_UNTRACKED)
            block.buf[0]
            block.close()
            block.unlink()
        else:
            ch.get()
    done.put(time.perf_counter())


def local_trial(kind: str, way: str, size: int, n: int, cache: kmemcache.SharedCache) -> float:
    """ns per object handed to a forked receiver through a queue or a pipe."""
    ctx = multiprocessing.get_context("fork")
    ch, done = Channel(kind), ctx.Queue()
    send = sender(way, ch, size, cache)
    child = ctx.Process(target=receive, args=(way, ch, n, done))
    child.start()
    try:
        ch.put(None)  # warms the pipe (and the queue's feeder thread)
        started = time.perf_counter()
        send(n)
        ended = done.get(timeout=TIMEOUT)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
        ch.close()
    return (ended - started) * 1e9 / n


# --- 2. Dask ------------------------------------------------------------------------------------
#
# These run on the workers; Dask pickles them by value from this script.


def _dask_make(way: str, size: int, i: int, region: str) -> Any:
    if way == "shared":
        from distributed import get_worker

        worker = get_worker()  # the region attached once per worker, kept on it
        attached = worker.__dict__.setdefault("bench_transport_regions", {})
        if region not in attached:
            attached[region] = kmemcache.SharedCache.attach(region)
        o = attached[region].alloc()
        memoryview(o)[0] = i & 0xFF
        return o
    if way == "object":
        o = kmemcache.kmalloc(size, align=64)
        memoryview(o)[0] = i & 0xFF
        return o
    if way == "bytes":
        return bytes(size)
    if way == "shm":
        block = shared_memory.SharedMemory(create=True, size=size, **_UNTRACKED)
        _untrack(block)
        block.buf[0] = i & 0xFF
        name = block.name
        block.close()
        return name
    return i


def _dask_take(way: str, items: list[Any]) -> int:
    for x in items:
        if way in ("shared", "object"):
            memoryview(x)[0]
            x.free()
        elif way == "bytes":
            x[0]
        elif way == "shm":
            block = shared_memory.SharedMemory(x, **_UNTRACKED)
            block.buf[0]
            block.close()
            block.unlink()
    return len(items)


class DaskCluster:
    """A local cluster of two worker processes (TCP on loopback), and its client."""

    def __init__(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=0,
        )
        self.client = Client(self.cluster, timeout=120)
        self.client.wait_for_workers(2, timeout=120)
        self.a, self.b = sorted(self.client.scheduler_info()["workers"])

    def trial(self, way: str, size: int, n: int, region: str) -> float:
        """ns per object moved from worker A to a task on worker B."""
        from distributed import wait

        made = [
            self.client.submit(_dask_make, way, size, i, region, workers=[self.a], pure=False)
            for i in range(n)
        ]
        wait(made, timeout=TIMEOUT)
        started = time.perf_counter()
        took = self.client.submit(_dask_take, way, made, workers=[self.b], pure=False)
        count = took.result(timeout=TIMEOUT)
        ended = time.perf_counter()
        assert count == n
        del made, took
        return (ended - started) * 1e9 / n

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


# --- the run --------------------------------------------------------------------------------------


def records(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    base = statistics.median(samples["shared"])
    out = []
    for key, label in WAYS:
        rec: dict[str, Any] = {"key": key, "label": label, "samples_ns": samples[key]}
        rec.update(m.summarize(samples[key]))
        rec["vs_shared"] = rec["median_ns"] / base  # above 1: the reference is faster
        out.append(rec)
    return out


def part_transports(
    args: Any, regions: _Regions, progress: m.Progress, repeats: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("queue", "pipe"):
        by_size: dict[str, Any] = {}
        for size in SIZES:
            n = QUICK_N[0] if args.quick else N[size][0]
            cache = regions.make(f"{kind}{size >> 10}k", size, 4096, (n + 64) * size + 8 * MiB)
            samples: dict[str, list[float]] = {key: [] for key, _ in WAYS}
            for rep in range(repeats):
                shift = rep % len(WAYS)
                for key, _ in WAYS[shift:] + WAYS[:shift]:
                    progress.step(f"{kind} {size >> 10} KiB {rep + 1}/{repeats} {key}")
                    samples[key].append(local_trial(kind, key, size, n, cache))
            cache.reclaim()
            by_size[str(size)] = {"n": n, "results": records(samples)}
        out[kind] = {"status": "ok", "by_size": by_size}
    if importlib.util.find_spec("distributed") is None:
        for _ in range(len(SIZES) * repeats * len(WAYS)):
            progress.step("dask: not installed")
        out["dask"] = {"status": "not installed", "note": "pip install 'kmemcache[dask]'"}
        return out
    cluster = DaskCluster()
    try:
        by_size = {}
        for size in SIZES:
            n = QUICK_N[1] if args.quick else N[size][1]
            cache = regions.make(f"dask{size >> 10}k", size, 4096, (n + 64) * size + 8 * MiB)
            samples = {key: [] for key, _ in WAYS}
            for rep in range(repeats):
                shift = rep % len(WAYS)
                for key, _ in WAYS[shift:] + WAYS[:shift]:
                    progress.step(f"dask {size >> 10} KiB {rep + 1}/{repeats} {key}")
                    samples[key].append(cluster.trial(key, size, n, cache.name))
            cache.reclaim()
            by_size[str(size)] = {"n": n, "results": records(samples)}
        out["dask"] = {"status": "ok", "by_size": by_size}
    finally:
        cluster.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.argument_parser(__doc__.split("\n\n", 1)[0])
    args = parser.parse_args(argv)
    h.settings(args)
    repeats = h.QUICK_REPEATS if args.quick else max(3, args.repeats // 2)
    progress = h.progress_for(args, 3 * len(SIZES) * repeats * len(WAYS), "bench_transport")
    regions = _Regions()
    try:
        pickled = part_pickle()
        transports = part_transports(args, regions, progress, repeats)
    finally:
        progress.close()
        regions.close()
    target = h.make_target(
        "pickle5-1MiB",
        f"a protocol-5 pickle of a 1 MiB object: in-band bytes against {INBAND_LIMIT}, "
        "with no copy on the sending side",
        1.0,
        "lower",
    )
    one_mib = next(p for p in pickled if p["size"] == MiB)
    h.judge_target(target, one_mib["inband_bytes"] / INBAND_LIMIT)
    target["detail"] = (
        f"{one_mib['inband_bytes']} bytes in band, {one_mib['buffers']} buffer, "
        f"{one_mib['copies']} copies (tracemalloc's peak {one_mib['traced_peak_bytes']} bytes)"
    )
    if one_mib["copies"] or one_mib["buffers"] != 1:
        target["status"] = "MISS"
    data: dict[str, Any] = {
        "benchmark": "transport",
        "quick": args.quick,
        "repeats": repeats,
        "sizes": list(SIZES),
        "environment": {
            **h.environment(["kmemcache", "numpy", "distributed"]),
            "clock": h.CLOCKS["wall"],  # a trial spans two processes: wall clock only
        },
        "queue_pickle_protocol": pickle.DEFAULT_PROTOCOL,
        "pickle": pickled,
        "transports": transports,
        "targets": [target],
    }
    return h.finish(args, data, render)


TRANSPORT_NAMES = {
    "queue": "a multiprocessing queue (fork)",
    "pipe": "a multiprocessing pipe (fork)",
    "dask": "Dask: worker to worker, TCP on loopback",
}


def render(data: dict[str, Any]) -> str:
    lines = [
        "A kmemcache Object's protocol-5 pickle: what stays in band, what goes out of "
        "band, and what tracemalloc saw allocated meanwhile. "
        + h.environment_sentence(data["environment"]),
        "",
        m.markdown_table(
            ["object", "in band", "buffers", "out of band", "traced peak", "copies"],
            [
                [
                    f"{p['size'] >> 10} KiB",
                    f"{p['inband_bytes']} B",
                    str(p["buffers"]),
                    f"{p['out_of_band_bytes'] >> 10} KiB",
                    f"{p['traced_peak_bytes']} B",
                    str(p["copies"]),
                ]
                for p in data["pickle"]
            ],
            {1, 2, 3, 4, 5},
        ),
    ]
    sizes = [str(s) for s in data["sizes"]]
    for kind, res in data["transports"].items():
        lines += [""]
        if res["status"] != "ok":
            lines.append(f"Through {TRANSPORT_NAMES[kind]}: {res['status']} ({res['note']}).")
            continue
        ns = ", ".join(f"{res['by_size'][s]['n']} of {int(s) >> 10} KiB" for s in sizes)
        lines += [
            f"Through {TRANSPORT_NAMES[kind]}, one way ({ns} a trial), median of "
            f"{data['repeats']} trials: µs per object, and / the SharedObject's "
            "(higher: the reference is faster).",
            "",
        ]
        header = ["sent as"]
        for s in sizes:
            header += [f"{int(s) >> 10} KiB µs", "vs SharedObject"]
        rows = []
        for i, (_, label) in enumerate(WAYS):
            row = [label]
            for s in sizes:
                rec = res["by_size"][s]["results"][i]
                row += [f"{rec['median_ns'] / 1000:.1f}", m.fmt_ratio(rec["vs_shared"])]
            rows.append(row)
        lines.append(m.markdown_table(header, rows, set(range(1, len(header)))))
    lines += [
        "",
        f"Through the queue, the Object is pickled by the queue itself (protocol "
        f"{data['queue_pickle_protocol']}, in band); through the pipe, under protocol 5 with "
        "its buffer sent as it is; through Dask, by Dask's pickle serializer (protocol 5).",
        "",
        "### Targets",
        "",
        *[h.target_line(t) for t in data["targets"]],
    ]
    lines += h.quick_lines(data)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
