"""A process pool sharing buffers through a SharedCache: no data is copied.

The parent allocates frames in a cache that lives in POSIX shared memory and fills
them; a pool of workers receives the frames themselves (each pickles as a reference of
a few dozen bytes), computes in place, and writes its result into a second shared
object. The parent reads the results from the same memory.

    python examples/shared_pool.py
"""

from __future__ import annotations

import os
from multiprocessing import Pool

import numpy as np

from kmemcache import SharedCache, SharedObject

FRAME = 64 * 1024  # bytes per frame
FRAMES = 8


def normalise(frame: SharedObject, out: SharedObject) -> None:
    """In a worker: scale a frame to unit maximum, in place, and store its old maximum."""
    data = np.frombuffer(frame, np.float32)  # the parent's memory, not a copy
    peak = float(data.max())
    data /= peak
    np.frombuffer(out, np.float64)[0] = peak
    del data  # views must go before the objects can be freed


def main() -> None:
    name = f"frames-{os.getpid()}"  # the region's name: one per run here
    with SharedCache(name, FRAME, align=4096, capacity=16 << 20) as frames:
        small = SharedCache(f"{name}-results", 64, align=64, capacity=4 << 20)
        try:
            bufs = frames.alloc_bulk(FRAMES, zero=True)
            outs = small.alloc_bulk(FRAMES, zero=True)
            for i, buf in enumerate(bufs):
                np.frombuffer(buf, np.float32)[:] = np.arange(FRAME // 4) * (i + 1)
            with Pool(4) as pool:
                pool.starmap(normalise, zip(bufs, outs, strict=True))
            peaks = [np.frombuffer(o, np.float64)[0] for o in outs]
            tops = [float(np.frombuffer(b, np.float32).max()) for b in bufs]
            print("peaks found by the workers:", [int(p) for p in peaks])
            print("frames after normalising, maxima:", tops)
            assert tops == [1.0] * FRAMES and all(b.address % 4096 == 0 for b in bufs)
            small.free_bulk(outs)
            frames.free_bulk(bufs)
        finally:
            small.unlink()
            small.close()
            frames.unlink()  # the name goes; the memory when the last process detaches


if __name__ == "__main__":
    main()
