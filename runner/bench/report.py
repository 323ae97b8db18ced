"""Rendering a BenchResult for people: a rich table, or Markdown (for the README and issues).

Pure: builds rows and strings, prints nothing. Cells show the median with min-max; ratios are time ratios
(VM time / native time; >1 means the VM is slower). Unavailable and failed contenders say so in their
cell and give the reason in the notes under the table.
"""

from __future__ import annotations

import io

from runner.bench.results import BenchResult, Measurement, Stats, WorkloadResult
from runner.bench.sysinfo import human_bytes


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def fmt_stats(stats: Stats | None, spread: bool = True, payload: int | None = None, sep: str = " ") -> str:
    """``median [min-max] N MB/s``; ``sep`` joins the parts (a newline for the rich table)."""
    if stats is None:
        return "-"
    parts = [fmt_seconds(stats.median)]
    if spread and stats.n > 1:
        parts.append(f"[{fmt_seconds(stats.min)}-{fmt_seconds(stats.max)}]")
    if payload and stats.median > 0:
        parts.append(f"{payload / stats.median / 1e6:,.0f} MB/s")
    return sep.join(parts)


def cell(m: Measurement | None, series: str, spread: bool = True, payload: int | None = None,
         sep: str = " ") -> str:
    if m is None:
        return ""
    if m.status != "ok":
        return m.status
    return fmt_stats(getattr(m, series), spread, payload, sep)


def size_text(w: WorkloadResult) -> str:
    return ", ".join(f"{v} {k}" for k, v in w.size.items()) or "-"


def columns(result: BenchResult) -> list[str]:
    """The table's headers: a backend's columns only when it was measured, ratios only with both."""
    both = "native" in result.backends and "vm" in result.backends
    cols = ["Workload", "Size"]
    cols += [b for b in ("native", "vm") if b in result.backends]
    cols += ["vm/native"] if both else []
    cols += [f"inside: {b}" for b in ("native", "vm") if b in result.backends]
    cols += ["inside vm/native"] if both else []
    return cols


def rows(result: BenchResult, spread: bool = True, sep: str = " ") -> list[tuple[str, ...]]:
    """The table's rows (strings, matching :func:`columns`), one per workload plus one for runc."""
    cols = columns(result)
    out = []
    for w in result.workloads:
        m = w.measurements
        ratios = w.ratios()
        values = {"Workload": w.title, "Size": size_text(w),
                  "vm/native": fmt_ratio(ratios.get("vm/native")),
                  "inside vm/native": fmt_ratio(ratios.get("vm/native inner"))}
        # A throughput from the wall time only where the wall time is the transfer itself (the host's
        # fetch); elsewhere it would include container start and mislead.
        wall_payload = w.bytes if w.key == "net" else None
        for b in ("native", "vm"):
            values[b] = cell(m.get(b), "wall", spread, wall_payload, sep) if b in m else "n/a"
            values[f"inside: {b}"] = cell(m.get(b), "inner", spread, w.bytes, sep) if b in m else "n/a"
        out.append(tuple(values.get(c, "") for c in cols))
        if "runc" in m:
            runc = {"Workload": "  runc, same rootfs", "Size": "-",
                    "native": cell(m["runc"], "wall", spread, None, sep),
                    "inside: native": "runner/runc " + fmt_ratio(ratios.get("runner/runc"))}
            out.append(tuple(runc.get(c, "") for c in cols))
    return out


def notes(result: BenchResult) -> list[str]:
    """Why each unavailable or failed contender has no number."""
    out = []
    for w in result.workloads:
        for name, m in w.measurements.items():
            if m.status != "ok":
                out.append(f"{w.title} on {name}: {m.status}: {m.reason}")
    return out


def environment_lines(result: BenchResult) -> list[str]:
    env = result.environment
    host = env.get("host", {})
    lines = [f"runner {env.get('runner_version', '?')}, {result.mode} mode: {result.warmup} warm-up, "
             f"{result.runs} measured run(s) per contender, interleaved",
             f"host: {host.get('cpu_model', '?')}, {host.get('cpu_count', '?')} CPU(s), "
             f"{human_bytes(host.get('memory_bytes'))} RAM; {host.get('os', '?')}, kernel {host.get('kernel', '?')}"]
    if host.get("qemu"):
        lines.append(f"qemu: {host['qemu']}")
    native = env.get("native")
    if native:
        lines.append(f"native: runtime {native.get('runtime', '?')}, cgroups {native.get('cgroups', '?')}"
                     if "error" not in native else f"native: {native['error']}")
    vm = env.get("vm")
    if vm:
        if "error" in vm:
            lines.append(f"vm: {vm['error']}")
        else:
            machine = vm.get("machine") or {}
            accel = (machine.get("accel") or "?").upper()
            why = f" ({machine['accel_reason']})" if machine.get("accel_reason") and accel == "TCG" else ""
            lines.append(f"vm: accelerator {accel}{why}; guest kernel {vm.get('kernel', '?')}, "
                         f"{machine.get('cpus', '?')} vCPU(s), {machine.get('memory_mib', '?')} MiB, "
                         f"guest image v{vm.get('image_version', '?')}")
    runc = env.get("runc")
    if runc and runc.get("version"):
        lines.append(f"runc: {runc['version']}")
    return lines


def accelerator(result: BenchResult) -> str | None:
    vm = result.environment.get("vm") or {}
    accel = (vm.get("machine") or {}).get("accel")
    return accel.upper() if accel else None


LEGEND = ("Times are medians [min-max] of the whole `runner run` as the host sees it; 'inside' is the same "
          "work timed inside the container (adjtimex), so wall minus inside is runner's transport and "
          "container set-up. Ratios are time ratios of medians: 2.00x means twice as long.")


def render_rich(result: BenchResult, width: int | None = None) -> str:
    """The table and its notes as text, with rich's box drawing (``width`` for tests)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runner bench: native vs VM", title_justify="left")
    for i, header in enumerate(columns(result)):
        table.add_column(header, justify="left" if i < 2 else "right", overflow="fold")
    for row in rows(result, sep="\n"):
        table.add_row(*row)
    buf = io.StringIO()
    console = Console(file=buf, width=width or 160, force_terminal=False, color_system=None, highlight=False)
    for line in environment_lines(result):
        console.print(line, markup=False)
    console.print(table)
    for line in notes(result):
        console.print(f"note: {line}", markup=False)
    console.print(LEGEND, markup=False)
    return buf.getvalue()


def render_markdown(result: BenchResult) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")
    out = [f"- {esc(line)}" for line in environment_lines(result)]
    cols = columns(result)
    out += ["", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|"]
    for row in rows(result):
        out.append("| " + " | ".join(esc(c) for c in row) + " |")
    note_lines = notes(result)
    if note_lines:
        out.append("")
        out += [f"- {esc(line)}" for line in note_lines]
    return "\n".join(out) + "\n"


def chart_rows(result: BenchResult) -> list[tuple[str, list[tuple[str, float]]]]:
    """(label, [(series, ratio), ...]) per workload that has a ratio, for chart.py."""
    out = []
    for w in result.workloads:
        ratios = w.ratios()
        series = [(name, ratios[name]) for name in ("vm/native", "vm/native inner") if name in ratios]
        if series:
            out.append((w.title, series))
        if "runner/runc" in ratios:
            out.append((f"{w.title}: runner/runc", [("runner/runc", ratios["runner/runc"])]))
    return out
