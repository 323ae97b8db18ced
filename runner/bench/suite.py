"""Running the benchmark: each workload on each backend, interleaved, through the real `runner` CLI.

Every measured run is a separate ``runner --backend B run --rm ...`` process (what a user waits for),
timed from the host; workloads also time themselves inside the container (workloads.timed). Contenders
of one workload run in turn (native, vm, runc, native, vm, runc, ...) after the warm-up, so drift (other
load, thermal, a VM's caches) hits them alike.

Failures are results, not crashes: when a contender's first run fails (no bind mounts in the VM yet, a
published port the host cannot reach), it is reported "unavailable" with the error as the reason; when a
later run fails it is "failed". Cleanup is in ``finally`` blocks: containers are created with names of this
run's prefix and removed by name, the runc bundle is deleted, and a VM this suite booted is stopped again.
Only processes this suite started are ever ended (subprocess timeouts kill their own child).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import count
from typing import Callable

from runner.bench import sysinfo
from runner.bench.results import BenchResult, Measurement, Stats, WorkloadResult
from runner.bench.workloads import (FULL, IMAGE, QUICK, Workload, httpd_args, parse_inner, run_args,
                                    runner_argv, select, wget_inside_args, workloads)

Progress = Callable[[str], None]


class RunFailed(Exception):
    """One contender run did not produce a number; the message is the reason shown to the user."""


@dataclass
class Sample:
    wall: float
    inner: float | None = None


def _reason(stderr: str, code: int) -> str:
    """The user-facing part of a failed runner call: its Error/Hint lines, else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    picked = [ln for ln in lines if ln.startswith(("Error:", "Hint:"))] or lines[-1:]
    return " ".join(picked)[:400] or f"exit code {code}"


def measure_interleaved(contenders: dict[str, Callable[[], Sample]], runs: int, warmup: int,
                        progress: Progress | None = None, label: str = "") -> dict[str, Measurement]:
    """Warm up, then ``runs`` rounds with one run per contender each. A contender whose first attempt
    fails is unavailable (the reason is the failure); one failing later is failed; others go on."""
    say = progress or (lambda _msg: None)
    out: dict[str, Measurement] = {}
    alive = dict(contenders)
    walls: dict[str, list[float]] = {n: [] for n in contenders}
    inners: dict[str, list[float | None]] = {n: [] for n in contenders}
    tried: set[str] = set()

    def attempt(name: str, what: str) -> Sample | None:
        if what.startswith("warm-up"):
            say(f"{label}{name}: {what}")
        try:
            sample = alive[name]()
        except RunFailed as exc:
            out[name] = (Measurement.failed(f"run {len(walls[name]) + 1}: {exc}") if name in tried
                         else Measurement.unavailable(str(exc)))
            del alive[name]
            say(f"{label}{name}: {out[name].status}: {exc}")
            return None
        tried.add(name)
        return sample

    for i in range(warmup):
        for name in list(alive):
            attempt(name, f"warm-up {i + 1}/{warmup}")
    for r in range(runs):
        for name in list(alive):
            sample = attempt(name, f"run {r + 1}/{runs}")
            if sample is not None:
                walls[name].append(sample.wall)
                inners[name].append(sample.inner)
                inner = f", inside {sample.inner:.3f} s" if sample.inner is not None else ""
                say(f"{label}{name}: run {r + 1}/{runs}: {sample.wall:.3f} s{inner}")
    for name in alive:
        out[name] = Measurement(wall=Stats.of(walls[name]), inner=Stats.of(inners[name]))
    return {name: out[name] for name in contenders}


