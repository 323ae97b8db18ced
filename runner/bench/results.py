"""Benchmark results: statistics, ratios and the JSON document `runner bench --json` writes.

Pure data, no I/O. The JSON schema (``schema_version`` 1)::

    {
      "schema_version": 1,
      "tool": "runner bench",
      "created": "2026-05-07T23:10:00Z",          # UTC, when the run finished
      "mode": "quick" | "full",
      "runs": 3, "warmup": 1,                     # measured repetitions / unmeasured warm-ups per contender
      "backends": ["native", "vm"],               # the sides that were asked for
      "environment": {                            # free-form facts about where it ran (see sysinfo.py)
        "runner_version": "0.1.0", "host": {...}, "native": {...}, "vm": {...}, "runc": {...}
      },
      "workloads": [
        {
          "key": "cpu", "title": "CPU-bound", "description": "...",
          "size": {"iterations": 20000},          # the parameters used
          "bytes": null,                          # payload size when a throughput is meaningful
          "measurements": {
            "native": {
              "status": "ok" | "unavailable" | "failed",
              "reason": null | "why it is unavailable / how it failed",
              "wall":  {"median": s, "min": s, "max": s, "n": 3, "samples": [s, ...]} | null,
              "inner": {... same ...} | null       # time measured inside the container
            },
            "vm": {...}, "runc": {...}             # runc only for the start-latency workload
          },
          "ratios": {"vm/native": 4.2, "vm/native inner": 3.9, "runner/runc": 1.8}   # of medians
        }
      ]
    }

All times are seconds. A ratio is *time* on the first side divided by time on the second, so 1.0 means as
fast, 3.0 means three times slower; a ratio is absent when either side has no number.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "unavailable", "failed")
CONTENDERS = ("native", "vm", "runc")
# (name in "ratios", numerator contender, denominator contender, which series)
RATIOS = (("vm/native", "vm", "native", "wall"),
          ("vm/native inner", "vm", "native", "inner"),
          ("runner/runc", "native", "runc", "wall"))


@dataclass
class Stats:
    """Median, min and max of a list of samples (seconds)."""

    samples: list[float]

    def __post_init__(self):
        if not self.samples:
            raise ValueError("Stats needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n,
                "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Stats | None":
        return cls([float(x) for x in data["samples"]]) if data else None

    @classmethod
    def of(cls, samples: list[float | None]) -> "Stats | None":
        """Stats of the samples that are numbers; None when there are none."""
        values = [s for s in samples if s is not None]
        return cls(values) if values else None


@dataclass
class Measurement:
    """One contender (native, vm, runc) on one workload."""

    status: str = "ok"
    reason: str | None = None
    wall: Stats | None = None
    inner: Stats | None = None

    @classmethod
    def unavailable(cls, reason: str) -> "Measurement":
        return cls(status="unavailable", reason=reason)

    @classmethod
    def failed(cls, reason: str) -> "Measurement":
        return cls(status="failed", reason=reason)

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason,
                "wall": self.wall.to_dict() if self.wall else None,
                "inner": self.inner.to_dict() if self.inner else None}

    @classmethod
    def from_dict(cls, data: dict) -> "Measurement":
        return cls(status=data["status"], reason=data.get("reason"), wall=Stats.from_dict(data.get("wall")),
                   inner=Stats.from_dict(data.get("inner")))


def ratio(numerator: Stats | None, denominator: Stats | None) -> float | None:
    """Median over median; None when a side is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator.median <= 0:
        return None
    return numerator.median / denominator.median


