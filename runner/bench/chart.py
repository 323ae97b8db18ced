"""The ratio chart (PNG and SVG), drawn by matplotlib: horizontal bars on a log axis around 1x.

Bars start at the 1x line and grow right when the first side is slower, left when it is faster; the log
axis keeps 1.5x and 40x readable on one chart. matplotlib is an optional extra (``pip install
'runner[bench]'``; scripts/setup installs it): the CLI and the engine never need it, and without it ``runner
bench`` says how to get charts (:data:`INSTALL_HINT`) instead of drawing a worse one. It is imported only
when a chart is drawn, with the non-interactive Agg backend and a Figure of its own (no pyplot state).
"""

from __future__ import annotations

import os

Rows = list[tuple[str, list[tuple[str, float]]]]

COLORS = {"vm/native": "#3465a4", "vm/native inner": "#f59734", "runner/runc": "#4e9a06"}
LEGEND = {"vm/native": "VM / native, whole runner run", "vm/native inner": "VM / native, inside the container",
          "runner/runc": "runner / runc (native start)"}
INSTALL_HINT = ("charts need matplotlib: pip install 'runner[bench]' (scripts/setup installs it into .venv), "
                "then run runner bench --output DIR again")
WIDTH_IN, DPI = 10.0, 100  # a 1000-pixel-wide PNG: readable in a README and on a laptop screen


def available() -> bool:
    """Whether matplotlib can be imported (without importing it: that costs ~0.3 s)."""
    import importlib.util
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules (how tests hide it)
        return False


def _figure(rows: Rows, title: str, subtitle: str):
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from runner.bench.report import fmt_ratio

    series = list(dict.fromkeys(name for _, bars in rows for name, _ in bars))
    most = max(len(bars) for _, bars in rows)
    band = 0.8 / most  # a bar's height: a row's bars share 0.8 of its height, centred on its label
    fig = Figure(figsize=(WIDTH_IN, 1.9 + 0.32 * sum(max(1.5, len(bars)) for _, bars in rows)), dpi=DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    values = [v for _, bars in rows for _, v in bars]
    for name in series:
        ys, lefts, widths, labels = [], [], [], []
        for row, (_, bars) in enumerate(rows):
            for slot, (bar_name, value) in enumerate(bars):
                if bar_name == name:
                    ys.append(row + band * (slot - (len(bars) - 1) / 2))
                    lefts.append(min(1.0, value))
                    widths.append(abs(value - 1.0))
                    labels.append(fmt_ratio(value))
        drawn = ax.barh(ys, widths, left=lefts, height=band * 0.85, color=COLORS.get(name),
                        label=LEGEND.get(name, name))
        ax.bar_label(drawn, labels=labels, padding=4, fontsize=9)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.6, hi * 2.2)  # room for the value labels right of the longest bar
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="#444444", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()  # first workload on top, as in the table
    ax.grid(axis="x", color="#e1e1e1")
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_xlabel("time ratio (log scale; right of 1x: the first side is slower)")
    fig.legend(loc="outside lower center", ncols=len(series), fontsize=9, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=13, fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, loc="left", fontsize=9, color="#555555")
    return fig


def write_charts(rows: Rows, directory: str, title: str, subtitle: str = "",
                 basename: str = "ratios") -> list[str]:
    """Write ``<basename>.png`` and ``.svg`` into ``directory``; their paths (none when no row has a ratio).
    Needs matplotlib (see :func:`available`)."""
    if not rows:
        return []
    import matplotlib
    matplotlib.use("Agg")  # no display, no GUI toolkit: files only
    fig = _figure(rows, title, subtitle)
    paths = [os.path.join(directory, basename + ext) for ext in (".png", ".svg")]
    for path in paths:
        fig.savefig(path, dpi=DPI, metadata={"Software": None} if path.endswith(".png") else {"Date": None})
    return paths
