"""Docker-like pull/push progress: one line per layer, fed by the engine's progress events.

The engine (natively or in the VM) emits JSON dicts ``{"id", "status", "current", "total"}``; events
without ``id`` are whole-image messages ("Digest: ...", "Status: ..."). This module only renders them,
so the same events give the same output on both backends:

* on a terminal, a live block of per-layer lines with a ``[====>   ] 12.3MB/45.6MB`` bar (rich);
* otherwise (logs, CI), one plain line per status change, without the byte counters, as Docker does;
* in quiet mode, nothing.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

BAR_WIDTH = 50


def human_size(n: int) -> str:
    """Decimal units like Docker (``12.3MB``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    raise AssertionError("unreachable")


def bar(current: int, total: int) -> str:
    """``[=====>      ]  1.2MB/3.4MB``; just the count when the total is unknown."""
    if total <= 0:
        return human_size(current)
    filled = min(BAR_WIDTH, BAR_WIDTH * current // total)
    arrow = ">" if filled < BAR_WIDTH else ""
    body = "=" * filled + arrow
    return f"[{body.ljust(BAR_WIDTH)}] {human_size(current):>8}/{human_size(total)}"


def render_line(event: dict) -> str:
    """One layer's line as Docker shows it."""
    text = f"{event['id']}: {event.get('status', '')}"
    if event.get("status") in ("Downloading", "Pushing") and "current" in event:
        text += " " + bar(int(event.get("current") or 0), int(event.get("total") or 0))
        if event.get("speed"):  # the guest image pull reports its rate (large blobs, worth knowing)
            text += f" {human_size(int(event['speed']))}/s"
    return text


class ProgressDisplay:
    """A callable progress sink; use as a context manager around the pull/push.

    ``with ProgressDisplay(quiet=q) as show: engine.pull(..., progress=show)``.
    """

    def __init__(self, *, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=False, highlight=False)
        self._lines: dict[str, dict] = {}  # insertion order = display order
        self._live: Live | None = None
        self._last_status: dict[str, str] = {}

    def __enter__(self) -> "ProgressDisplay":
        if not self.quiet and self.console.is_terminal:
            self._live = Live(Group(), console=self.console, refresh_per_second=10, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._renderable(), refresh=True)
            self._live.__exit__(*exc)
            self._live = None

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        layer = event.get("id")
        status = str(event.get("status", ""))
        if not layer or status.startswith("Pulling from"):
            # Whole-image messages print once, above the live block when there is one.
            self.console.print(f"{layer}: {status}" if layer else status, markup=False, highlight=False)
            return
        if self._live is not None:
            self._lines[layer] = event
            self._live.update(self._renderable())
        elif self._last_status.get(layer) != status:
            # Without a terminal, print status changes only, never byte counters.
            self._last_status[layer] = status
            self.console.print(f"{layer}: {status}", markup=False, highlight=False)

    def _renderable(self) -> Group:
        return Group(*(Text(render_line(e)) for e in self._lines.values()))
