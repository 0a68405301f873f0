"""The README's Python examples run as printed.

Each ```python block runs in a fresh interpreter. A block followed by a
```text block that starts with ``kmemcache.SomeError:`` must fail with that
exception; one followed by any other ```text block must print exactly that
text; every other block must succeed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str | None, str | None]]:
    """(code, the exception it must raise, the text it must print)."""
    blocks = BLOCK.findall(README.read_text())
    found = []
    for i, (lang, code) in enumerate(blocks):
        if lang != "python":
            continue
        error = output = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            text = blocks[i + 1][1]
            match = re.match(r"(kmemcache\.\w+):", text)
            error, output = (match.group(1), None) if match else (None, text)
        found.append((code, error, output))
    return found


def test_readme_has_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize("code,expected,output", examples())
def test_readme_example_runs(
    code: str, expected: str | None, output: str | None, tmp_path: Path
) -> None:
    script = tmp_path / "app.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    if expected is None:
        assert run.returncode == 0, run.stderr
        if output is not None:
            assert run.stdout == output
    else:
        assert run.returncode == 1, run.stderr
        assert expected + ":" in run.stderr, run.stderr
