"""Which backend serves this call: flag > RUNNER_BACKEND > config file > platform default.

The winner is remembered with the reason, so ``runner info`` can say *why* a backend was chosen.
"""

from __future__ import annotations

import json
import os
import sys

from runner.errors import UsageError
from runner.records import FrozenRecord
from runner.userconfig import config_path  # noqa: F401 (callers read it from here too)

BACKENDS = ("native", "vm")


class Choice(FrozenRecord):
    _fields = ("backend", "reason")

    def __init__(self, backend: str, reason: str):
        self._init(backend=backend, reason=reason)


def _from_config() -> str | None:
    try:
        with open(config_path()) as f:
            value = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def platform_default(platform: str = sys.platform) -> str:
    return "native" if platform.startswith("linux") else "vm"


def choose(flag: str | None, env: dict | None = None, platform: str = sys.platform,
           config_value: str | None = None, read_config: bool = True) -> Choice:
    env = os.environ if env is None else env
    candidates = (
        (flag, "--backend flag"),
        (env.get("RUNNER_BACKEND"), "RUNNER_BACKEND environment variable"),
        (config_value if config_value is not None else (_from_config() if read_config else None),
         "config file"),
    )
    for value, reason in candidates:
        if value:
            if value not in BACKENDS:
                raise UsageError(f"unknown backend {value!r} (from {reason})", hint="use native or vm")
            return Choice(value, reason)
    return Choice(platform_default(platform), f"default on {platform}")


def features(backend: str):
    """What the named backend can do (:class:`runner.backends.base.Features`), without building it: for
    callers that plan around a backend they run through the CLI (the benchmark)."""
    if backend == "native":
        from runner.backends.native import NativeBackend
        return NativeBackend.features
    from runner.backends.vm import VMBackend
    return VMBackend.features


def make_backend(choice: Choice, machine: str = "default", warn=None):
    """``warn``: the CLI's callback for warnings from below (a machine that could not resume, ...)."""
    if choice.backend == "native":
        from runner.backends.native import NativeBackend
        return NativeBackend()
    from runner.backends.vm import VMBackend
    return VMBackend(machine, warn)
