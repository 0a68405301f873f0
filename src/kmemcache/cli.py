"""The ``kmemcache`` command: ``demo``, ``slabinfo``, ``top`` and ``bench``.

``kmemcache demo`` runs perf's task context workload with the four allocation
options and prints what each costs (see :mod:`kmemcache.demo`);
``kmemcache slabinfo`` prints the live caches as /proc/slabinfo does (with
``--pid``, those of a process that publishes them);
``kmemcache top`` shows the machine's shared caches and the published private
ones, refreshed, as slabtop does (see :mod:`kmemcache.top`);
``kmemcache bench`` runs the benchmarks of a source checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, allocinfo
from . import demo as _demo
from . import publishing as _publish
from . import top as _top
from .cache import MAX_ALIGN, SlabStats
from .slabinfo import all_stats, format_slabinfo, slabinfo

#: Largest --size and --live the demo accepts: enough for any experiment, small
#: enough that a typo cannot ask for all the machine's memory.
MAX_DEMO_SIZE = 1 << 20
MAX_DEMO_LIVE = 1 << 20
MAX_DEMO_BYTES = 4 << 30
#: Most tasks per round (--tasks / --rounds): each round draws its random order
#: up front, about 40 bytes a task.
MAX_DEMO_STEPS = 10_000_000
#: The largest pid Linux hands out (/proc/sys/kernel/pid_max at most).
MAX_PID = 1 << 22


def _int_arg(low: int, high: int, power_of_two: bool = False) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        if power_of_two and value & (value - 1):
            raise argparse.ArgumentTypeError(f"must be a power of two, not {value}")
        return value

    return parse


def _float_arg(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, not {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmemcache",
        description="Linux-style slab object caches for Python: the perf demo, "
        "slabinfo, top and the benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"kmemcache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="perf's task context data under task churn, allocated four ways",
        description="Run a task churn workload (many tasks alive, many more created "
        "and exiting), each task holding perf's PMU context data, with the four "
        "options Linux weighed: kzalloc, over-allocate and round up, per-PMU "
        "callbacks, and an aligned kmem_cache. Prints memory per context, ns per "
        "alloc+free, misaligned contexts and a real XSAVE check.",
    )
    d.add_argument(
        "--size",
        type=_int_arg(1, MAX_DEMO_SIZE),
        default=_demo.DEFAULT_SIZE,
        help="bytes of PMU data per task context (default: %(default)s, Linux's x86_lbr)",
    )
    d.add_argument(
        "--align",
        type=_int_arg(8, min(MAX_ALIGN, 1 << 16), power_of_two=True),
        default=_demo.DEFAULT_ALIGN,
        help="alignment the contexts need (default: %(default)s, what XSAVE needs)",
    )
    d.add_argument(
        "--live",
        type=_int_arg(1, MAX_DEMO_LIVE),
        default=_demo.DEFAULT_LIVE,
        help="tasks alive at once, per option (default: %(default)s)",
    )
    d.add_argument(
        "--tasks",
        type=_int_arg(1, 1 << 30),
        default=_demo.DEFAULT_TASKS,
        help="tasks created and exited per option, over all rounds (default: %(default)s)",
    )
    d.add_argument(
        "--rounds",
        type=_int_arg(1, 1000),
        default=_demo.DEFAULT_ROUNDS,
        help="timed rounds, options taking turns; medians are reported (default: %(default)s)",
    )
    d.add_argument("--seed", type=_int_arg(0, 2**63), default=0, help="random seed")
    d.add_argument("--json", action="store_true", help="print JSON instead of the table")
    d.add_argument("--plot", metavar="FILE.png", help="also draw the comparison (needs matplotlib)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    d.set_defaults(own_parser=d)

    info = sub.add_parser(
        "slabinfo",
        help="print the live caches in /proc/slabinfo format",
        description="Print every live cache of this process, or with --pid of a process "
        "that publishes its statistics (KMEMCACHE_PUBLISH=1 or kmemcache.publish()), in "
        "the format of Linux's /proc/slabinfo (version 2.1), or with --json every counter "
        "of each.",
    )
    info.add_argument("--json", action="store_true", help="print JSON: every counter of each cache")
    info.add_argument(
        "--pid",
        type=_int_arg(1, MAX_PID),
        help="the caches of process PID, which must publish them",
    )
    info.add_argument(
        "--sites",
        action="store_true",
        help="also the call sites that allocated the live objects, largest first "
        "(the process must record them: KMEMCACHE_ALLOCINFO=1 or kmemcache.allocinfo.start())",
    )
    info.set_defaults(own_parser=info)

    top = sub.add_parser(
        "top",
        help="a live table of the caches: shared ones, and published private ones",
        description="Show, refreshed as slabtop does, every shared cache of this user on "
        "this machine (read from its region) and the private caches of the running "
        "processes that publish their statistics (KMEMCACHE_PUBLISH=1, or "
        "kmemcache.publish(); off by default): objects, active ones, object size, slabs "
        "and memory, largest memory first. q (or Ctrl-C) ends it.",
    )
    top.add_argument("--once", action="store_true", help="print one table and end")
    top.add_argument("--json", action="store_true", help="print JSON once and end")
    top.add_argument(
        "--sort",
        choices=sorted(_top.SORT_KEYS),
        default="memory",
        help="the column to sort by (default: %(default)s; numbers largest first)",
    )
    top.add_argument(
        "--interval",
        type=_float_arg(0.1, 60.0),
        default=2.0,
        help="seconds between refreshes (default: %(default)s)",
    )
    top.add_argument(
        "-n",
        "--iterations",
        type=_int_arg(1, 1 << 20),
        help="refresh this many times, then end (default: until Ctrl-C)",
    )
    top.add_argument(
        "--sites",
        action="store_true",
        help="also the largest call sites of each publishing process that records them "
        "(KMEMCACHE_ALLOCINFO=1 or kmemcache.allocinfo.start() in it)",
    )
    top.set_defaults(own_parser=top)

    sub.add_parser(
        "bench",
        help="run the benchmarks of a source checkout (benchmarks/)",
        description="Run the benchmarks of the source checkout: benchmarks/run_all.py "
        "when there is one, else every benchmarks/bench_*.py in turn. Any further "
        "arguments (e.g. --quick) are passed on.",
        usage="kmemcache bench [-h] [ARGS ...]",
    )
    return parser


def _check_plot_path(parser: argparse.ArgumentParser, path: str) -> None:
    """--plot's file must be writable before the run starts, not after it."""
    if not path.lower().endswith(".png"):
        parser.error(f"--plot writes a PNG: the file name must end in .png, not {path!r}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        parser.error(f"--plot {path!r} is a directory, not a file")
    if not folder.is_dir():
        parser.error(f"--plot {path!r}: the directory {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (
        target.exists() and not os.access(target, os.W_OK)
    ):
        parser.error(f"--plot {path!r}: cannot write there")
    if importlib.util.find_spec("matplotlib") is None:
        parser.error(
            "--plot needs matplotlib, which is not installed: "
            "pip install 'kmemcache[plot]' (or pip install matplotlib)"
        )


def _cmd_demo(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    if ns.plot is not None:
        _check_plot_path(parser, ns.plot)
    # Every option keeps its live tasks at once, and option 1 asks for size + align.
    need = _demo.OPTIONS * ns.live * (ns.size + ns.align)
    if need > MAX_DEMO_BYTES:
        parser.error(
            f"--live {ns.live} with --size {ns.size} needs about {need >> 20} MiB "
            f"(the limit is {MAX_DEMO_BYTES >> 20} MiB)"
        )
    if ns.tasks // ns.rounds > MAX_DEMO_STEPS:
        parser.error(
            f"--tasks {ns.tasks} over --rounds {ns.rounds} is {ns.tasks // ns.rounds} tasks "
            f"a round; the most is {MAX_DEMO_STEPS} (raise --rounds or lower --tasks)"
        )
    config = _demo.DemoConfig(
        size=ns.size,
        align=ns.align,
        live=ns.live,
        tasks=ns.tasks,
        rounds=ns.rounds,
        seed=ns.seed,
    )
    progress = _demo.Progress(_demo.progress_steps(config), enabled=not ns.no_progress)
    try:
        result = _demo.run(config, progress)
    finally:
        progress.close()
    if ns.json:
        print(_demo.to_json(result))
    else:
        # a terminal narrower than the table gets it turned (rows are the measures)
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print(_demo.format_table(result, width))
        print(f"({result.seconds:.1f} s)")
    if ns.plot is not None:
        _demo.plot(result, ns.plot)
        print(f"plot written to {ns.plot}", file=sys.stderr)
    return 0


def _find_benchmarks() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "benchmarks"] + [p / "benchmarks" for p in here.parents[1:4]]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("bench_*.py")):
            return folder
    return None


