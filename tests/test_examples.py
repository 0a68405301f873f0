"""The programs of examples/ run, each in a fresh interpreter, as a user runs them.

The C extension is built as its folder says (``pip install .``, a pyproject.toml
naming setuptools and kmemcache as build requirements) in a fresh virtual
environment without setuptools, with kmemcache from a wheel of this tree.
"""

from __future__ import annotations

import errno
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not in this tree")


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_every_example_is_tested() -> None:
    tested = {
        "aligned_odirect.py",
        "simd_numpy.py",
        "shared_pool.py",
        "arrow_shared.py",
        "capi_extension",
    }
    assert {p.name for p in EXAMPLES.iterdir()} == tested


def test_aligned_odirect(tmp_path: Path) -> None:
    done = run("aligned_odirect.py", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "16 blocks of 4096 bytes written and read back" in done.stdout
    assert done.stdout.rstrip().endswith("identical")
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_aligned_odirect_falls_back_where_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = os.open

    def refuse_o_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_o_direct)
    module = runpy.run_path(str(EXAMPLES / "aligned_odirect.py"))
    module["main"](str(tmp_path))
    printed = capsys.readouterr().out
    assert "refuses O_DIRECT" in printed
    assert "(buffered): identical" in printed


def test_simd_numpy(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    done = run("simd_numpy.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kmemcache.numpy.aligned(64): 5 of 5 arrays 64-byte aligned" in done.stdout


def test_shared_pool(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    done = run("shared_pool.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "maxima: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]" in done.stdout


def test_arrow_shared(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")
    done = run("arrow_shared.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "12 batches of 20000 rows read by 2 consumers\n"
        "every column in the producer's shared memory: True\n"
        "early frees: ['refused']\n"
        "sums: True\n"
        "objects left: 0\n"
    )


def compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.mark.skipif(compiler() is None, reason="no C compiler to build the extension")
def test_capi_extension_builds_with_its_pyproject(tmp_path: Path, kmemcache_wheel: Path) -> None:
    project = tmp_path / "capi_extension"
    shutil.copytree(EXAMPLES / "capi_extension", project)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    # as in a fresh Python 3.12 environment: no setuptools beside pip
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMEMCACHE_", "PYTHON"))}
    env["PIP_FIND_LINKS"] = " ".join(
        filter(None, [str(kmemcache_wheel), env.get("PIP_FIND_LINKS")])
    )
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "."],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    used = subprocess.run(
        [python, str(project / "use_ring.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout == "3000 objects allocated from C threads without the GIL, 0 misaligned\n"
