"""A pytest plugin: every NumPy array of the test run is allocated by kmemcache.

    pytest -p kmemcache.numpy_plugin                      # arrays aligned to 64 bytes
    pytest -p kmemcache.numpy_plugin --kmemcache-align=4096
    KMEMCACHE_DEBUG=Z,kmalloc-* pytest -p kmemcache.numpy_plugin   # with red zones

The handler is installed when pytest is configured, in the main thread's context
(NumPy keeps the current handler in a context variable, so threads that tests start
begin with NumPy's default), and NumPy's previous handler is back at the end. The
report's header names the handler; its summary says how many allocations the
kmalloc caches served during the run, so a run that did not go through kmemcache
shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import CapsuleType

_state: dict[str, Any] = {}


def _kmalloc_allocs() -> int:
    """Objects the kmalloc size classes handed out, ever, plus the live large ones."""
    from kmemcache import _kmemcache as _core

    caches = [c for c in _core._kmalloc_caches() if c is not None]
    return sum(c.stats().allocs for c in caches) + _core._kmalloc_large_stats()["objects"]


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--kmemcache-align",
        type=int,
        default=64,
        help="kmemcache.numpy_plugin: the alignment of every array (default 64)",
    )


def pytest_configure(config: Any) -> None:
    import kmemcache.numpy as knp

    align = config.getoption("--kmemcache-align")
    try:
        previous: CapsuleType = knp.install(align)
    except (TypeError, ValueError) as e:  # a bad option is the user's error, not pytest's
        import pytest

        raise pytest.UsageError(f"--kmemcache-align={align}: {e}") from None
    _state.update(align=align, previous=previous, allocs=_kmalloc_allocs())


def pytest_report_header(config: Any) -> str:
    return (
        f"kmemcache.numpy_plugin: NumPy allocates through kmemcache, arrays aligned to "
        f"{_state['align']} bytes"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "align" not in _state:
        return
    served = _kmalloc_allocs() - _state["allocs"]
    terminalreporter.write_line(
        f"kmemcache.numpy_plugin: the kmalloc caches served {served} allocations "
        f"(arrays aligned to {_state['align']} bytes)"
    )


def pytest_unconfigure(config: Any) -> None:
    if "previous" in _state:
        import kmemcache.numpy as knp

        knp.set_handler(_state.pop("previous"))
