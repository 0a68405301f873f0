"""A shared region is untrusted input: the file must be ours before a byte of it
is read, and no content of it sends an access outside the mapping.

/dev/shm is world-writable, so the hostile files here are made as another user
(uid 65534) by a forked child, as a hostile local user would make them; those
tests need root to switch users, and are skipped without it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from kmemcache import SharedCache, shared

MiB = 1 << 20
Name = Callable[[], str]
OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="making another user's file needs root (setresuid in a child)"
)


def _file(name: str) -> str:
    return "/dev/shm" + shared.region_name(name)


def as_other_user(action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child as uid/gid 65534; fail if it fails."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(OTHER_UID, OTHER_UID, OTHER_UID)
            os.setresuid(OTHER_UID, OTHER_UID, OTHER_UID)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def plant(path: str, data: bytes = b"", mode: int = 0o666) -> Callable[[], None]:
    """An action that makes ``path`` holding ``data``, with ``mode``."""

    def action() -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)

    return action


@pytest.fixture
def squatted(shared_name: Name) -> Iterator[str]:
    """A name whose region file another user made: a valid region's bytes, 0666."""
    donor = SharedCache(shared_name(), 64, 64, capacity=4 * MiB)
    with open(_file(donor.name), "rb") as fh:
        image = fh.read()
    donor.close()
    name = shared_name()
    as_other_user(plant(_file(name), image))
    yield name
    os.unlink(_file(name))


def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter; a hang fails the test instead of hanging it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# --- whose file --------------------------------------------------------------------


@needs_root
def test_another_users_region_is_not_attached(squatted: str) -> None:
    with pytest.raises(PermissionError, match=f"belongs to uid {OTHER_UID}, not to this user"):
        SharedCache.attach(squatted)


@needs_root
def test_another_users_region_is_not_peeked(squatted: str) -> None:
    with pytest.raises(PermissionError, match=f"belongs to uid {OTHER_UID}"):
        shared.peek(squatted)


@needs_root
def test_create_says_whose_file_took_the_name(shared_name: Name) -> None:
    name = shared_name()
    as_other_user(plant(_file(name)))
    try:
        with pytest.raises(FileExistsError, match=f"belongs to uid {OTHER_UID}.*took the name"):
            SharedCache(name, 64, 64, capacity=4 * MiB)
    finally:
        os.unlink(_file(name))


@needs_root
def test_unlink_leaves_another_users_file(squatted: str) -> None:
    with pytest.raises(PermissionError, match=f"refusing to unlink .* uid {OTHER_UID}"):
        shared.unlink(squatted)
    assert os.path.exists(_file(squatted))


@needs_root
def test_unlink_after_a_uid_change_leaves_the_new_uids_region(shared_name: Name) -> None:
    """A cache made as root, unlinked after the process became another user,
    unlinks root's region (refused: not ours any more), never the other user's
    region of the same name."""
    name = shared_name()
    theirs = f"/dev/shm/kmemcache.{OTHER_UID}.{name}"
    as_other_user(plant(theirs, mode=0o600))
    try:
        out = run(
            f"""
            import os
            from kmemcache import SharedCache
            c = SharedCache({name!r}, 64, 64, capacity=4 << 20)
            os.setgroups([])
            os.setresgid({OTHER_UID}, {OTHER_UID}, {OTHER_UID})
            os.setresuid({OTHER_UID}, {OTHER_UID}, {OTHER_UID})
            try:
                c.unlink()
            except PermissionError as e:
                print("refused:", e)
            """
        )
        assert out.returncode == 0, out.stderr
        assert "refused:" in out.stdout and "uid 0" in out.stdout
        assert os.path.exists(theirs)
    finally:
        os.unlink(theirs)


def test_a_region_others_may_write_is_not_trusted(shared_name: Name) -> None:
    c = SharedCache(shared_name(), 64, 64, capacity=4 * MiB)
    os.chmod(_file(c.name), 0o660)
    try:
        with pytest.raises(PermissionError, match="mode 0660: other users may read or write"):
            SharedCache.attach(c.name)
        with pytest.raises(PermissionError, match="mode 0660"):
            shared.peek(c.name)
    finally:
        os.chmod(_file(c.name), 0o600)
        c.close()


def test_a_symbolic_link_is_not_followed(shared_name: Name) -> None:
    name = shared_name()
    os.symlink("/etc/hostname", _file(name))
    try:
        with pytest.raises(OSError, match="not a regular file"):
            SharedCache.attach(name)
        with pytest.raises(OSError, match="not a regular file"):
            shared.peek(name)
    finally:
        os.unlink(_file(name))