def _cmd_bench(args: Sequence[str]) -> int:
    folder = _find_benchmarks()
    if folder is None:
        print(
            "kmemcache bench: no benchmarks found. They are not installed with the "
            "package: they live in the benchmarks/ folder of the kmemcache source "
            "repository. Run `kmemcache bench` from a checkout, or "
            "`python benchmarks/bench_alloc.py` there.",
            file=sys.stderr,
        )
        return 1
    runner = folder / "run_all.py"
    scripts = [runner] if runner.is_file() else sorted(folder.glob("bench_*.py"))
    status = 0
    for script in scripts:
        print(f"== {script.name} {' '.join(args)}".rstrip(), flush=True)
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *args], cwd=folder.parent)
        print(f"== {script.name}: exit {rc}, {time.perf_counter() - started:.1f} s", flush=True)
        status = status or rc
    return status


_NO_SITES = (
    "records no call sites: start it with KMEMCACHE_ALLOCINFO=1, or call "
    "kmemcache.allocinfo.start() in it"
)


def _cmd_slabinfo(ns: argparse.Namespace) -> int:
    sites: list[allocinfo.Site] | None = None
    if ns.pid is None:
        stats = all_stats()
        if ns.sites and allocinfo.is_tracing():
            sites = allocinfo.snapshot()
    else:
        data = _publish.read(ns.pid)
        if data is None:
            print(
                f"kmemcache slabinfo: process {ns.pid} does not publish its cache statistics "
                "(or is not running): start it with KMEMCACHE_PUBLISH=1, or call "
                "kmemcache.publish() in it",
                file=sys.stderr,
            )
            return 1
        stats = [SlabStats.from_dict(raw) for raw in data["caches"]]
        sites = _publish.sites_of(data)
    if ns.sites and sites is None:
        who = "this command's own process" if ns.pid is None else f"process {ns.pid}"
        print(f"kmemcache slabinfo: {who} {_NO_SITES}", file=sys.stderr)
    if ns.json:
        caches = [dataclasses.asdict(s) for s in stats]
        out: dict[str, object] = {"version": "2.1", "caches": caches}
        if ns.pid is not None:
            out["pid"] = ns.pid
        if ns.sites:
            out["sites"] = None if sites is None else [dataclasses.asdict(s) for s in sites]
        print(json.dumps(out, indent=2))
    else:
        sys.stdout.write(format_slabinfo(stats) if ns.pid is not None else slabinfo())
        if ns.sites and sites is not None:
            lines = ["# call sites of live objects, largest first", _top.SITES_HEADER]
            lines += [_top.site_line(site) for site in sites]
            sys.stdout.write("\n".join(lines) + "\n")
    if ns.pid is None and not stats:
        print(
            "kmemcache slabinfo: this command's own process has no caches; name a process "
            "that publishes its statistics with --pid PID (KMEMCACHE_PUBLISH=1 or "
            "kmemcache.publish() in it), or see every shared and published cache with "
            "kmemcache top",
            file=sys.stderr,
        )
    return 0


