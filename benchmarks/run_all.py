"""Run every benchmark; write one JSON, a Markdown report and PNG plots.

    python benchmarks/run_all.py                       # all of them, into benchmarks/results/
    python benchmarks/run_all.py --out DIR             # somewhere else
    python benchmarks/run_all.py --quick               # tiny counts: checks everything runs
    python benchmarks/run_all.py --only alloc,memory   # some of them

Every ``benchmarks/bench_*.py`` runs in its own process with ``--json``, one after
the other (the timing benchmarks must not share the CPUs with each other). Their
tables are printed as they finish; then ``results.json`` (each benchmark's JSON,
the targets, the version and commit measured, for tracking across versions),
``report.md`` (the tables and target lines) and the plots (with matplotlib; a
message says so when it is missing) are written, and every target's PASS/MISS line
is printed again at the end. A full run (neither --quick nor --only) also
rewrites the docs' benchmarks page, docs/benchmarks.md, from its results, with the
plots it shows in docs/bench/ (--docs-page PATH writes the page elsewhere, or for
any run; --docs-page "" not at all). Targets are reported, never asserted: the exit status
is 1 only when a benchmark failed to run.

The default run takes a few minutes and needs about 3 GB of free memory (the
memory benchmark keeps up to 1e7 objects alive); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _harness as h
import _plots

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Run in this order; any other bench_*.py follows in name order.
ORDER = ("alloc", "numpy", "memory", "scaling", "bulk", "threads", "engine", "shared", "transport")


def discover() -> list[str]:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def run_one(name: str, out_dir: Path, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run one benchmark; return its JSON (or a failure record) and its stdout."""
    json_path = out_dir / f"{name}.json"
    if json_path.exists():
        json_path.unlink()
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(json_path)]
    if args.quick:
        cmd.append("--quick")
    if args.no_progress:
        cmd.append("--no-progress")
    started = time.perf_counter()
    # stderr (progress) goes straight to the terminal; stdout is the report
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not json_path.exists():
        return {
            "status": "failed",
            "exit": proc.returncode,
            "seconds": seconds,
            "note": f"bench_{name}.py exited with {proc.returncode}",
        }, proc.stdout
    data = json.loads(json_path.read_text())
    data.setdefault("status", "ok")
    data["seconds"] = seconds
    return data, proc.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--out",
        default=str(HERE / "results"),
        help="folder for results.json, report.md, each benchmark's JSON and the plots "
        "(default: benchmarks/results/)",
    )
    parser.add_argument(
        "--plots-dir",
        help="folder for the PNG plots (default: --out, or docs/bench/ beside the docs page)",
    )
    parser.add_argument(
        "--docs-page",
        help="write the docs' benchmarks page here (default: docs/benchmarks.md on a full "
        "run, none with --quick or --only; '' for none)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it runs")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        wanted = [n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.docs_page is None:
        full = not args.quick and not args.only
        page = ROOT / "docs" / "benchmarks.md" if full else None
    else:
        page = Path(args.docs_page).resolve() if args.docs_page else None
    if args.plots_dir:
        plots_dir = Path(args.plots_dir).resolve()
    else:
        plots_dir = page.parent / "bench" if page is not None else out_dir

    command = "python benchmarks/run_all.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    started = time.perf_counter()
    results: dict[str, Any] = {}
    reports: list[str] = []
    printed: dict[str, str] = {}
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] bench_{name}.py ...", file=sys.stderr, flush=True)
        data, stdout = run_one(name, out_dir, args)
        results[name] = data
        print(f"\n### {name}\n", flush=True)
        print(stdout.rstrip() if stdout.strip() else f"({data.get('note', 'no output')})")
        reports.append(f"### {name}\n\n{stdout.rstrip()}\n")
        printed[name] = stdout
        if data["status"] != "ok":
            print(f"\nbench_{name}.py FAILED: {data['note']}", flush=True)

    targets = [
        {**t, "benchmark": name} for name, data in results.items() for t in data.get("targets", [])
    ]
    env = h.environment(["kmemcache", "numpy", "pyfftw", "pyarrow", "matplotlib"])
    env["clock"] = None  # each benchmark says how it timed
    combined = {
        "format": 1,
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "quick": args.quick,
        "git": git_state(),
        "environment": env,
        "targets": targets,
        "benchmarks": results,
    }
    h.write_json(str(out_dir / "results.json"), combined)

    summary = ["### Targets", "", *[f"{h.target_line(t)} [{t['benchmark']}]" for t in targets]]
    failed = [n for n, d in results.items() if d["status"] != "ok"]
    if failed:
        summary += ["", f"Failed to run: {', '.join(failed)}"]
    header = (
        f"`{command}`, {combined['date']}, commit "
        f"{(combined['git']['commit'] or 'unknown')[:12]}"
        f"{' (with local changes)' if combined['git']['dirty'] else ''}, "
        f"{combined['seconds']:.0f} s. " + h.environment_sentence(env)
    )
    (out_dir / "report.md").write_text(
        "\n".join([header, "", *reports, *summary]) + "\n", encoding="utf-8"
    )

    print("\n" + "\n".join(summary))
    written: list[Path] = []
    if args.no_plots:
        pass
    elif not _plots.available():
        print(
            "\nmatplotlib is not installed, so no plots were drawn: "
            "pip install matplotlib (or pip install -e '.[bench]').",
            flush=True,
        )
    else:
        written = _plots.plot_all(results, plots_dir)
    if page is not None:
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(h.docs_page(combined, printed, written, page), encoding="utf-8")
        written.insert(0, page)
    print(f"\nwritten: {out_dir / 'results.json'}, {out_dir / 'report.md'}", end="")
    print("".join(f", {p}" for p in written) + f" ({combined['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
