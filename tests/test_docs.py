"""The README's and the docs' Python examples run as printed.

Each ```python block of README.md and docs/**/*.md runs in a fresh interpreter,
saved as ``app.py``. A block followed by a ```text block that starts with
``kmemcache.SomeError:`` must fail with that exception and a report that reads
as that block, line for line, once what varies from run to run is set aside
(addresses, the script's folder, ages); one followed by a block that starts with
``Exception ignored`` must succeed and write that unraisable report on stderr
(its traceback lines, which vary with the Python version, set aside); one
followed by any other ```text block must print exactly that text; every other
block must succeed. A block with a line ``# not run: <why>`` is not run here
(the reason says what runs it instead, e.g. the C API's ``setup.py``, which
tests/test_capi.py builds). A block importing a module of ``OPTIONAL`` (which
the test extra does not install) is skipped, saying so, where it is absent. The
docs' reStructuredText pages hold no Python example, so that every example is
found here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"^# not run: \S", re.M)
#: What an example may import that the test extra does not install: an example
#: importing one is skipped where it is absent (CI's 40-pytest has them all).
OPTIONAL = ("distributed", "pyarrow")

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ is not in this tree")


def pages() -> list[Path]:
    """README.md and every Markdown page of the docs."""
    found = [README] if README.exists() else []
    if DOCS.is_dir():
        found += sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return found


def examples() -> list[tuple[str, str, str | None, str | None]]:
    """(page, code, the exception it must raise, the text it must print or the report)."""
    found = []
    for page in pages():
        blocks = BLOCK.findall(page.read_text())
        name = str(page.relative_to(ROOT))
        for i, (lang, code) in enumerate(blocks):
            if lang != "python" or NOT_RUN.search(code):
                continue
            error = output = None
            if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
                text = blocks[i + 1][1]
                match = re.match(r"(kmemcache\.\w+):", text)
                error, output = (match.group(1), text) if match else (None, text)
            found.append((name, code, error, output))
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


def test_every_page_has_examples_found() -> None:
    by_page = {page for page, *_ in examples()}
    assert "README.md" in by_page
    for page in ("caches", "kmalloc", "debugging", "numpy", "shared", "inspection", "transport"):
        assert f"docs/guide/{page}.md" in by_page
    assert len(examples()) >= 12


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [
        (page, code)
        for page in pages()
        for lang, code in BLOCK.findall(page.read_text())
        if lang == "python" and NOT_RUN.search(code)
    ]
    assert len(skipped) <= 2, skipped


def test_rst_pages_hold_no_python_example() -> None:
    for page in DOCS.rglob("*.rst"):
        text = page.read_text()
        assert not re.search(r"(code-block|code|sourcecode)::\s*python|^>>>", text, re.M), page


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "# kmemcache"
    assert lines[1:7] == [
        "```sh",
        "pip install . && kmemcache demo",
        "```",
        "```sh",
        "pip install '.[test]' && python -m pytest",
        "```",
    ]


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_environment_table_matches_the_code() -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import kmc_envvars
    finally:
        sys.path.pop(0)
    rows, problems = kmc_envvars.rows()
    assert problems == []
    names = {r["name"] for r in rows}
    assert {"KMEMCACHE_DEBUG", "KMEMCACHE_PURGE_DELAY_MS", "KMEMCACHE_THREAD_CACHES"} <= names


@pytest.mark.parametrize(
    "page,code,expected,output",
    examples(),
    ids=[f"{page}:{i}" for i, (page, *_) in enumerate(examples())],
)
def test_example_runs(
    page: str, code: str, expected: str | None, output: str | None, tmp_path: Path
) -> None:
    for module in OPTIONAL:
        imported = re.search(rf"^(import|from) {module}\b", code, re.M)
        if imported and importlib.util.find_spec(module) is None:
            pytest.skip(f"the example imports {module}, which is not installed")
    script = tmp_path / "app.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
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
