"""The README's Python examples run as printed.

Each ```python block runs in a fresh interpreter. A block followed by a
```text block that starts with ``kmemcache.SomeError:`` must fail with that
exception; every other block must succeed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str | None]]:
    blocks = BLOCK.findall(README.read_text())
    found = []
    for i, (lang, code) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            match = re.match(r"(kmemcache\.\w+):", blocks[i + 1][1])
            expected = match.group(1) if match else None
        found.append((code, expected))
    return found


def test_readme_has_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize("code,expected", examples())
def test_readme_example_runs(code: str, expected: str | None, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    if expected is None:
        assert run.returncode == 0, run.stderr
    else:
        assert run.returncode == 1, run.stderr
        assert expected + ":" in run.stderr, run.stderr
