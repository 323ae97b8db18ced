"""Timing helpers shared by the benchmark scripts and `runner bench`: interleaved runs and summaries.

Benchmarks on a shared machine are noisy, so every comparison runs its contenders interleaved (A, B, A, B,
...) after a warm-up, so drift hits all of them alike, and reports medians with min and max.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable, Sequence

from runner.bench.results import Stats


class Summary(Stats):
    """A contender's samples under its name, with the statistics of :class:`runner.bench.results.Stats`."""

    def __init__(self, name: str, samples: list[float]):
        super().__init__(samples)
        self.name = name

    def row(self) -> str:
        return (f"{self.name:<40} median {self.median * 1000:8.1f} ms   min {self.min * 1000:8.1f} ms   "
                f"max {self.max * 1000:8.1f} ms   n={len(self.samples)}")


def time_command(argv: Sequence[str], env: dict | None = None) -> float:
    """Wall time of one whole process, failing loudly if it fails (a broken contender is no result)."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return elapsed


def interleave(contenders: dict[str, Callable[[], float]], runs: int, warmup: int = 2) -> dict[str, Summary]:
    """Run each contender ``warmup`` times unmeasured, then ``runs`` rounds of one run each, in turn."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            samples[name].append(fn())
    return {name: Summary(name, values) for name, values in samples.items()}
