import sys

import pytest

from runner.bench.timing import Summary, interleave, time_command


def test_summary_statistics():
    s = Summary("x", [0.3, 0.1, 0.2])
    assert (s.median, s.min, s.max) == (0.2, 0.1, 0.3)
    assert "median    200.0 ms" in s.row()


def test_interleave_alternates_and_warms_up():
    order = []
    result = interleave({"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 2.0},
                        runs=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert result["a"].samples == [1.0] * 3 and result["b"].median == 2.0


def test_time_command_fails_loudly():
    assert time_command([sys.executable, "-c", "pass"]) > 0
    with pytest.raises(RuntimeError):
        time_command([sys.executable, "-c", "raise SystemExit(3)"])