class Suite:
    """One benchmark run. ``backends`` is a subset of ("native", "vm")."""

    def __init__(self, backends: list[str], runs: int, warmup: int, quick: bool = False,
                 machine: str | None = None, keys: list[str] | None = None, progress: Progress | None = None,
                 timeout: float = 900.0, use_runc: bool = True):
        self.backends = list(backends)
        self.runs, self.warmup, self.quick = runs, warmup, quick
        self.sizes = QUICK if quick else FULL
        self.workloads = [w for w in select(workloads(self.sizes), keys)
                          if any(b in self.backends for b in w.backends)]
        self.machine = machine
        self.say = progress or (lambda _msg: None)
        self.timeout = timeout
        self.use_runc = use_runc
        self.runner = [sys.executable, "-m", "runner"]
        self.env = dict(os.environ)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with cached bytecode, as installed
        self.prefix = f"runner-bench-{os.getpid()}"
        self._names = count(1)
        self._leftovers: dict[str, set[str]] = {b: set() for b in ("native", "vm")}
        self.unusable: dict[str, str] = {}  # backend -> why nothing runs on it
        self.vm_was_running: bool | None = None

    # -- helpers ---------------------------------------------------------------------------------------
    def _call(self, backend: str, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        argv = runner_argv(self.runner, backend, self.machine, args)
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                  timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired as exc:  # subprocess.run killed its own child
            raise RunFailed(f"`runner {' '.join(args[:2])}` did not finish within {exc.timeout:g} s") from exc

    def _name(self) -> str:
        return f"{self.prefix}-{next(self._names)}"

    def _remove(self, backend: str, name: str) -> None:
        try:
            self._call(backend, ["rm", "-f", name], timeout=120)
        except RunFailed:
            return
        self._leftovers[backend].discard(name)

    def _info(self, backend: str) -> dict:
        try:
            proc = self._call(backend, ["info", "--format", "json"], timeout=120)
            return json.loads(proc.stdout) if proc.returncode == 0 else {"error": _reason(proc.stderr, 1)}
        except (RunFailed, ValueError) as exc:
            return {"error": str(exc)}

    # -- contenders ------------------------------------------------------------------------------------
    def run_once(self, backend: str, workload: Workload, bind_dir: str | None = None) -> Sample:
        name = self._name()
        self._leftovers[backend].add(name)
        start = time.perf_counter()
        try:
            proc = self._call(backend, run_args(workload, name, bind_dir))
        except RunFailed:
            self._remove(backend, name)
            raise
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            self._remove(backend, name)
            raise RunFailed(_reason(proc.stderr, proc.returncode))
        self._leftovers[backend].discard(name)  # --rm removed it
        inner = parse_inner(proc.stdout) if workload.timed else None
        if workload.timed and inner is None:
            raise RunFailed(f"no in-container timestamps in the output: {proc.stdout.strip()[:200]!r}")
        return Sample(wall, inner)

    def _runc_contender(self, stack: list[Callable[[], None]]) -> Callable[[], Sample] | str:
        """A runc start-latency contender on the same rootfs, or why there is none."""
        runc = shutil.which("runc")
        if not runc:
            return "runc is not installed"
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return "runc needs root on Linux"
        if "native" in self.unusable:
            return f"native backend unusable: {self.unusable['native']}"
        try:
            from runner.engine.engine import Engine
            store = Engine().images_store
            layers = store.layer_dirs(store.resolve(IMAGE))
        except Exception as exc:  # noqa: BLE001 - reported as the reason, the rest goes on
            return f"cannot read {IMAGE}'s layers from the native store: {exc}"
        bundle = tempfile.mkdtemp(prefix="runner-bench-runc-")
        stack.append(lambda: shutil.rmtree(bundle, ignore_errors=True))
        rootfs = os.path.join(bundle, "rootfs")
        os.mkdir(rootfs)
        try:
            for layer_dir in reversed(layers):  # lowest layer first, upper ones copied over it
                subprocess.run(["cp", "-a", layer_dir + "/.", rootfs], check=True, capture_output=True)
            subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"cannot build the runc bundle: {exc}"
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["process"].update(terminal=False, args=["true"])
        with open(config_path, "w") as f:
            json.dump(config, f)

        def once() -> Sample:
            cid = self._name()
            start = time.perf_counter()
            try:
                proc = subprocess.run([runc, "run", "--bundle", bundle, cid], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, timeout=120)
            except subprocess.TimeoutExpired as exc:
                subprocess.run([runc, "delete", "-f", cid], capture_output=True)
                raise RunFailed("runc run did not finish within 120 s") from exc
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                subprocess.run([runc, "delete", "-f", cid], capture_output=True)
                raise RunFailed(f"runc run failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
            return Sample(wall)
        return once

    def _net_contender(self, backend: str, workload: Workload, stack: list[Callable[[], None]]
                       ) -> Callable[[], Sample] | str:
        """Start busybox httpd with a published port and wait until the host can fetch through it."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        name = self._name()
        self._leftovers[backend].add(name)
        stack.append(lambda: self._remove(backend, name))
        self.say(f"net: {backend}: starting httpd, published on 127.0.0.1:{port}")
        try:
            proc = self._call(backend, httpd_args(name, port, self.sizes.net_mb), timeout=300)
        except RunFailed as exc:
            return str(exc)
        if proc.returncode != 0:
            return _reason(proc.stderr, proc.returncode)
        expected = workload.bytes or 0
        # A backend that declares it cannot publish gets a short look, not a minute of waiting.
        wait = 10.0 if _feature_note(backend, "published_ports") else 60.0 if backend == "vm" else 20.0
        deadline = time.monotonic() + wait
        last = ""
        while True:
            try:
                got = _fetch(port, timeout=30)
                if got == expected:
                    break
                last = f"got {got} of {expected} bytes"
            except (OSError, http.client.HTTPException) as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                return (f"published port 127.0.0.1:{port} -> {name}:8080 not reachable from the host within "
                        f"{wait:g} s ({last}){_feature_note(backend, 'published_ports')}")
            time.sleep(0.3)

        def once() -> Sample:
            start = time.perf_counter()
            try:
                got = _fetch(port, timeout=120)
            except (OSError, http.client.HTTPException) as exc:
                raise RunFailed(f"fetch through 127.0.0.1:{port} failed: {exc}") from exc
            wall = time.perf_counter() - start
            if got != expected:
                raise RunFailed(f"fetched {got} of {expected} bytes")
            inner = None
            try:
                p = self._call(backend, wget_inside_args(name), timeout=300)
                inner = parse_inner(p.stdout) if p.returncode == 0 else None
            except RunFailed:
                pass
            return Sample(wall, inner)
        return once

    def _cold_start(self) -> Measurement:
        """vm only: stop the VM, then time ``run --rm IMAGE echo`` to its first output (and to exit)."""
        runs = 1 if self.quick else max(1, min(self.runs, 3))
        firsts: list[float] = []
        totals: list[float] = []
        for r in range(runs):
            ps = self._call("vm", ["ps", "-q"], timeout=300)
            if ps.returncode != 0:
                return Measurement.unavailable(_reason(ps.stderr, ps.returncode))
            if ps.stdout.split():
                return Measurement.unavailable(f"the VM runs {len(ps.stdout.split())} container(s); "
                                               "a cold start would stop them")
            self.say(f"cold-start: vm: stopping the VM ({r + 1}/{runs})")
            stop = self._call("vm", ["vm", "stop"], timeout=300)
            if stop.returncode != 0:
                return Measurement.unavailable(f"vm stop failed: {_reason(stop.stderr, stop.returncode)}")
            self.say(f"cold-start: vm: run {r + 1}/{runs}: booting and running echo")
            name = self._name()
            self._leftovers["vm"].add(name)
            argv = runner_argv(self.runner, "vm", self.machine,
                               ["run", "--rm", "--name", name, "--network", "none", IMAGE, "echo", "ready"])
            start = time.perf_counter()
            proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                first = proc.stdout.readline()
                t_first = time.perf_counter() - start
                _, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child
                proc.communicate()
                return Measurement.failed(f"run {r + 1}: no exit within {self.timeout:g} s")
            total = time.perf_counter() - start
            if proc.returncode == 0:
                self._leftovers["vm"].discard(name)
            if proc.returncode != 0 or first.strip() != b"ready":
                reason = _reason(err.decode(errors="replace"), proc.returncode)
                return (Measurement.unavailable(reason) if not firsts
                        else Measurement.failed(f"run {r + 1}: {reason}"))
            firsts.append(t_first)
            totals.append(total)
            self.say(f"cold-start: vm: run {r + 1}/{runs}: first output after {t_first:.2f} s, exit {total:.2f} s")
        # No in-container time: there is no container work here, the whole wait is the boot.
        return Measurement(wall=Stats(firsts))

    # -- the suite -------------------------------------------------------------------------------------
    def _prepare(self, environment: dict) -> None:
        for backend in self.backends:
            if backend == "vm":
                # Asked before `info`, which goes through the agent and so starts a stopped VM itself.
                status = self._call("vm", ["vm", "status", "--json"], timeout=120)
                try:
                    self.vm_was_running = json.loads(status.stdout).get("state") == "running"
                except ValueError:
                    self.vm_was_running = False
                if not self.vm_was_running:
                    self.say("vm: starting the VM (not measured)")
            self.say(f"{backend}: preparing (one unmeasured run)")
            try:
                proc = self._call(backend, ["run", "--rm", "--network", "none", IMAGE, "true"])
                if proc.returncode != 0:
                    self.unusable[backend] = _reason(proc.stderr, proc.returncode)
            except RunFailed as exc:
                self.unusable[backend] = str(exc)
            if backend in self.unusable:
                self.say(f"{backend}: unusable: {self.unusable[backend]}")
            info = self._info(backend)
            if backend == "vm":
                info["image_version"] = sysinfo.vm_image_version()
            environment[backend] = info

    def run(self) -> BenchResult:
        from runner import __version__
        environment: dict = {"runner_version": __version__, "host": sysinfo.host()}
        result = BenchResult(mode="quick" if self.quick else "full", runs=self.runs, warmup=self.warmup,
                             backends=self.backends, environment=environment)
        cleanup: list[Callable[[], None]] = []
        try:
            self._prepare(environment)
            total = len(self.workloads)
            for i, workload in enumerate(self.workloads, 1):
                label = f"[{i}/{total}] {workload.key}: "
                self.say(f"[{i}/{total}] {workload.title}: {workload.description}")
                result.workloads.append(self._workload(workload, label, environment, cleanup))
        finally:
            self._cleanup(cleanup)
            self._restore_vm()
        result.created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return result

    def _workload(self, workload: Workload, label: str, environment: dict,
                  cleanup: list[Callable[[], None]]) -> WorkloadResult:
        wr = WorkloadResult(workload.key, workload.title, workload.description, dict(workload.size),
                            workload.bytes)
        sides = [b for b in self.backends if b in workload.backends]
        contenders: dict[str, Callable[[], Sample]] = {}
        local: list[Callable[[], None]] = []
        try:
            for backend in sides:
                if backend in self.unusable:
                    wr.measurements[backend] = Measurement.unavailable(f"backend unusable: {self.unusable[backend]}")
                    continue
                if workload.kind == "cold":
                    wr.measurements[backend] = self._cold_start()
                    continue
                if workload.kind == "net":
                    made = self._net_contender(backend, workload, local)
                    if isinstance(made, str):
                        wr.measurements[backend] = Measurement.unavailable(made)
                        self.say(f"{label}{backend}: unavailable: {made}")
                    else:
                        contenders[backend] = made
                    continue
                bind_dir = None
                if workload.bind and (note := _feature_note(backend, "bind_mounts")):
                    wr.measurements[backend] = Measurement.unavailable(note.lstrip("; "))
                    self.say(f"{label}{backend}: unavailable: {note.lstrip('; ')}")
                    continue
                if workload.bind:
                    # Under the system temp dir: a VM machine shares it with the guest by default.
                    bind_dir = tempfile.mkdtemp(prefix="runner-bench-bind-")
                    local.append(lambda d=bind_dir: shutil.rmtree(d, ignore_errors=True))
                contenders[backend] = (lambda b=backend, d=bind_dir: self.run_once(b, workload, d))
            if workload.key == "start" and "native" in self.backends and self.use_runc:
                made = self._runc_contender(local)
                if isinstance(made, str):
                    wr.measurements["runc"] = Measurement.unavailable(made)
                else:
                    contenders["runc"] = made
                environment["runc"] = {"path": shutil.which("runc"),
                                       "version": sysinfo.runc_version(shutil.which("runc") or "runc")}
            if contenders:
                wr.measurements.update(measure_interleaved(contenders, self.runs, self.warmup, self.say, label))
        finally:
            self._cleanup(local)
        order = {"native": 0, "vm": 1, "runc": 2}
        wr.measurements = dict(sorted(wr.measurements.items(), key=lambda kv: order.get(kv[0], 9)))
        return wr

    def _cleanup(self, actions: list[Callable[[], None]]) -> None:
        while actions:
            try:
                actions.pop()()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                self.say(f"cleanup: {exc}")
        for backend, names in self._leftovers.items():
            for name in list(names):
                self._remove(backend, name)

    def _restore_vm(self) -> None:
        """Leave the VM as it was found: stop it when this benchmark booted it."""
        if self.vm_was_running is False and "vm" in self.backends:
            self.say("vm: stopping the VM this benchmark started")
            try:
                self._call("vm", ["vm", "stop"], timeout=300)
            except RunFailed as exc:
                self.say(f"vm: stop: {exc}")
            self.vm_was_running = None


def _fetch(port: int, timeout: float) -> int:
    """GET /big over one connection; the number of body bytes received."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/big")
        resp = conn.getresponse()
        if resp.status != 200:
            raise http.client.HTTPException(f"HTTP {resp.status}")
        got = 0
        while chunk := resp.read(1 << 20):
            got += len(chunk)
        return got
    finally:
        conn.close()


def _feature_note(backend: str, feature: str) -> str:
    """`` (the vm backend declares published_ports=False)`` when the backend says it cannot, else ''."""
    try:
        from runner.backends.select import features
        value = getattr(features(backend), feature)
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return "" if value else f"; the {backend} backend declares {feature}=False"