def test_a_fifo_named_like_a_region_hangs_nothing(shared_name: Name) -> None:
    name = shared_name()
    os.mkfifo(_file(name), 0o600)
    try:
        out = run(
            f"""
            from kmemcache import SharedCache, shared
            for call in (lambda: shared.peek({name!r}), lambda: SharedCache.attach({name!r})):
                try:
                    call()
                except OSError as e:
                    print("refused:", e)
            """,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("not a regular file") == 2, out.stdout
        top = subprocess.run(
            [sys.executable, "-m", "kmemcache", "top", "--once"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert top.returncode == 0, top.stderr
    finally:
        os.unlink(_file(name))


# --- what the region holds -----------------------------------------------------------

# kmc_shm_header_t: magic, then the layout (version, header_bytes, abi, creator_pid,
# creator_start, nonce, name[64], then u64s: size, align, flags, slab_shift, slot_size,
# obj_offset, objperslab, bitmap_words, nslabs, max_procs).
MAX_PROCS_AT = 8 + 4 * 4 + 8 + 8 + 64 + 9 * 8


def test_the_layout_offset_the_tests_use(shared_name: Name) -> None:
    c = SharedCache(shared_name(), 64, 64, capacity=4 * MiB, max_processes=7)
    with open(_file(c.name), "rb") as fh:
        fh.seek(MAX_PROCS_AT)
        assert struct.unpack("<Q", fh.read(8))[0] == 7
    c.close()


def test_peek_reads_the_header_once(shared_name: Name) -> None:
    """A writer flipping max_procs between a good and a huge value while peek
    runs: peek checked one copy and reads only it, so it never walks past the
    mapping (before: it read max_procs again from the live header)."""
    c = SharedCache(shared_name(), 64, 64, capacity=4 * MiB, max_processes=4)
    out = run(
        f"""
        import mmap, os, struct, time
        from kmemcache import shared
        fd = os.open({_file(c.name)!r}, os.O_RDWR)
        m = mmap.mmap(fd, 4096)
        child = os.fork()
        if child == 0:
            end = time.monotonic() + 2
            good, bad = struct.pack("<Q", 4), struct.pack("<Q", 1 << 40)
            while time.monotonic() < end:
                for _ in range(1000):
                    m[{MAX_PROCS_AT}:{MAX_PROCS_AT + 8}] = bad
                    m[{MAX_PROCS_AT}:{MAX_PROCS_AT + 8}] = good
            os._exit(0)
        ok = refused = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                shared.peek({c.name!r})
                ok += 1
            except ValueError:
                refused += 1
        os.waitpid(child, 0)
        m[{MAX_PROCS_AT}:{MAX_PROCS_AT + 8}] = struct.pack("<Q", 4)
        print(ok, refused)
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    c.close()


def _own_slot_magazine(path: str) -> str:
    """Code that finds this process's slot in the region at ``path`` and yields
    the mapping, the offset of its mag_count and of its mag[0]."""
    return f"""
        import mmap, os, struct
        def magazine():
            fd = os.open({path!r}, os.O_RDWR)
            m = mmap.mmap(fd, 1 << 20)
            for at in range(0, len(m) - 64, 64):  # kmc_proc_t: lock, state, pid, ...
                lock, state, pid = struct.unpack_from("<IIi", m, at)
                if state == 1 and pid == os.getpid():
                    return m, at + 48, at + 56
            raise AssertionError("no slot of this process")
    """


@pytest.mark.parametrize("planted", ["outside", "live"])
def test_a_planted_magazine_entry_is_refused(shared_name: Name, planted: str) -> None:
    """A magazine entry that names no object the process cached (far outside the
    slab area, or another live object) is a CorruptionError at the next alloc:
    never a write through it, never the same object twice."""
    name = shared_name()
    out = run(
        _own_slot_magazine(_file(name))
        + f"""
        import struct
        from kmemcache import CorruptionError, SharedCache
        c = SharedCache({name!r}, 64, 64, capacity=4 << 20)
        keep = c.alloc()
        c.alloc().free()  # the magazine holds objects now
        m, count_at, mag_at = magazine()
        n = struct.unpack_from("<I", m, count_at)[0]
        assert n > 0, n
        bad = (1 << 46) if {planted!r} == "outside" else keep.offset
        struct.pack_into("<Q", m, mag_at + 8 * (n - 1), bad)
        try:
            c.alloc()
        except CorruptionError as e:
            print("refused:", e)
        print(c.alloc().address != keep.address)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "not an object it has cached" in out.stdout
    assert out.stdout.strip().endswith("True")


def test_a_huge_magazine_count_stays_in_the_slot(shared_name: Name) -> None:
    name = shared_name()
    out = run(
        _own_slot_magazine(_file(name))
        + f"""
        import struct
        from kmemcache import CorruptionError, SharedCache
        c = SharedCache({name!r}, 64, 64, capacity=4 << 20)
        c.alloc().free()
        m, count_at, mag_at = magazine()
        struct.pack_into("<I", m, count_at, 0xFFFFFFF0)
        for _ in range(3):
            try:
                c.alloc()
            except CorruptionError as e:
                print("refused:", e)
        try:
            c.validate()
        except CorruptionError as e:
            print("validate:", e)
        print("then:", c.validate())
        """
    )
    assert out.returncode == 0, out.stderr
    assert "validate: the magazine of process" in out.stdout and "then: 0" in out.stdout
