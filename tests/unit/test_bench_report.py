"""runner bench's table (rich and Markdown) and chart files (PNG, SVG by matplotlib): rendering, no containers."""

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


def test_chart_files_written_and_valid(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart is drawn by matplotlib, the optional 'bench' extra")
    result = sample_result()
    paths = chart.write_charts(report.chart_rows(result), str(tmp_path), "runner bench: time ratios",
                               "quick mode; VM accelerator TCG")
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["png", "svg"]
    chunks = _png_chunks((tmp_path / "ratios.png").read_bytes())
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width == chart.WIDTH_IN * chart.DPI and 250 < height < 1000
    from PIL import Image  # matplotlib's own dependency: decodes the PNG's filtered rows
    with Image.open(tmp_path / "ratios.png") as img:
        counts = {color: n for n, color in img.convert("RGB").getcolors(maxcolors=1 << 24)}
    for name in ("vm/native", "vm/native inner", "runner/runc"):  # each series' bars, in its colour
        assert counts.get(tuple(bytes.fromhex(chart.COLORS[name][1:])), 0) > 500, name
    svg = (tmp_path / "ratios.svg").read_text()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    for label in ("CPU-bound", "8.00x", "15.0x", "runner bench: time ratios", "VM / native, whole runner run"):
        assert label in svg, label


def test_without_matplotlib_there_is_a_hint_not_a_chart(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert chart.available() is False
    assert "pip install 'runner[bench]'" in chart.INSTALL_HINT


def test_no_ratios_no_chart(tmp_path):
    assert chart.write_charts([], str(tmp_path), "t") == []
    assert list(tmp_path.iterdir()) == []


def test_result_from_json_file_renders(tmp_path):
    import json
    path = tmp_path / "r.json"
    path.write_text(json.dumps(sample_result().to_dict()))
    again = BenchResult.from_dict(json.loads(path.read_text()))
    assert report.render_markdown(again) == report.render_markdown(sample_result())
