"""The ``kmc-envvars`` directive: the KMEMCACHE_* environment variables in one table.

Nothing in the table is typed here twice. The engine's variables come from its
options table (``csrc/engine/options.c``: name, default, range) and the comment
beside each ``KMC_OPTION_*`` in ``csrc/engine/kmc.h``; the Python package's and
the build's variables are found where the code reads them (``os.environ.get``
in ``src/kmemcache`` and ``setup.py``), with their meaning taken from
``DESCRIPTIONS`` below. A variable the code reads that ``DESCRIPTIONS`` does not
describe, or one it describes that no code reads, is a build warning (an error
under ``sphinx -W``), so the table cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: What each variable read from Python means: (when it is read, its meaning).
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "KMEMCACHE_DEBUG": (
        "at import (``kmemcache.debug.set_debug`` later)",
        "Debug options for caches created from then on, in slub_debug's syntax "
        "(``FZPU``, ``Z,kmalloc-*``, ``-``); see :doc:`guide/debugging`. "
        "A bad value warns and leaves debugging off.",
    ),
    "KMEMCACHE_ALLOCINFO": (
        "at import (``kmemcache.allocinfo.start()`` instead)",
        "``1`` records the Python line that allocated each object, for "
        "``kmemcache.allocinfo.snapshot()``; unset or ``0``: not recorded. "
        "See :doc:`guide/limits`.",
    ),
    "KMEMCACHE_ON_ERROR": (
        "at import (``kmemcache.debug.set_on_error`` later)",
        "What a detected error does: ``raise`` (the default), ``warn`` "
        "(a ``SlabWarning``, and the operation goes on) or ``abort``.",
    ),
    "KMEMCACHE_PUBLISH": (
        "at import (``kmemcache.publish()`` instead)",
        "``1`` (or an interval of 0.1 to 60 seconds) publishes this process's "
        "cache statistics for ``kmemcache top`` and ``kmemcache slabinfo --pid``; "
        "unset or ``0``: not published. See :doc:`guide/inspection`.",
    ),
    "KMEMCACHE_STATS_DIR": (
        "when statistics are published or read",
        "The folder for published statistics, instead of ``/dev/shm/kmemcache-stats.<uid>/``.",
    ),
    "KMEMCACHE_SANITIZE": (
        "when building (``pip install .``)",
        "``1`` builds the extension with AddressSanitizer and "
        "UndefinedBehaviorSanitizer (for development).",
    ),
    "KMEMCACHE_WERROR": (
        "when building (``pip install .``)",
        "``1`` turns the C compiler's warnings into errors.",
    ),
}

_OPTION_ROW = re.compile(
    r"\[KMC_OPTION_(\w+)\]\s*=\s*\{\s*\"(\w+)\"\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)"
)
_OPTION_DOC = re.compile(r"KMC_OPTION_(\w+),\s*/\*\s*(.*?)\s*\*/")
_PY_READ = re.compile(r"os\.environ\.get\(\s*\"(KMEMCACHE_\w+)\"")


def engine_options() -> list[dict[str, str]]:
    """The engine's options: from options.c's table and kmc.h's comments."""
    table = (ROOT / "csrc" / "engine" / "options.c").read_text()
    docs = dict(_OPTION_DOC.findall((ROOT / "csrc" / "engine" / "kmc.h").read_text()))
    rows = []
    found = _OPTION_ROW.findall(table)
    if len(found) != table.count("[KMC_OPTION_"):
        raise ValueError("options.c: a row of the options table is not name, then numbers")
    for enum, name, default, low, high in found:
        rows.append(
            {
                "name": "KMEMCACHE_" + name.upper(),
                "default": default,
                "when": f"by the engine, at first use; a whole number from {low} to {high}",
                "meaning": docs.get(enum, ""),
                "where": "csrc/engine/options.c",
            }
        )
    return rows


def python_reads() -> dict[str, list[str]]:
    """Each variable read with os.environ.get, and the files that read it."""
    found: dict[str, list[str]] = {}
    files = sorted((ROOT / "src" / "kmemcache").rglob("*.py")) + [ROOT / "setup.py"]
    for path in files:
        for name in _PY_READ.findall(path.read_text()):
            where = str(path.relative_to(ROOT))
            if where not in found.setdefault(name, []):
                found[name].append(where)
    return found


def rows() -> tuple[list[dict[str, str]], list[str]]:
    """Every variable's row, and the problems found (undescribed or unread names)."""
    out = engine_options()
    problems = [
        f"{r['name']}: no comment beside its KMC_OPTION in kmc.h" for r in out if not r["meaning"]
    ]
    reads = python_reads()
    for name in sorted(reads):
        if name not in DESCRIPTIONS:
            problems.append(f"{name} is read in {', '.join(reads[name])} but not described")
            continue
        when, meaning = DESCRIPTIONS[name]
        default = "unset"
        out.append(
            {
                "name": name,
                "default": default,
                "when": when,
                "meaning": meaning,
                "where": ", ".join(reads[name]),
            }
        )
    for name in sorted(set(DESCRIPTIONS) - set(reads)):
        problems.append(f"{name} is described but no code reads it")
    return sorted(out, key=lambda r: r["name"]), problems


def _directive() -> Any:
    """The directive's class (docutils is imported only when the docs are built)."""
    from docutils import nodes
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList

    class EnvVarsDirective(Directive):
        has_content = False

        def run(self) -> list[Any]:
            env = self.state.document.settings.env
            for path in ("csrc/engine/options.c", "csrc/engine/kmc.h", "setup.py"):
                env.note_dependency(str(ROOT / path))
            found, problems = rows()
            result: list[Any] = [
                self.state.document.reporter.warning(problem, line=self.lineno)
                for problem in problems
            ]
            table = nodes.table()
            group = nodes.tgroup(cols=4)
            table += group
            for width in (22, 10, 25, 43):
                group += nodes.colspec(colwidth=width)
            head = nodes.thead()
            group += head
            head += self.row(["Variable", "Default", "Read", "Meaning"])
            body = nodes.tbody()
            group += body
            for r in found:
                body += self.row(
                    [f"``{r['name']}``", f"``{r['default']}``", r["when"], r["meaning"]]
                )
            result.append(table)
            return result

        def row(self, cells: list[str]) -> Any:
            row = nodes.row()
            for text in cells:
                entry = nodes.entry()
                lines = StringList([text], source="kmc-envvars")
                self.state.nested_parse(lines, self.content_offset, entry)
                row += entry
            return row

    return EnvVarsDirective


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("kmc-envvars", _directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
