"""``kmemcache demo``: perf's task context data under task churn, four ways.

The demo replays the case Linux solved with an aligned cache: perf's per-task
PMU context data for Arch LBR, whose XSAVE area must be 64-byte aligned, is
allocated in each of the four ways the kernel change "perf/core: Use
kmem_cache to allocate the PMU specific data" weighed, and each way's memory,
time and alignment are measured. It uses the library (``kmemcache``); nothing
in the library uses it.

Its modules, by concern:

* :mod:`~kmemcache.demo.lbr_layout`: the sizes of Linux's "x86_lbr" objects;
* :mod:`~kmemcache.demo.perf`: a model of perf's task context data and of the
  four ways to allocate it;
* :mod:`~kmemcache.demo.xsave`: a real XSAVE/XRSTOR on a buffer (the C probe
  ``kmemcache.demo._xsave``), and the fault on a misaligned one;
* :mod:`~kmemcache.demo.config`: what to run; :mod:`~kmemcache.demo.workload`:
  the run itself, and how each number is measured;
  :mod:`~kmemcache.demo.expectations`: the change's claims, judged on a run;
  :mod:`~kmemcache.demo.report`: the Markdown table and the JSON;
  :mod:`~kmemcache.demo.plotting`: the plot (matplotlib);
* :mod:`~kmemcache.demo.measure`: timed loops, quartiles, progress and tables,
  shared with the benchmarks.

The names below are what ``kmemcache demo`` calls.
"""

from __future__ import annotations

from .config import (
    DEFAULT_ALIGN,
    DEFAULT_LIVE,
    DEFAULT_ROUNDS,
    DEFAULT_SIZE,
    DEFAULT_TASKS,
    FAULT_CHECK_MISALIGN,
    DemoConfig,
)
from .expectations import Claim, claims
from .measure import Progress, paired_ratio
from .plotting import plot
from .report import format_table, to_json
from .workload import OPTIONS, DemoResult, OptionResult, progress_steps, run

__all__ = [
    "DEFAULT_ALIGN",
    "DEFAULT_LIVE",
    "DEFAULT_ROUNDS",
    "DEFAULT_SIZE",
    "DEFAULT_TASKS",
    "FAULT_CHECK_MISALIGN",
    "OPTIONS",
    "Claim",
    "DemoConfig",
    "DemoResult",
    "OptionResult",
    "Progress",
    "claims",
    "format_table",
    "paired_ratio",
    "plot",
    "progress_steps",
    "run",
    "to_json",
]