@dataclass
class WorkloadResult:
    key: str
    title: str
    description: str = ""
    size: dict = field(default_factory=dict)
    bytes: int | None = None
    measurements: dict[str, Measurement] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        out = {}
        for name, num, den, series in RATIOS:
            a, b = self.measurements.get(num), self.measurements.get(den)
            if a is None or b is None:
                continue
            value = ratio(getattr(a, series), getattr(b, series))
            if value is not None:
                out[name] = value
        return out

    def throughput(self, contender: str, series: str = "wall") -> float | None:
        """MB/s (10^6 bytes per second) of the median, for workloads that move ``bytes``."""
        m = self.measurements.get(contender)
        stats = getattr(m, series) if m else None
        if not self.bytes or stats is None or stats.median <= 0:
            return None
        return self.bytes / stats.median / 1e6

    def to_dict(self) -> dict:
        return {"key": self.key, "title": self.title, "description": self.description, "size": dict(self.size),
                "bytes": self.bytes,
                "measurements": {k: m.to_dict() for k, m in self.measurements.items()},
                "ratios": self.ratios()}

    @classmethod
    def from_dict(cls, data: dict) -> "WorkloadResult":
        return cls(key=data["key"], title=data["title"], description=data.get("description", ""),
                   size=dict(data.get("size") or {}), bytes=data.get("bytes"),
                   measurements={k: Measurement.from_dict(v) for k, v in data["measurements"].items()})


@dataclass
class BenchResult:
    mode: str
    runs: int
    warmup: int
    backends: list[str]
    environment: dict[str, Any] = field(default_factory=dict)
    workloads: list[WorkloadResult] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "tool": "runner bench", "created": self.created,
                "mode": self.mode, "runs": self.runs, "warmup": self.warmup, "backends": list(self.backends),
                "environment": self.environment, "workloads": [w.to_dict() for w in self.workloads]}

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        problems = validate(data)
        if problems:
            raise ValueError("not a runner bench result: " + "; ".join(problems))
        return cls(mode=data["mode"], runs=data["runs"], warmup=data["warmup"], backends=list(data["backends"]),
                   environment=data.get("environment") or {}, created=data.get("created", ""),
                   workloads=[WorkloadResult.from_dict(w) for w in data["workloads"]])


def _check_stats(where: str, data: Any, problems: list[str]) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(f"{where}: not an object")
        return
    for key in ("median", "min", "max", "n", "samples"):
        if key not in data:
            problems.append(f"{where}: missing {key}")
    samples = data.get("samples")
    if not isinstance(samples, list) or not samples or not all(isinstance(s, (int, float)) for s in samples):
        problems.append(f"{where}: samples must be a non-empty list of numbers")
    elif data.get("n") != len(samples):
        problems.append(f"{where}: n does not match the samples")
    elif not (data.get("min", 0) <= data.get("median", 0) <= data.get("max", 0)):
        problems.append(f"{where}: min <= median <= max does not hold")


def validate(data: Any) -> list[str]:
    """Every way ``data`` departs from the schema above (empty: valid)."""
    problems: list[str] = []
    if not isinstance(data, dict):
        return ["the document is not an object"]
    if data.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for key, kind in (("mode", str), ("runs", int), ("warmup", int), ("backends", list), ("workloads", list),
                      ("environment", dict)):
        if not isinstance(data.get(key), kind):
            problems.append(f"{key}: missing or not a {kind.__name__}")
    for i, w in enumerate(data.get("workloads") or []):
        where = f"workloads[{i}]"
        if not isinstance(w, dict):
            problems.append(f"{where}: not an object")
            continue
        for key in ("key", "title"):
            if not isinstance(w.get(key), str):
                problems.append(f"{where}.{key}: missing or not a string")
        measurements = w.get("measurements")
        if not isinstance(measurements, dict):
            problems.append(f"{where}.measurements: missing or not an object")
            continue
        for name, m in measurements.items():
            at = f"{where}.measurements.{name}"
            if name not in CONTENDERS:
                problems.append(f"{at}: unknown contender")
            if not isinstance(m, dict):
                problems.append(f"{at}: not an object")
                continue
            if m.get("status") not in STATUSES:
                problems.append(f"{at}.status: {m.get('status')!r} is not one of {', '.join(STATUSES)}")
            elif m["status"] == "ok" and m.get("wall") is None:
                problems.append(f"{at}: status ok without wall times")
            elif m["status"] != "ok" and not m.get("reason"):
                problems.append(f"{at}: status {m['status']} without a reason")
            _check_stats(f"{at}.wall", m.get("wall"), problems)
            _check_stats(f"{at}.inner", m.get("inner"), problems)
        if not isinstance(w.get("ratios", {}), dict):
            problems.append(f"{where}.ratios: not an object")
    return problems
