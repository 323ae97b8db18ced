"""`runner bench`: native vs VM overhead, measured through the real CLI, as a table, JSON and a chart.

The work is in runner.bench (suite: running; results: statistics and the JSON schema; report: table;
chart: PNG and SVG with matplotlib, an optional extra). Progress goes to stderr so that ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import json
import os
import sys

import typer

BACKENDS = ("native", "vm", "both")


def bench(
    backend: str = typer.Option(None, "--backend", metavar="NAME",
                                help="native, vm or both (default: both on Linux, vm elsewhere); one side "
                                     "alone gives no VM/native ratios"),
    runs: int = typer.Option(None, "--runs", min=1, help="measured runs per contender (default 5; --quick: 3)"),
    warmup: int = typer.Option(None, "--warmup", min=0, help="unmeasured warm-up runs (default 2; --quick: 1)"),
    quick: bool = typer.Option(False, "--quick", help="short run: 1 warm-up, 3 runs, small sizes"),
    workload: list[str] = typer.Option(None, "--workload", "-w", metavar="KEY",
                                       help="only these workloads (repeatable): start, cpu, fork, memory, "
                                            "io-rootfs, io-bind, net, cold-start"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON (schema_version 1)"),
    markdown: bool = typer.Option(False, "--markdown", help="print the table as Markdown"),
    output: str = typer.Option(None, "--output", "-o", metavar="DIR",
                               help="write results.json, results.md, ratios.png and ratios.svg into DIR"),
    no_runc: bool = typer.Option(False, "--no-runc", help="skip the runc start-latency anchor"),
):
    """Measure native vs VM overhead: start latency, CPU, fork+exec, memory, file and network I/O, VM cold start."""
    from rich.console import Console

    from runner.bench import report
    from runner.bench.results import BenchResult
    from runner.bench.suite import Suite
    from runner.cli.context import STATE
    from runner.errors import UsageError

    choice = backend or STATE.backend_flag or ("both" if sys.platform.startswith("linux") else "vm")
    if choice not in BACKENDS:
        raise UsageError(f"unknown backend {choice!r} for bench", hint="use --backend native, vm or both")
    backends = ["native", "vm"] if choice == "both" else [choice]
    runs = runs or (3 if quick else 5)
    warmup = warmup if warmup is not None else (1 if quick else 2)
    err = Console(stderr=True, highlight=False)

    def progress(message: str) -> None:
        err.print(message, style="dim", markup=False, soft_wrap=True)

    try:
        suite = Suite(backends, runs, warmup, quick=quick, machine=STATE.machine, keys=workload or None,
                      progress=progress, use_runc=not no_runc)
    except ValueError as exc:
        raise UsageError(str(exc), hint="see runner bench --help") from exc
    err.print(f"runner bench: {', '.join(backends)}; {len(suite.workloads)} workload(s), {warmup} warm-up and "
              f"{runs} run(s) each{' (quick)' if quick else ''}", markup=False)
    result: BenchResult = suite.run()

    files: list[str] = []
    if output:
        os.makedirs(output, exist_ok=True)
        path = os.path.join(output, "results.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2)
        files.append(path)
        path = os.path.join(output, "results.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(report.render_markdown(result))
        files.append(path)
        files += _charts(result, output, err)

    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif markdown:
        print(report.render_markdown(result), end="")
    else:
        print(report.render_rich(result, width=Console().width if sys.stdout.isatty() else 160), end="")
    for path in files:
        err.print(f"wrote {path}", markup=False)
    if not output:
        err.print("hint: --output DIR writes results.json and the ratio chart (PNG, SVG)", style="dim", markup=False)


def _charts(result, output: str, err) -> list[str]:
    """The ratio chart files, or a line saying why there are none (no ratios, or no matplotlib)."""
    from runner.bench import chart, report
    rows = report.chart_rows(result)
    if not rows:
        err.print("no ratios to chart (one backend and no runc anchor)", markup=False)
        return []
    if not chart.available():
        err.print(chart.INSTALL_HINT, markup=False)
        return []
    accel = report.accelerator(result)
    subtitle = f"{result.mode} mode, {result.runs} runs, medians" + (f"; VM accelerator {accel}" if accel else "")
    return chart.write_charts(rows, output, "runner bench: time ratios", subtitle)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