def _quit_pressed(seconds: float) -> bool:
    """Wait ``seconds`` for a key on the terminal; True when it was q."""
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    return bool(ready) and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q")


def _cmd_top(ns: argparse.Namespace) -> int:
    if ns.json:
        docs = _publish.published()
        found = _top.sort_rows(_top.rows(docs), ns.sort)
        sites = _top.process_sites(docs) if ns.sites else None
        print(json.dumps(_top.to_json(found, sites=sites), indent=2))
        return 0
    live = sys.stdout.isatty() and not ns.once
    if live and sys.stdin.isatty():
        # keys arrive one by one, unechoed, so that q quits as in top and slabtop
        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setcbreak(sys.stdin.fileno())
        try:
            return _top_loop(ns, live, keys=True)
        finally:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    return _top_loop(ns, live, keys=False)


def _top_loop(ns: argparse.Namespace, live: bool, keys: bool) -> int:
    frames = 1 if ns.once else ns.iterations
    shown = 0
    while True:
        docs = _publish.published()
        frame = _top.render(_top.sort_rows(_top.rows(docs), ns.sort))
        if ns.sites:
            frame += _top.render_sites(_top.process_sites(docs))
        if live:
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: one screen, redrawn
        elif shown:
            sys.stdout.write("\n")
        sys.stdout.write(frame + "\n")
        sys.stdout.flush()
        shown += 1
        if frames is not None and shown >= frames:
            return 0
        if keys:
            if _quit_pressed(ns.interval):
                return 0
        else:
            time.sleep(ns.interval)


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    if ns.command == "bench":
        return _cmd_bench(extra)
    # a subcommand's errors show that subcommand's usage
    own: argparse.ArgumentParser = getattr(ns, "own_parser", parser)
    if extra:
        own.error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.command == "demo":
        return _cmd_demo(own, ns)
    if ns.command == "slabinfo":
        return _cmd_slabinfo(ns)
    if ns.command == "top":
        return _cmd_top(ns)
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kmemcache`` command; return its exit status.

    Output into a closed pipe (``kmemcache demo | head -1``) ends quietly
    with status 141, as a program killed by SIGPIPE; Ctrl-C ends with one
    line on stderr and status 130.
    """
    try:
        status = _run(argv)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        print("kmemcache: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
