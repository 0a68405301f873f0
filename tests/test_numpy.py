"""kmemcache.numpy: NumPy's arrays through the NEP 49 handler, aligned, freed by the
owner found from the address, checked by the debug options; the pytest plugin; and
NumPy as an optional dependency."""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import run_python

np = pytest.importorskip("numpy")
knp = pytest.importorskip("kmemcache.numpy")

from kmemcache import _kmemcache as _core  # noqa: E402


def handler_name(a: object) -> str:
    try:
        from numpy._core.multiarray import get_handler_name  # type: ignore[import-untyped]
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name  # type: ignore[import-untyped]

    return str(get_handler_name(a))


class Allocator(ctypes.Structure):
    """NEP 49's PyDataMemAllocator, to call a handler's functions directly."""

    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("malloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)),
        (
            "calloc",
            ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t),
        ),
        (
            "realloc",
            ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t),
        ),
        ("free", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)),
    ]


class Handler(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 127),
        ("version", ctypes.c_uint8),
        ("allocator", Allocator),
    ]


def handler_struct(align: int) -> Handler:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return Handler.from_address(get(knp.handler(align), b"mem_handler"))


def kmalloc_live() -> int:
    caches = [c for c in _core._kmalloc_caches() if c is not None]
    return sum(c.stats().active_objs for c in caches) + _core._kmalloc_large_stats()["objects"]


