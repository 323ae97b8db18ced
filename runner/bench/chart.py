"""The ratio chart, as PNG and SVG, with no plotting library: horizontal bars on a log axis around 1x.

One layout (:func:`layout`, pure geometry) drawn twice: by a tiny raster (RGB canvas, a built-in 5x7 bitmap
font, a PNG written with zlib + struct) and as SVG text. Bars start at the 1x line and grow right when the
first side is slower, left when it is faster; the log axis keeps 1.5x and 40x readable on one chart.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from xml.sax.saxutils import escape

Rows = list[tuple[str, list[tuple[str, float]]]]

COLORS = {"vm/native": (52, 101, 164), "vm/native inner": (245, 151, 52), "runner/runc": (78, 154, 6)}
LEGEND = {"vm/native": "VM / native, whole runner run", "vm/native inner": "VM / native, inside the container",
          "runner/runc": "runner / runc (native start)"}
WHITE, BLACK, GRID, AXIS = (255, 255, 255), (30, 30, 30), (225, 225, 225), (120, 120, 120)

# 5x7 glyphs, '#' = ink. Lower-case letters are drawn as capitals, except 'x' after a digit ("2.5x").
_FONT_SRC = {
    " ": ".....|.....|.....|.....|.....|.....|.....",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "###..|#..#.|#...#|#...#|#...#|#..#.|###..",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    ".": ".....|.....|.....|.....|.....|.##..|.##..", ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....", ";": ".....|.##..|.##..|.....|.##..|..#..|.#...", "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....", "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.", ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.", "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##", "=": ".....|.....|#####|.....|#####|.....|.....",
    "_": ".....|.....|.....|.....|.....|.....|#####", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....",
}
FONT = {ch: src.split("|") for ch, src in _FONT_SRC.items()}
SCALE = 2
CHAR_W, CHAR_H = 6 * SCALE, 7 * SCALE  # advance (5 px glyph + 1 px gap) and height, scaled


def glyph(ch: str, prev: str = "") -> list[str]:
    """The glyph of ``ch``; a lower-case 'x' only right after a digit ("2.5x"), else capitals."""
    if ch == "x" and not prev.isdigit():
        ch = "X"
    return FONT.get(ch) or FONT.get(ch.upper()) or FONT["?"]


def text_width(text: str) -> int:
    return len(text) * CHAR_W


# -- layout -------------------------------------------------------------------------------------------------
@dataclass
class Bar:
    x0: int
    x1: int
    y: int
    h: int
    color: tuple[int, int, int]
    label: str
    label_x: int


@dataclass
class Layout:
    width: int
    height: int
    title: str
    subtitle: str
    texts: list[tuple[int, int, str, tuple[int, int, int]]]  # x, y (top), text, color
    bars: list[Bar]
    grid: list[int]                       # x of vertical grid lines
    one_x: int                            # x of the 1x line
    plot_top: int
    plot_bottom: int
    legend: list[tuple[int, int, tuple[int, int, int], str]]


def nice_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    e = math.floor(math.log10(lo)) - 1
    while True:
        for m in (1, 2, 5):
            t = m * 10.0 ** e
            if t > hi * 1.0001:
                return ticks
            if t >= lo * 0.9999:
                ticks.append(t)
        e += 1


def tick_label(t: float) -> str:
    return (f"{t:g}" if t < 1 else f"{t:.0f}") + "x"


def layout(rows: Rows, title: str, subtitle: str = "") -> Layout:
    values = [v for _, series in rows for _, v in series if v > 0]
    lo_v, hi_v = min(values + [1.0]), max(values + [2.0])
    ticks_all = [m * 10.0 ** e for e in range(-3, 6) for m in (1, 2, 5)]
    lo = max([t for t in ticks_all if t <= lo_v] or [ticks_all[0]])
    hi = min([t for t in ticks_all if t >= hi_v * 1.15] or [ticks_all[-1]])
    pad, bar_h, gap = 16, 16, 10
    label_w = max([text_width(label) for label, _ in rows] + [text_width("Workload")]) + 2 * pad
    plot_w = 560
    value_w = text_width("000.0x") + pad
    width = label_w + plot_w + value_w + pad
    top = pad + CHAR_H + (CHAR_H + 8 if subtitle else 0) + 2 * pad

    def x_of(v: float) -> int:
        v = min(max(v, lo), hi)
        return label_w + round((math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) * plot_w)

    texts: list = [(pad, pad, title, BLACK)]
    if subtitle:
        texts.append((pad, pad + CHAR_H + 8, subtitle, AXIS))
    bars: list[Bar] = []
    y = top
    for label, series in rows:
        block_h = len(series) * bar_h + (len(series) - 1) * 2
        texts.append((pad, y + (block_h - CHAR_H) // 2, label, BLACK))
        for name, v in series:
            x0, x1 = sorted((x_of(1.0), x_of(v)))
            x1 = max(x1, x0 + 1)
            vlabel = tick_label(v) if v >= 100 else (f"{v:.2f}x" if v < 10 else f"{v:.1f}x")
            label_x = max(x_of(v), x_of(1.0)) + 6
            bars.append(Bar(x0, x1, y, bar_h, COLORS.get(name, AXIS), vlabel, label_x))
            y += bar_h + 2
        y += gap
    plot_bottom = y
    ticks = nice_ticks(lo, hi)
    grid = [x_of(t) for t in ticks]
    for t, gx in zip(ticks, grid):
        lab = tick_label(t)
        texts.append((gx - text_width(lab) // 2, plot_bottom + 6, lab, AXIS))
    y = plot_bottom + 6 + CHAR_H + pad
    legend = []
    names = [n for n in COLORS if any(n == s for _, series in rows for s, _ in series)]
    for name in names:
        legend.append((label_w, y, COLORS[name], LEGEND[name]))
        y += CHAR_H + 6
    height = y + pad
    return Layout(width, height, title, subtitle, texts, bars, grid, x_of(1.0), top - 6, plot_bottom, legend)


# -- PNG ----------------------------------------------------------------------------------------------------
class Canvas:
    def __init__(self, width: int, height: int, color=WHITE):
        self.width, self.height = width, height
        self.px = bytearray(bytes(color) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, color) -> None:
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.px[start:start + len(row)] = row

    def text(self, x: int, y: int, text: str, color=BLACK) -> None:
        for i, ch in enumerate(text):
            for gy, line in enumerate(glyph(ch, text[i - 1] if i else "")):
                for gx, bit in enumerate(line):
                    if bit == "#":
                        self.rect(x + i * CHAR_W + gx * SCALE, y + gy * SCALE, SCALE, SCALE, color)

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.px))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (rows top to bottom, 3 bytes a pixel), filter type 0 on every row."""
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError("pixel data does not match the size")
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def render_png(lay: Layout) -> bytes:
    c = Canvas(lay.width, lay.height)
    for gx in lay.grid:
        c.rect(gx, lay.plot_top, 1, lay.plot_bottom - lay.plot_top, GRID)
    for bar in lay.bars:
        c.rect(bar.x0, bar.y, bar.x1 - bar.x0, bar.h, bar.color)
        c.text(bar.label_x, bar.y + (bar.h - CHAR_H) // 2, bar.label, BLACK)
    c.rect(lay.one_x, lay.plot_top, 2, lay.plot_bottom - lay.plot_top, AXIS)
    for x, y, text, color in lay.texts:
        c.text(x, y, text, color)
    for x, y, color, text in lay.legend:
        c.rect(x, y, CHAR_H, CHAR_H, color)
        c.text(x + CHAR_H + 8, y, text, BLACK)
    return c.png()


# -- SVG ----------------------------------------------------------------------------------------------------
def _rgb(color) -> str:
    return "#%02x%02x%02x" % tuple(color)


def render_svg(lay: Layout) -> str:
    font = f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="{CHAR_H}"'
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" height="{lay.height}" '
           f'viewBox="0 0 {lay.width} {lay.height}">',
           f"<title>{escape(lay.title)}</title>",
           f'<rect width="{lay.width}" height="{lay.height}" fill="#ffffff"/>']
    for gx in lay.grid:
        out.append(f'<line x1="{gx}" y1="{lay.plot_top}" x2="{gx}" y2="{lay.plot_bottom}" stroke="{_rgb(GRID)}"/>')
    for bar in lay.bars:
        out.append(f'<rect x="{bar.x0}" y="{bar.y}" width="{bar.x1 - bar.x0}" height="{bar.h}" '
                   f'fill="{_rgb(bar.color)}"/>')
        out.append(f'<text x="{bar.label_x}" y="{bar.y + bar.h - 3}" {font}>{escape(bar.label)}</text>')
    out.append(f'<line x1="{lay.one_x + 1}" y1="{lay.plot_top}" x2="{lay.one_x + 1}" y2="{lay.plot_bottom}" '
               f'stroke="{_rgb(AXIS)}" stroke-width="2"/>')
    for x, y, text, color in lay.texts:
        out.append(f'<text x="{x}" y="{y + CHAR_H - 2}" fill="{_rgb(color)}" {font}>{escape(text)}</text>')
    for x, y, color, text in lay.legend:
        out.append(f'<rect x="{x}" y="{y}" width="{CHAR_H}" height="{CHAR_H}" fill="{_rgb(color)}"/>')
        out.append(f'<text x="{x + CHAR_H + 8}" y="{y + CHAR_H - 2}" {font}>{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_charts(rows: Rows, directory: str, title: str, subtitle: str = "",
                 basename: str = "ratios") -> list[str]:
    """Write ``<basename>.png`` and ``.svg`` into ``directory``; their paths (none when no row has a ratio)."""
    import os
    if not rows:
        return []
    lay = layout(rows, title, subtitle)
    png_path = os.path.join(directory, basename + ".png")
    svg_path = os.path.join(directory, basename + ".svg")
    with open(png_path, "wb") as f:
        f.write(render_png(lay))
    with open(svg_path, "w", encoding="utf-8") as f:
        f.write(render_svg(lay))
    return [png_path, svg_path]
