"""Arrow record batches handed between processes through a SharedCache: no copy.

A producer process writes each batch as an Arrow IPC stream straight into an
object of a cache in POSIX shared memory and puts the object on a queue: what
travels is a reference of a few dozen bytes. Consumer processes open each stream
with ``pa.py_buffer(obj)``, so the columns they read are the producer's memory;
each checks that, sums a column, and frees the object once its views are gone
(freeing it earlier raises BufferError). Objects are 4096-byte aligned, which
Arrow's readers like (64 is its own minimum).

    python examples/arrow_shared.py
"""

from __future__ import annotations

import multiprocessing
import os

import pyarrow as pa
import pyarrow.compute as pc

from kmemcache import SharedCache, SharedObject

SLOT = 1 << 20  # bytes per stream
BATCHES = 12
ROWS = 20_000
CONSUMERS = 2


def batch(i: int) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(i * ROWS, (i + 1) * ROWS), pa.int64()),
            "value": pa.array([float(i)] * ROWS, pa.float64()),
        }
    )


def produce(cache: SharedCache, queue: multiprocessing.Queue[SharedObject | None]) -> None:
    for i in range(BATCHES):
        slot = cache.alloc()
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(slot))
        b = batch(i)
        with pa.ipc.new_stream(sink, b.schema) as writer:
            writer.write_batch(b)
        sink.close()
        del sink, writer  # their views of the slot go with them
        queue.put(slot)
    for _ in range(CONSUMERS):
        queue.put(None)


def consume(
    queue: multiprocessing.Queue[SharedObject | None], results: multiprocessing.Queue[tuple]
) -> None:
    while (slot := queue.get()) is not None:
        table = pa.ipc.open_stream(pa.py_buffer(slot)).read_all()
        shared = all(
            slot.address <= buf.address < slot.address + len(slot)
            for column in table.columns
            for chunk in column.chunks
            for buf in chunk.buffers()
            if buf is not None
        )
        try:
            slot.free()
            early = "freed under Arrow's feet"
        except BufferError:
            early = "refused"
        total = pc.sum(table["value"]).as_py()
        del table
        slot.free()
        results.put((total, shared, early))
    results.put(None)


def main() -> None:
    ctx = multiprocessing.get_context("fork")
    name = f"arrow-{os.getpid()}"  # the region's name: one per run here
    with SharedCache(name, SLOT, align=4096, capacity=32 << 20) as cache:
        try:
            queue: multiprocessing.Queue[SharedObject | None] = ctx.Queue()
            results: multiprocessing.Queue[tuple] = ctx.Queue()
            procs = [ctx.Process(target=produce, args=(cache, queue))]
            procs += [ctx.Process(target=consume, args=(queue, results)) for _ in range(CONSUMERS)]
            for p in procs:
                p.start()
            got, ended = [], 0
            while ended < CONSUMERS:
                item = results.get(timeout=120)
                if item is None:
                    ended += 1
                else:
                    got.append(item)
            for p in procs:
                p.join(timeout=60)
            totals = sorted(t for t, _, _ in got)
            print(f"{len(got)} batches of {ROWS} rows read by {CONSUMERS} consumers")
            print("every column in the producer's shared memory:", all(s for _, s, _ in got))
            print("early frees:", sorted({e for _, _, e in got}))
            print("sums:", [int(t) for t in totals] == [i * ROWS for i in range(BATCHES)])
            print("objects left:", cache.stats().active_objs)
        finally:
            cache.unlink()  # the name goes; the memory when the last process detaches


if __name__ == "__main__":
    main()
