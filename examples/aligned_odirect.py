"""Aligned O_DIRECT I/O: write and read a file around the page cache.

O_DIRECT needs the buffer's address, its length and the file offset to be multiples
of the device's logical block size (4096 covers every common device). A cache of
4096-byte objects aligned to 4096 gives such buffers with no waste and no copy:
os.pwrite and os.preadv take the objects themselves (the buffer protocol).

    python examples/aligned_odirect.py [FOLDER]

FOLDER (the current one by default) must be on a filesystem that accepts O_DIRECT;
tmpfs (/tmp on many systems, /dev/shm) refuses it, and the program then says so and
does the same I/O through the page cache.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile

from kmemcache import Cache

BLOCK = 4096
BLOCKS = 16


def open_direct(path: str) -> tuple[int, bool]:
    """The file opened with O_DIRECT, or without it where the filesystem refuses it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        print(
            f"{os.path.dirname(path)}: this filesystem refuses O_DIRECT (tmpfs does); "
            "using the page cache instead. Give a folder on a disk to try O_DIRECT.",
        )
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600), False


def main(folder: str) -> None:
    with Cache("dio_blocks", BLOCK, align=BLOCK) as cache:
        blocks = cache.alloc_bulk(BLOCKS, zero=True)
        for i, block in enumerate(blocks):
            memoryview(block)[:] = bytes([i]) * BLOCK  # no copy into another buffer
        fd_path = tempfile.mkstemp(dir=folder, suffix=".dio")
        os.close(fd_path[0])
        fd, direct = open_direct(fd_path[1])
        try:
            for i, block in enumerate(blocks):
                assert block.address % BLOCK == 0
                os.pwrite(fd, block, i * BLOCK)  # the object itself is the buffer
            back = cache.alloc_bulk(BLOCKS)
            for i, block in enumerate(back):
                assert os.preadv(fd, [block], i * BLOCK) == BLOCK
            same = all(bytes(a) == bytes(b) for a, b in zip(blocks, back, strict=True))
            mode = "O_DIRECT" if direct else "buffered"
            print(
                f"{BLOCKS} blocks of {BLOCK} bytes written and read back ({mode}): "
                f"{'identical' if same else 'DIFFERENT'}"
            )
            cache.free_bulk(back)
        finally:
            os.close(fd)
            os.unlink(fd_path[1])
        cache.free_bulk(blocks)
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
