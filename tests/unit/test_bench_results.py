"""runner bench's statistics, ratios, JSON schema, interleaving and workload scripts: pure, no containers."""

import json

import pytest

from runner.bench.results import (SCHEMA_VERSION, BenchResult, Measurement, Stats, WorkloadResult, ratio,
                                  validate)
from runner.bench.suite import RunFailed, Sample, _reason, measure_interleaved
from runner.bench.workloads import (FULL, QUICK, parse_inner, run_args, runner_argv, select, timed,
                                    workloads)


def sample_result() -> BenchResult:
    start = WorkloadResult("start", "Start latency", measurements={
        "native": Measurement(wall=Stats([0.2, 0.1, 0.3])),
        "vm": Measurement(wall=Stats([1.0, 0.8, 1.2])),
        "runc": Measurement(wall=Stats([0.05, 0.05, 0.05]))})
    cpu = WorkloadResult("cpu", "CPU-bound", size={"iterations": 5000}, measurements={
        "native": Measurement(wall=Stats([0.5]), inner=Stats([0.1])),
        "vm": Measurement(wall=Stats([4.0]), inner=Stats([1.5]))})
    mem = WorkloadResult("memory", "Memory bandwidth", size={"MiB": 64}, bytes=64 << 20, measurements={
        "native": Measurement(wall=Stats([0.4]), inner=Stats([0.02])),
        "vm": Measurement.failed("run 2: boom")})
    bind = WorkloadResult("io-bind", "File I/O, bind mount", measurements={
        "native": Measurement(wall=Stats([0.6]), inner=Stats([0.1])),
        "vm": Measurement.unavailable("Error: bind mounts are not supported")})
    cold = WorkloadResult("cold-start", "VM cold start", measurements={
        "vm": Measurement(wall=Stats([20.0]), inner=Stats([21.0]))})
    return BenchResult(mode="quick", runs=3, warmup=1, backends=["native", "vm"], created="2026-05-07T00:00:00Z",
                       environment={"runner_version": "0.1.0",
                                    "host": {"cpu_model": "Test CPU", "cpu_count": 2, "memory_bytes": 2 << 30,
                                             "os": "Debian", "kernel": "6.1"},
                                    "vm": {"kernel": "6.1.0-guest", "image_version": "1",
                                           "machine": {"accel": "tcg", "accel_reason": "kvm: no", "cpus": 2,
                                                       "memory_mib": 2048}},
                                    "runc": {"version": "runc version 1.1.5"}},
                       workloads=[start, cpu, mem, bind, cold])


def test_stats_median_min_max():
    s = Stats([0.3, 0.1, 0.2, 0.4])
    assert (s.median, s.min, s.max, s.n) == (0.25, 0.1, 0.4, 4)
    assert Stats.of([None, 1.0, None, 3.0]).median == 2.0
    assert Stats.of([None]) is None
    with pytest.raises(ValueError):
        Stats([])


def test_ratio_of_medians_and_missing_sides():
    assert ratio(Stats([2.0, 4.0, 6.0]), Stats([1.0, 2.0, 3.0])) == 2.0
    assert ratio(None, Stats([1.0])) is None
    assert ratio(Stats([1.0]), None) is None
    assert ratio(Stats([1.0]), Stats([0.0])) is None


def test_workload_ratios_and_throughput():
    r = sample_result()
    start, cpu, mem, bind, cold = r.workloads
    assert start.ratios() == pytest.approx({"vm/native": 5.0, "runner/runc": 4.0})
    assert cpu.ratios() == pytest.approx({"vm/native": 8.0, "vm/native inner": 15.0})
    assert mem.ratios() == {} and bind.ratios() == {} and cold.ratios() == {}
    assert mem.throughput("native", "inner") == pytest.approx((64 << 20) / 0.02 / 1e6)
    assert mem.throughput("vm", "inner") is None and cpu.throughput("native") is None


def test_json_round_trip_and_schema():
    data = sample_result().to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    assert validate(json.loads(json.dumps(data))) == []
    assert data["workloads"][0]["ratios"]["runner/runc"] == pytest.approx(4.0)
    assert data["workloads"][1]["measurements"]["vm"]["inner"]["samples"] == [1.5]
    again = BenchResult.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data


