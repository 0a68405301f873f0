"""The README's Python examples run as printed.

Each ```python block runs in a fresh interpreter, saved as ``app.py``. A block
followed by a ```text block that starts with ``kmemcache.SomeError:`` must fail
with that exception and a report that reads as that block, line for line, once
what varies from run to run is set aside (addresses, the script's folder, ages);
one followed by a block that starts with ``Exception ignored`` must succeed and
write that unraisable report on stderr (its traceback lines, which vary with the
Python version, set aside); one followed by any other ```text block must print
exactly that text; every other block must succeed. A block that starts with
``# setup.py`` builds the C example above it: tests/test_capi.py builds and runs
that pair.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str | None, str | None]]:
    """(code, the exception it must raise, the text it must print or the report)."""
    blocks = BLOCK.findall(README.read_text())
    found = []
    for i, (lang, code) in enumerate(blocks):
        if lang != "python" or code.startswith("# setup.py"):
            continue
        error = output = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            text = blocks[i + 1][1]
            match = re.match(r"(kmemcache\.\w+):", text)
            error, output = (match.group(1), text) if match else (None, text)
        found.append((code, error, output))
    return found


def normalise(report: str) -> str:
    """A report with what varies between runs replaced by fixed words."""
    report = re.sub(r"^  [0-9a-f]{16}:", "  ADDRESS:", report, flags=re.M)
    report = re.sub(r"0x[0-9a-f]+", "0xADDRESS", report)
    report = re.sub(r"\S*/app\.py", "FOLDER/app.py", report)
    return re.sub(r"age=\d+ms", "age=AGEms", report)


def without_traceback(report: str) -> str:
    """An unraisable report without its traceback: from its first line, the lines
    from the exception's own on."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("kmemcache."))
    return "\n".join([lines[0], *lines[start:]])


def test_readme_has_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize("code,expected,output", examples())
def test_readme_example_runs(
    code: str, expected: str | None, output: str | None, tmp_path: Path
) -> None:
    script = tmp_path / "app.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("KMEMCACHE_")},
    )
    if output is not None and output.startswith("Exception ignored"):
        assert run.returncode == 0, run.stderr
        printed = run.stderr[run.stderr.index("Exception ignored") :]
        assert normalise(without_traceback(printed)) == normalise(without_traceback(output)), (
            printed
        )
    elif expected is None:
        assert run.returncode == 0, run.stderr
        if output is not None:
            assert run.stdout == output
    else:
        assert run.returncode == 1, run.stderr
        assert expected + ":" in run.stderr, run.stderr
        printed = run.stderr[run.stderr.index(expected + ":") :]
        assert normalise(printed) == normalise(output or ""), printed
