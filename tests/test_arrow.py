"""Arrow over shared memory: an IPC stream written into a SharedCache object in one
process is read in another without a copy (``pa.py_buffer(obj)``, then
``pa.ipc.open_stream``), and the object cannot be freed while Arrow views it."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from helpers import run_python

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")

import kmemcache  # noqa: E402

ROWS = 10_000


def table() -> Any:
    return pa.table(
        {
            "n": pa.array(range(ROWS), pa.int64()),
            "x": pa.array([i / 4 for i in range(ROWS)], pa.float64()),
            "name": pa.array([f"row {i}" for i in range(ROWS)]),
        }
    )


def write_stream(obj: kmemcache.Object, t: Any) -> int:
    """``t`` as an Arrow IPC stream written straight into ``obj``; its length."""
    sink = pa.FixedSizeBufferWriter(pa.py_buffer(obj))
    with pa.ipc.new_stream(sink, t.schema) as writer:
        writer.write_table(t)
    written: int = sink.tell()
    sink.close()
    return written


def buffers_of(t: Any) -> list[Any]:
    return [
        buf
        for column in t.columns
        for chunk in column.chunks
        for buf in chunk.buffers()
        if buf is not None and buf.size
    ]


def test_arrow_views_pin_an_object(shared_name: Callable[[], str]) -> None:
    with kmemcache.SharedCache(shared_name(), 1 << 20, 64, capacity=8 << 20) as cache:
        obj = cache.alloc()
        assert write_stream(obj, table()) < len(obj)
        read = pa.ipc.open_stream(pa.py_buffer(obj)).read_all()
        assert read.equals(table())
        buffers = buffers_of(read)
        assert len(buffers) >= 4
        for buf in buffers:  # zero-copy: every column's memory is the object's
            assert obj.address <= buf.address and buf.address + buf.size <= obj.address + len(obj)
        with pytest.raises(BufferError):
            obj.free()
        assert cache.stats().active_objs == 1
        del read, buffers, buf
        obj.free()
        assert cache.stats().active_objs == 0


READER = """
    import json, pickle, sys
    import pyarrow as pa
    import pyarrow.compute

    obj = pickle.loads(bytes.fromhex(sys.argv[1]))
    read = pa.ipc.open_stream(pa.py_buffer(obj)).read_all()
    inside = [
        obj.address <= buf.address and buf.address + buf.size <= obj.address + len(obj)
        for column in read.columns
        for chunk in column.chunks
        for buf in chunk.buffers()
        if buf is not None and buf.size
    ]
    try:
        obj.free()
        refused = None
    except BufferError as exc:
        refused = str(exc)
    out = {
        "type": type(obj).__name__,
        "rows": read.num_rows,
        "sum": pa.compute.sum(read["n"]).as_py(),
        "last": read["name"][-1].as_py(),
        "inside": inside,
        "refused": refused,
    }
    del read
    obj.free()  # no view left: it goes, for every process
    print(json.dumps(out))
"""


def test_a_stream_written_in_one_process_is_read_zero_copy_in_another(
    shared_name: Callable[[], str],
) -> None:
    with kmemcache.SharedCache(shared_name(), 1 << 20, 64, capacity=8 << 20) as cache:
        obj = cache.alloc()
        write_stream(obj, table())
        reference = pickle.dumps(obj, protocol=5)
        assert len(reference) < 200  # a reference, not the stream
        code = READER.replace("sys.argv[1]", repr(reference.hex()))
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        assert out["type"] == "SharedObject"
        assert (out["rows"], out["sum"]) == (ROWS, ROWS * (ROWS - 1) // 2)
        assert out["last"] == f"row {ROWS - 1}"
        assert len(out["inside"]) >= 4 and all(out["inside"])
        assert out["refused"] and "buffer view" in out["refused"]
        del obj
        assert cache.stats().active_objs == 0  # freed by the reader