def test_schema_violations_are_all_reported():
    data = sample_result().to_dict()
    data["schema_version"] = 99
    data["runs"] = "three"
    m = data["workloads"][1]["measurements"]
    m["vm"]["status"] = "maybe"
    m["native"]["wall"]["n"] = 7
    data["workloads"][3]["measurements"]["vm"]["reason"] = None
    data["workloads"][0]["measurements"]["docker"] = {"status": "ok", "wall": None}
    problems = validate(data)
    text = "\n".join(problems)
    for expected in ("schema_version", "runs", "not one of", "n does not match", "without a reason",
                     "unknown contender", "status ok without wall"):
        assert expected in text, text
    with pytest.raises(ValueError):
        BenchResult.from_dict(data)
    assert validate([]) == ["the document is not an object"]


def test_interleaving_order_warmup_and_failures():
    order = []
    state = {"flaky": 0}

    def flaky():
        order.append("flaky")
        state["flaky"] += 1
        if state["flaky"] == 3:
            raise RunFailed("broke")
        return Sample(2.0)

    def missing():
        order.append("missing")
        raise RunFailed("no bind mounts")

    said = []
    out = measure_interleaved({"a": lambda: order.append("a") or Sample(1.0, 0.5), "flaky": flaky,
                               "missing": missing}, runs=3, warmup=1, progress=said.append)
    assert order == ["a", "flaky", "missing", "a", "flaky", "a", "flaky", "a"]
    assert out["a"].status == "ok" and out["a"].wall.samples == [1.0] * 3 and out["a"].inner.median == 0.5
    assert out["flaky"].status == "failed" and "run 2: broke" in out["flaky"].reason
    assert out["missing"].status == "unavailable" and out["missing"].reason == "no bind mounts"
    assert list(out) == ["a", "flaky", "missing"]
    assert any("unavailable" in line for line in said)


def test_reason_keeps_error_and_hint():
    err = "warning: TCG\nTraceback junk\nError: bind source path does not exist: /x\nHint: create it\n"
    assert _reason(err, 125) == "Error: bind source path does not exist: /x Hint: create it"
    assert _reason("something odd\nlast line\n", 1) == "last line"
    assert _reason("", 3) == "exit code 3"


def test_inner_time_parsing():
    a = "    time.tv_sec:  100\n    time.tv_usec: 250000\n"
    b = "    time.tv_sec:  101\n    time.tv_usec: 750000\n"
    out = f"noise\n@@runner-bench@@\n{a}@@runner-bench@@\n{b}"
    assert parse_inner(out) == pytest.approx(1.5)
    assert parse_inner("no marks") is None
    assert parse_inner(f"@@runner-bench@@\n{b}@@runner-bench@@\n{a}") is None  # clock went backwards


def test_workload_scripts_and_argv():
    ws = workloads(QUICK)
    keys = [w.key for w in ws]
    assert keys == ["start", "cpu", "fork", "memory", "io-rootfs", "io-bind", "net", "cold-start"]
    assert keys[-1] == "cold-start" and ws[-1].backends == ("vm",)
    cpu = ws[1]
    args = run_args(cpu, "n1")
    assert args[:6] == ["run", "--rm", "--name", "n1", "--network", "none"]
    assert args[6:9] == ["localhost/busybox", "sh", "-c"]
    assert "adjtimex" in args[9] and str(QUICK.cpu_iterations) in args[9]
    assert run_args(ws[0], "n2")[-2:] == ["localhost/busybox", "true"]
    bind = ws[5]
    assert "-v" in run_args(bind, "n3", "/tmp/d") and "/tmp/d:/bench" in run_args(bind, "n3", "/tmp/d")
    with pytest.raises(ValueError):
        run_args(bind, "n3")
    assert FULL.cpu_iterations > QUICK.cpu_iterations
    assert timed("true").endswith("exit $rc")
    assert runner_argv(["r"], "vm", "m1", ["ps"]) == ["r", "--backend", "vm", "--machine", "m1", "ps"]
    assert runner_argv(["r"], "native", "m1", ["ps"]) == ["r", "--backend", "native", "ps"]
    assert [w.key for w in select(ws, ["net", "cpu"])] == ["cpu", "net"]
    with pytest.raises(ValueError, match="unknown workload"):
        select(ws, ["gpu"])
