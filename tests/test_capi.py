"""The C API: an extension built against the installed package calls the engine
through kmemcache.h, from several threads with the GIL released; headers of other
versions; the engine's own symbols are not exported.

The extensions (tests/capi/) are built once per session with setuptools, in a
temporary folder and a subprocess, as a user's project would build them.
"""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType

import pytest
from helpers import run_python

import kmemcache
from kmemcache import _kmemcache as _core

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE = HERE / "capi" / "capi_user.c"
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
WARNINGS += ["-Wno-unused-parameter", "-Wno-missing-field-initializers"]

SETUP = """
from setuptools import Extension, setup

def ext(name, include, *macros):
    return Extension(
        name,
        sources=["capi_user.c"],
        include_dirs=[include],
        define_macros=[("CAPI_USER_MODULE", name), *[(m, "1") for m in macros]],
        extra_compile_args={warnings!r},
    )

setup(
    name="capi-users",
    ext_modules=[
        ext("capi_user", {include!r}),
        ext("capi_user_old", "old", "CAPI_USER_CACHES_ONLY"),
        ext("capi_user_new", "new", "CAPI_USER_CACHES_ONLY"),
    ],
)
"""


def header_variant(folder: Path, edit: str) -> None:
    """A copy of the installed headers with kmemcache.h as an older header ("old": the
    table ends after the cache functions) or a newer one ("new": one more function)."""
    shutil.copytree(kmemcache.get_include(), folder)
    header = folder / "kmemcache.h"
    text = header.read_text()
    start = text.index("    const kmc_kmalloc_class_t *kmc_kmalloc_classes;")
    end = text.index("    /* --- version 2 appends here")
    if edit == "old":
        text = text[:start] + text[end:]
    else:
        text = text[:end] + "    void (*kmc_future)(void);\n" + text[end:]
        text = text.replace("#define KMEMCACHE_CAPI_VERSION 1", "#define KMEMCACHE_CAPI_VERSION 2")
    header.write_text(text)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools")
    folder = tmp_path_factory.mktemp("capi")
    shutil.copy(SOURCE, folder)
    header_variant(folder / "old", "old")
    header_variant(folder / "new", "new")
    (folder / "setup.py").write_text(
        SETUP.format(include=kmemcache.get_include(), warnings=WARNINGS)
    )
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def load(folder: Path, name: str) -> ModuleType:
    path = next(folder.glob(f"{name}.*.so"))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_include_folder_has_the_headers() -> None:
    include = Path(kmemcache.get_include())
    assert {"kmemcache.h", "kmc.h", "kmemcache.pxd"} <= {p.name for p in include.iterdir()}
    engine = ROOT / "csrc" / "engine" / "kmc.h"
    if engine.exists():  # a checkout: the copy is the engine's header
        assert filecmp.cmp(include / "kmc.h", engine, shallow=False)


def test_the_table_layout_has_every_member() -> None:
    members, size, version = _core._capi_layout()
    assert version == _core.CAPI_VERSION == 1
    offsets = sorted(offset for _, offset in members)
    pointer = 8 if sys.maxsize > 2**32 else 4
    # size and version first, then one pointer per member with no gap: a member
    # missing from the layout would leave one
    assert offsets[0] == 2 * pointer
    assert offsets == list(range(offsets[0], size, pointer))
    assert len({name for name, _ in members}) == len(members)
    assert "kmc_cache_alloc" in dict(members) and "kmc_kfree" in dict(members)


def test_only_the_module_init_is_exported() -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm")
    out = subprocess.run(
        [nm, "-D", "--defined-only", _core.__file__], capture_output=True, text=True, check=True
    ).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == {"PyInit__kmemcache"}, sorted(symbols)[:20]


def test_threads_call_the_engine_without_the_gil(built: Path) -> None:
    user = load(built, "capi_user")
    errors: list[int] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        errors.append(user.churn(300))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [0, 0, 0, 0]
    active, allocs, frees = user.stats()
    assert active == 0 and allocs == frees == 4 * 300 * 64
    # the C API's caches are the engine's: the Python face lists them
    assert "capi-ring" in kmemcache.slabinfo()
    assert user.kmalloc_class(100) == "kmalloc-128"
    kind, message = user.double_free()
    assert kind == "double free" and "already free" in message.lower(), message
    assert user.destroy() == 0


def test_an_extension_built_against_an_older_header_keeps_working(built: Path) -> None:
    old = load(built, "capi_user_old")
    assert old.churn(20) == 0
    assert old.stats()[0] == 0
    assert old.destroy() == 0


def test_a_newer_header_is_refused_with_a_clear_error(built: Path) -> None:
    with pytest.raises(ImportError, match="C API version 2.*gives version 1"):
        load(built, "capi_user_new")


def test_kmalloc_through_the_c_api_takes_the_debug_options(built: Path) -> None:
    # kmemcache_import() made the size classes through the package, so that
    # KMEMCACHE_DEBUG's red zones guard what C code allocates with kmc_kmalloc
    code = f"""
        import ctypes, importlib.util, sys
        spec = importlib.util.spec_from_file_location(
            "capi_user", {str(next(built.glob("capi_user.*.so")))!r})
        user = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(user)
        p = user.kmalloc_addr(100)
        ctypes.memmove(p + 100, b"A", 1)
        print(*user.kfree_addr(p), sep="|")
    """
    run = run_python(textwrap.dedent(code), KMEMCACHE_DEBUG="Z,kmalloc-*")
    assert run.returncode == 0, run.stderr
    kind, message = run.stdout.strip().split("|")
    assert kind == "red zone overwritten", run.stdout
    assert "kmalloc-128" in message, message


def test_cython_sees_the_pxd(tmp_path: Path) -> None:
    pytest.importorskip("Cython")
    pytest.importorskip("setuptools")
    (tmp_path / "cy_user.pyx").write_text(
        textwrap.dedent(
            """
            # cython: language_level=3
            cimport kmemcache as kmc

            kmc.kmemcache_import()

            def churn(int n):
                cdef kmc.kmc_cache_t *cache
                cdef void *p
                cdef kmc.kmc_stats_t stats
                cdef int i, misaligned = 0
                if kmc.kmc_cache_create(b"cy-ring", 100, 64, 0, NULL, NULL, &cache) != kmc.KMC_OK:
                    raise MemoryError(kmc.kmc_last_report().message)
                with nogil:
                    for i in range(n):
                        p = kmc.kmc_cache_alloc(cache, 1)
                        misaligned += (<size_t>p) % 64 != 0
                        kmc.kmc_cache_free(cache, p)
                        p = kmc.kmc_kmalloc(3000, 64)
                        misaligned += (<size_t>p) % 64 != 0
                        kmc.kmc_kfree(p)
                kmc.kmc_cache_stats(cache, &stats)
                kmc.kmc_cache_destroy(cache)
                return misaligned, stats.allocs, kmc.kmc_kmalloc_classes[0].name
            """
        )
    )
    (tmp_path / "setup.py").write_text(
        textwrap.dedent(
            f"""
            from Cython.Build import cythonize
            from setuptools import Extension, setup
            setup(name="cy-user", ext_modules=cythonize(
                [Extension("cy_user", ["cy_user.pyx"], include_dirs=[{kmemcache.get_include()!r}])],
                include_path=[{kmemcache.get_include()!r}], quiet=True))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cy_user = load(tmp_path, "cy_user")
    assert cy_user.churn(1000) == (0, 1000, b"kmalloc-8")