def test_one_capsule_per_alignment() -> None:
    for align in (16, 64, 4096, 2 << 20):
        h = knp.handler(align)
        assert h is knp.handler(align)
        assert knp.handler_align(h) == align
        assert handler_struct(align).name == f"kmemcache align={align}".encode()
    assert knp.handler(16) is not knp.handler(32)
    assert knp.handler_align(knp.get_handler()) in (0, 64)  # NumPy's, or the plugin's
    for bad in (0, 8, 48, 4 << 20, -64):
        with pytest.raises(ValueError, match="power of two from 16"):
            knp.handler(bad)
    with pytest.raises(TypeError, match="mem_handler"):
        knp.set_handler(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("align", [16, 64, 4096, 1 << 16])
def test_every_array_is_aligned_ufunc_outputs_included(align: int) -> None:
    arrays = []
    with knp.aligned(align) as h:
        assert knp.get_handler() is h
        for n in (1, 3, 7, 100, 1000, 5000, 100_000, 300_000):
            a = np.zeros(n)
            b = np.empty(n, np.uint8)
            c = np.sin(a) + 1  # a ufunc output, and a temporary
            d = (a * 2)[::2].copy()
            e = np.concatenate([a, a])
            f = np.arange(n).reshape(-1, 1) @ np.ones((1, 3))
            arrays += [a, b, c, d, e, f]
    for a in arrays:
        assert a.ctypes.data % align == 0, (a.shape, a.dtype)
        assert handler_name(a) == f"kmemcache align={align}"
    assert np.all(arrays[2] == 1.0)
    assert knp.handler_align(knp.get_handler()) != align or align == 64


def test_arrays_keep_their_own_handler_across_install_and_restore() -> None:
    before = np.ones(1000)
    previous = knp.install(4096)
    try:
        inside = np.ones(1000)
        assert handler_name(before) != handler_name(inside) == "kmemcache align=4096"
    finally:
        assert knp.set_handler(previous) is knp.handler(4096)
    after = np.ones(1000)
    assert handler_name(after) == handler_name(before)
    del before, inside  # each freed by its own allocator
    gc.collect()
    assert np.all(after == 1)


def test_realloc_moves_across_classes_and_keeps_the_data() -> None:
    with knp.aligned(64):
        a = np.arange(10, dtype=np.int64)
        for n in (100, 1000, 5000, 200_000, 50, 3):
            a.resize(n, refcheck=False)
            assert a.ctypes.data % 64 == 0
            keep = min(n, 10)
            assert list(a[:keep]) == list(range(keep))


def test_calloc_gives_zeros_after_the_memory_was_dirty() -> None:
    with knp.aligned(64):
        for n in (64, 4096, 64 << 10, 1 << 20):
            for _ in range(3):
                a = np.empty(n, np.uint8)
                a.fill(0xAB)
                del a
                z = np.zeros(n, np.uint8)
                assert not z.any(), n
                del z


def test_free_does_not_trust_numpys_size() -> None:
    h = handler_struct(64).allocator
    live = kmalloc_live()
    for size, told in ((100, 0), (100, 1 << 40), (5000, 3), (1 << 20, 7), (0, 99)):
        p = h.malloc(h.ctx, size)
        assert p and p % 64 == 0
        assert kmalloc_live() == live + 1
        h.free(h.ctx, p, told)
        assert kmalloc_live() == live, (size, told)
    p = h.calloc(h.ctx, 1 << 62, 8)  # overflows: NULL, as calloc says
    assert not p


def test_the_handler_runs_without_the_gil_from_threads() -> None:
    # ctypes releases the GIL around each call: the handler's functions run in
    # four threads at once, as NumPy calls them from its GIL-free loops
    h = handler_struct(64).allocator
    errors: list[str] = []
    start = threading.Barrier(4)

    def churn(seed: int) -> None:
        start.wait()
        for i in range(2000):
            size = (seed * 7919 + i * 104729) % 20000 + 1
            p = h.calloc(h.ctx, size, 1)
            if not p or p % 64 or ctypes.string_at(p + size - 1, 1) != b"\0":
                errors.append(f"calloc({size}) gave {p}")
            ctypes.memset(p, seed, size)
            q = h.realloc(h.ctx, p, size * 2)
            if not q or ctypes.string_at(q + size - 1, 1) != bytes([seed]):
                errors.append(f"realloc({size}) lost the data")
            h.free(h.ctx, q, 0)

    live = kmalloc_live()
    threads = [threading.Thread(target=churn, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert kmalloc_live() == live


def test_numpy_threads_with_the_gil_released() -> None:
    # the handler is a context variable: each thread installs it for itself
    results: list[bool] = []

    def work() -> None:
        with knp.aligned(64):
            ok = True
            for n in (1000, 100_000):
                a = np.random.default_rng(n).random(n)
                s = np.sort(a)  # sorts with the GIL released, with a buffer
                ok &= a.ctypes.data % 64 == 0 and s.ctypes.data % 64 == 0
                ok &= bool(np.all(s[1:] >= s[:-1]))
            results.append(ok)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]


OVERRUN = """
    import ctypes, gc, sys
    import numpy as np
    import kmemcache.numpy
    from kmemcache import _kmemcache as _core

    reports = []
    sys.unraisablehook = lambda u: reports.append(u)
    with kmemcache.numpy.aligned(64):
        a = np.zeros(100, np.uint8)
    cache = _core._kmalloc_caches()[5]
    ctypes.memmove(a.ctypes.data + 100, b"A", 1)  # one byte past the end
    del a
    gc.collect()
    print(cache.name, cache.stats().active_objs)
    for u in reports:
        print(type(u.exc_value).__name__, u.err_msg)
        print(u.exc_value)
"""


def test_a_write_past_an_arrays_end_is_reported_at_free() -> None:
    run = run_python(OVERRUN, KMEMCACHE_DEBUG="Z,kmalloc-*")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "kmalloc-128 0", run.stdout  # reported, and freed all the same
    ignored = "RedzoneError Exception ignored while freeing the data of a NumPy array"
    assert lines[1].startswith(ignored), run.stdout
    assert "kmalloc Redzone overwritten in kmalloc-128" in lines[2], run.stdout
    assert "bytes 100-100. First byte 0x41 instead of 0xcc" in lines[2], run.stdout


def test_an_overrun_warns_under_the_warn_policy() -> None:
    code = OVERRUN.replace("import numpy as np", "import numpy as np, warnings")
    run = run_python(code, KMEMCACHE_DEBUG="Z,kmalloc-*", KMEMCACHE_ON_ERROR="warn")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["kmalloc-128 0"], run.stdout
    assert "SlabWarning" in run.stderr and "kmalloc Redzone overwritten" in run.stderr


def test_kmemcache_imports_without_numpy_and_says_what_is_missing() -> None:
    run = run_python(
        """
        import sys
        sys.modules["numpy"] = None  # as if NumPy were not installed
        import kmemcache
        kmemcache.kzalloc(10).free()
        try:
            import kmemcache.numpy
        except ImportError as exc:
            print(exc)
        """
    )
    assert run.returncode == 0, run.stderr
    assert "kmemcache.numpy needs NumPy 1.22 or later" in run.stdout
    assert "not installed: pip install numpy" in run.stdout


def test_the_pytest_plugin_installs_the_handler_for_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def test_aligned():
                a = np.ones(1000) * 3
                assert a.ctypes.data % 4096 == 0
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "kmemcache.numpy_plugin",
            "--kmemcache-align=4096",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_user.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "NumPy allocates through kmemcache, arrays aligned to 4096 bytes" in run.stdout
    assert "the kmalloc caches served" in run.stdout
    assert "1 passed" in run.stdout


@pytest.mark.parametrize("align", ["3", "-64"])
def test_a_bad_plugin_alignment_is_a_usage_error(tmp_path: Path, align: str) -> None:
    (tmp_path / "test_user.py").write_text("def test_nothing():\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "kmemcache.numpy_plugin"]
        + [f"--kmemcache-align={align}", "-p", "no:cacheprovider", str(tmp_path / "test_user.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 4, run.stdout + run.stderr  # pytest's usage error
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert f"--kmemcache-align={align}:" in run.stderr
