"""runner bench's table (rich and Markdown) and chart files (PNG, SVG): pure rendering, no containers."""

import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from runner.bench import chart, report
from runner.bench.results import BenchResult
from tests.unit.test_bench_results import sample_result


def test_formatting():
    assert report.fmt_seconds(0.1234) == "123 ms"
    assert report.fmt_seconds(0.0042) == "4.2 ms"
    assert report.fmt_seconds(12.345) == "12.35 s"
    assert report.fmt_ratio(None) == "-"
    assert report.fmt_ratio(2.345) == "2.35x" and report.fmt_ratio(23.45) == "23.4x"


def test_rich_table_has_every_workload_ratio_and_reason():
    text = report.render_rich(sample_result(), width=200)
    for expected in ("Start latency", "runc, same rootfs", "runner/runc 4.00x", "CPU-bound", "8.00x", "15.0x",
                     "unavailable", "failed", "bind mounts are not supported", "run 2: boom",
                     "accelerator TCG", "Test CPU", "2 CPU(s)", "2.0 GiB", "guest kernel 6.1.0-guest",
                     "VM cold start", "runc version 1.1.5", "vm/native"):
        assert expected in text, expected
    # throughput only where it means something: the in-container time of a sized workload
    assert "3,355 MB/s" in text


def test_single_backend_table_has_no_ratio_columns():
    r = sample_result()
    r.backends = ["native"]
    for w in r.workloads:
        w.measurements.pop("vm", None)
    cols = report.columns(r)
    assert cols == ["Workload", "Size", "native", "inside: native"]
    assert all(len(row) == len(cols) for row in report.rows(r))
    md = report.render_markdown(r)
    assert "| Workload | Size | native | inside: native |" in md and "vm/native" not in md


def test_markdown_table_is_well_formed():
    md = report.render_markdown(sample_result())
    table = [line for line in md.splitlines() if line.startswith("|")]
    widths = {line.count("|") - line.count("\\|") for line in table}
    assert len(widths) == 1 and len(table) == 2 + 6  # header, rule, 5 workloads + runc
    assert "- VM cold start on native" not in md
    assert "File I/O, bind mount on vm: unavailable" in md


def test_chart_rows():
    rows = report.chart_rows(sample_result())
    labels = [label for label, _ in rows]
    assert labels == ["Start latency", "Start latency: runner/runc", "CPU-bound"]
    assert rows[2][1] == [("vm/native", pytest.approx(8.0)), ("vm/native inner", pytest.approx(15.0))]


def _png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_png_encoder():
    png = chart.encode_png(2, 1, bytes([255, 0, 0, 0, 0, 255]))
    chunks = _png_chunks(png)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (2, 1, 8, 2, 0, 0, 0)
    assert zlib.decompress(chunks[1][1]) == b"\x00" + bytes([255, 0, 0, 0, 0, 255])
    with pytest.raises(ValueError):
        chart.encode_png(2, 2, b"\x00" * 3)


def test_font_glyphs_are_5x7():
    for ch, rows in chart.FONT.items():
        assert len(rows) == 7 and all(len(r) == 5 and set(r) <= {"#", "."} for r in rows), ch
    assert chart.glyph("a") == chart.FONT["A"] and chart.glyph("x", "5") == chart.FONT["x"]
    assert chart.glyph("x", "e") == chart.FONT["X"]
    assert chart.glyph("\u00e9") == chart.FONT["?"]


def test_chart_files_written_and_valid(tmp_path):
    result = sample_result()
    paths = chart.write_charts(report.chart_rows(result), str(tmp_path), "runner bench: time ratios",
                               "quick mode; VM accelerator TCG")
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["png", "svg"]
    png = (tmp_path / "ratios.png").read_bytes()
    chunks = _png_chunks(png)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width > 300 and height > 100
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    assert bytes(chart.COLORS["vm/native"]) in raw  # the bars were drawn
    root = ET.fromstring((tmp_path / "ratios.svg").read_text())
    assert root.tag.endswith("svg")
    texts = [el.text for el in root.iter() if el.tag.endswith("text")]
    assert "CPU-bound" in texts and "8.00x" in texts and "15.0x" in texts
    assert sum(1 for el in root.iter() if el.tag.endswith("rect")) >= 1 + 4


def test_no_ratios_no_chart(tmp_path):
    assert chart.write_charts([], str(tmp_path), "t") == []
    assert list(tmp_path.iterdir()) == []


def test_layout_handles_faster_and_huge_ratios():
    lay = chart.layout([("fast", [("vm/native", 0.3)]), ("slow", [("vm/native", 900.0)])], "t")
    fast, slow = lay.bars
    assert fast.x1 == lay.one_x and fast.x0 < lay.one_x  # grows left of 1x
    assert slow.x0 == lay.one_x and slow.x1 > lay.one_x
    assert all(0 <= b.x0 <= b.x1 <= lay.width for b in lay.bars)
    assert chart.nice_ticks(0.5, 20) == [0.5, 1, 2, 5, 10, 20]


def test_result_from_json_file_renders(tmp_path):
    import json
    path = tmp_path / "r.json"
    path.write_text(json.dumps(sample_result().to_dict()))
    again = BenchResult.from_dict(json.loads(path.read_text()))
    assert report.render_markdown(again) == report.render_markdown(sample_result())
