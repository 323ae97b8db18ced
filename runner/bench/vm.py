"""VM backend latency: cold start to first output, warm `run --rm true` through the VM vs natively, and the
no-op agent round trip (``scripts/bench-vm``).

What each number means:

- **cold start**: wall time of ``runner vm start`` followed by ``runner --vm run --rm IMAGE echo hi``, from a
  stopped machine, until the output line. With the snapshot fast start (runner.vm.snapshot) a start
  resumes the saved state; ``RUNNER_VM_SNAPSHOT=0`` turns it off, which gives the "without" number.
  The first start after the machine or the snapshot key changed boots fully and saves the state: it is
  reported on its own, not in the medians. **auto-start** is the one-command form: ``runner --vm run`` on a
  stopped machine, which starts it itself.
- **warm run**: ``runner --vm run --rm IMAGE true`` against ``runner run --rm IMAGE true`` (native; Linux
  and root only), interleaved. The in-guest part is what the agent itself reported (REPLY/EXIT ``took``) for
  the requests of that same CLI call (``$RUNNER_GUEST_TIMES``, runner.agent.client); CLI + transport =
  total - in-guest. The same calls made in-process (no CLI start) are timed right after each CLI run.
- **round trip**: ``ping`` over one established agent connection (through the connection cache).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Callable, Sequence

from runner.bench.timing import Summary, time_command

IMAGE = "localhost/busybox"


def timed_output(argv: Sequence[str], env: dict, expect: bytes) -> float:
    """Seconds until ``expect`` appears on the command's stdout (the command must then succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or expect not in proc.stdout:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return elapsed


def cold_start(runner: Sequence[str], env: dict, runs: int, machine: str = "default",
               log: Callable[[str], None] = print) -> dict[str, Summary]:
    """Stopped machine -> `vm start` -> `--vm run --rm echo hi` output, ``runs`` times (plus one unmeasured
    start first, which may boot fully and save the snapshot)."""
    start = list(runner) + ["vm", "start", "--name", machine]
    stop = list(runner) + ["vm", "stop", "--name", machine]
    hello = list(runner) + ["--vm", "--machine", machine, "run", "--rm", IMAGE, "echo", "hi"]
    samples: dict[str, list[float]] = {"vm start": [], "first run": [], "start -> first output": []}
    subprocess.run(stop, env=env, stdout=subprocess.DEVNULL, check=True)
    first = time_command(start, env) + timed_output(hello, env, b"hi")
    log(f"  first start after a change (full boot{'' if env.get('RUNNER_VM_SNAPSHOT') == '0' else ' + save'}): "
        f"{first:.2f} s")
    for _ in range(runs):
        subprocess.run(stop, env=env, stdout=subprocess.DEVNULL, check=True)
        a = time_command(start, env)
        steps = _ready_seconds(machine)
        b = timed_output(hello, env, b"hi")
        for name, value in (("vm start", a), ("first run", b), ("start -> first output", a + b)):
            samples[name].append(value)
        for step, seconds in steps.items():  # when the start met each requirement (runner.vm.machine)
            samples.setdefault(f"  start: {step} met after", []).append(seconds)
    if env.get("RUNNER_VM_SNAPSHOT") != "0":
        for _ in range(runs):  # the same, as one command: a container command starts a stopped machine itself
            subprocess.run(stop, env=env, stdout=subprocess.DEVNULL, check=True)
            samples.setdefault("auto-start: --vm run on a stopped machine -> output", []).append(
                timed_output(hello, env, b"hi"))
    return {name: Summary(name, values) for name, values in samples.items()}


def _ready_seconds(machine: str) -> dict[str, float]:
    import json

    from runner.vm.layout import MachinePaths

    try:
        return dict(json.loads(MachinePaths.for_name(machine).run.read_text()).get("ready_seconds") or {})
    except (OSError, ValueError):
        return {}


def in_process_run(machine: str = "default") -> float:
    """Wall seconds of one in-process `run --rm IMAGE true` through the agent: the call the CLI makes, without
    the CLI's own start (a new connection and handshake included)."""
    from runner.stdio import Stdio
    from runner.backends.vm import VMBackend
    from runner.spec import ContainerSpec

    backend = VMBackend(machine)
    try:
        spec = ContainerSpec(image=IMAGE, command=["true"], auto_remove=True, network="bridge").validate().to_dict()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            began = time.perf_counter()
            code = backend.run(spec, Stdio(None, devnull, devnull)).wait()
            wall = time.perf_counter() - began
        finally:
            os.close(devnull)
        if code != 0:
            raise RuntimeError(f"run --rm {IMAGE} true exited {code} in the VM")
        return wall
    finally:
        backend.close()


def round_trip(machine: str = "default", calls: int = 200) -> Summary:
    from runner.backends.vm import VMBackend

    backend = VMBackend(machine)
    try:
        client = backend.client
        for _ in range(10):
            client.call("ping")
        samples = []
        for _ in range(calls):
            began = time.perf_counter()
            client.call("ping")
            samples.append(time.perf_counter() - began)
        return Summary("agent ping (one connection)", samples)
    finally:
        backend.close()


def warm_run(runner: Sequence[str], env: dict, runs: int, machine: str = "default",
             native: bool | None = None) -> dict[str, Summary]:
    vm_cmd = list(runner) + ["--vm", "--machine", machine, "run", "--rm", IMAGE, "true"]
    native_cmd = list(runner) + ["--backend", "native", "run", "--rm", IMAGE, "true"]
    if native is None:
        native = sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0
    samples: dict[str, list[float]] = {"runner --vm run --rm true (CLI total)": [],
                                       "  in-guest (agent-reported)": [],
                                       "  CLI + transport (total - in-guest)": [],
                                       "  in-process through the agent (no CLI start)": []}
    if native:
        samples["runner run --rm true (native)"] = []
    time_command(vm_cmd, env)  # warm-up: agent shipped, connection cache up, image present
    import tempfile

    from runner.agent.client import GUEST_TIMES_ENV

    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        times = os.path.join(tmp, "guest-times.jsonl")
        vm_env = dict(env, **{GUEST_TIMES_ENV: times})
        for _ in range(runs):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(times)
            total = time_command(vm_cmd, vm_env)
            guest = _summed_guest_times(times)  # what the agent spent on this very CLI call's requests
            wall = in_process_run(machine)
            samples["runner --vm run --rm true (CLI total)"].append(total)
            samples["  in-guest (agent-reported)"].append(guest)
            samples["  CLI + transport (total - in-guest)"].append(total - guest)
            samples["  in-process through the agent (no CLI start)"].append(wall)
            if native:
                samples["runner run --rm true (native)"].append(time_command(native_cmd, env))
    return {name: Summary(name, values) for name, values in samples.items()}


def _summed_guest_times(path: str) -> float:
    import json

    with open(path) as f:
        return sum(float(json.loads(line)["took"]) for line in f if line.strip())
