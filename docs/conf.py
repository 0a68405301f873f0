"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import sys
from pathlib import Path

import kmemcache

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "kmemcache"
copyright = "the kmemcache authors"
version = release = kmemcache.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "kmc_envvars",
    "kmc_apicheck",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False

html_theme = "alabaster"
html_title = f"kmemcache {release}"
html_theme_options = {"description": "Linux's slab object caches for Python"}


def _c_docstring_as_text(app, what, name, obj, options, lines):  # type: ignore[no-untyped-def]
    """The C types' and functions' docstrings are plain text (indented argument
    lists, not reStructuredText): shown as written, in a preformatted block."""
    import inspect

    if inspect.isclass(obj):  # a C type has no method written in Python
        from_c = not any(inspect.isfunction(v) for v in vars(obj).values())
    else:
        from_c = inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj)
    if from_c and lines and any(line.startswith(" ") for line in lines):
        lines[:] = ["::", "", *("    " + line for line in lines)]


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-docstring", _c_docstring_as_text)
