"""Engine API speed (issue #14): the docker CLI through ``runner serve`` vs a private real dockerd vs
``runner run --rm``, and the API's per-request cost (``GET /containers/json`` with many containers, the VM
path's added time per call).

Everything this module starts it stops, by PID: the servers (``runner serve``, dockerd, which starts its own
containerd) run in a temporary directory with a private socket, data root and exec root; the system's
dockerd is never touched, nothing listens on TCP. dockerd runs with ``--iptables=false --ip-masq=false
--bridge=none``, so every contender runs ``--network none`` (runner's default bridge costs ~12 ms more).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable

from runner.bench.results import Stats
from runner.bench.suite import RunFailed, Sample, measure_interleaved

IMAGE = "localhost/busybox"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# runner's host dependencies (typer, ...) live in the checkout's venv: the script may run under another python3
PYTHON = os.path.join(ROOT, ".venv", "bin", "python") if os.path.exists(os.path.join(ROOT, ".venv", "bin",
                                                                                      "python")) else sys.executable


def _timed(argv: list[str], env: dict) -> Callable[[], Sample]:
    def run() -> Sample:
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=300)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RunFailed(proc.stderr.decode(errors="replace").strip()[-300:] or f"exit {proc.returncode}")
        return Sample(wall)
    return run


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=300)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(300)
        self.sock.connect(self._path)


def request(path: str, method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = UnixHTTP(path)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, url, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def latency(sock: str, url: str, runs: int) -> Stats:
    """Median wall time of ``GET url`` over ``runs`` requests, one kept-alive connection (as clients do)."""
    conn = UnixHTTP(sock)
    samples = []
    try:
        for i in range(runs + 2):
            start = time.perf_counter()
            conn.request("GET", url)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status}")
            if i >= 2:  # two warm-up requests
                samples.append(time.perf_counter() - start)
    finally:
        conn.close()
    return Stats(samples)


class Server:
    """A process serving a Docker API socket in ``directory``; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], sock: str, env: dict, log: str, ready_timeout: float = 300):
        self.sock = sock
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                with open(log, errors="replace") as f:
                    raise RuntimeError(f"{argv[0]} exited: {f.read()[-600:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if os.path.exists(sock) and request(sock, "GET", "/_ping")[0] == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[0]} did not answer on {sock}: see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Bench:
    def __init__(self, runs: int, warmup: int, containers: int, vm: bool, dockerd: bool, say=print):
        self.runs, self.warmup, self.containers, self.vm, self.dockerd = runs, warmup, containers, vm, dockerd
        self.say = say
        self.dir = tempfile.mkdtemp(prefix="runner-bench-api-")
        self.env = dict(os.environ, PYTHONPATH=ROOT, RUNNER_ROOT=os.path.join(self.dir, "runner-root"))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # runner's own CLI as users run it: with bytecode
        self.env.pop("DOCKER_HOST", None)
        self.servers: list[Server] = []
        # --vm: a machine of this run's own (RUNNER_VM_STATE_DIR), never someone else's; an existing one is
        # used when the caller names its state directory.
        self.own_machine = vm and not os.environ.get("RUNNER_VM_STATE_DIR")
        if self.own_machine:
            self.env["RUNNER_VM_STATE_DIR"] = self.path("vm-state")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def runner(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "runner", *args]

    def docker(self, sock: str, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{sock}", *args]

    def serve(self, backend: str, name: str) -> Server:
        sock = self.path(f"{name}.sock")
        server = Server(self.runner("--backend", backend, "serve", "-H", f"unix://{sock}"), sock, self.env,
                        self.path(f"{name}.log"))
        self.servers.append(server)
        return server

    def start_dockerd(self) -> Server:
        sock = self.path("dockerd.sock")
        argv = ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none",
                "--data-root", self.path("docker-root"), "--exec-root", self.path("docker-exec"),
                "-H", f"unix://{sock}", "--pidfile", self.path("dockerd.pid")]
        server = Server(argv, sock, self.env, self.path("dockerd.log"))
        self.servers.append(server)
        archive = self.path("busybox.tar")
        subprocess.run(self.runner("save", "-o", archive, IMAGE), env=self.env, check=True, capture_output=True)
        subprocess.run(self.docker(sock, "load", "-i", archive), env=self.env, check=True, capture_output=True)
        return server

    def run(self) -> dict:
        results: dict = {}
        try:
            native = self.serve("native", "runner-native")
            contenders = {
                "docker CLI -> runner serve": _timed(self.docker(native.sock, *_RUN), self.env),
                "runner run --rm": _timed(self.runner("--backend", "native", *_RUN), self.env),
            }
            if self.dockerd:
                contenders["docker CLI -> dockerd"] = _timed(self.docker(self.start_dockerd().sock, *_RUN), self.env)
            if self.vm:
                vm = self.serve("vm", "runner-vm")
                contenders["docker CLI -> runner serve (vm)"] = _timed(self.docker(vm.sock, *_RUN), self.env)
                contenders["runner --backend vm run --rm"] = _timed(self.runner("--backend", "vm", *_RUN), self.env)
            self.say(f"docker run --rm --network none {IMAGE} true, interleaved, {self.runs} runs each:")
            for name, m in measure_interleaved(contenders, self.runs, self.warmup).items():
                results[name] = m.wall.median if m.wall else None
                self.say(f"  {name:34s} {_ms(m.wall.median) if m.wall else m.status}")
            results.update(self.per_request(native, "native"))
            if self.vm:
                results.update(self.per_request(vm, "vm"))
        finally:
            for server in reversed(self.servers):
                server.stop()
            if self.own_machine:  # the machine this run booted in its private state directory
                for args in (("vm", "stop"), ("vm", "rm", "-f")):
                    subprocess.run(self.runner("--backend", "vm", *args), env=self.env, capture_output=True,
                                   timeout=180)
            shutil.rmtree(self.dir, ignore_errors=True)
        return results

    def per_request(self, server: Server, label: str) -> dict:
        """/_ping (the server alone), GET /containers/json with N containers, one container's inspect."""
        out = {f"{label} GET /_ping": latency(server.sock, "/v1.41/_ping", self.runs * 5).median}
        ids = []
        try:
            for i in range(self.containers):
                status, body = request(server.sock, "POST", "/v1.41/containers/create",
                                       {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
                if status != 201:
                    raise RuntimeError(f"create: {status} {body[:200]!r}")
                ids.append(json.loads(body)["Id"])
            out[f"{label} GET /containers/json?all=1 ({len(ids)} containers)"] = latency(
                server.sock, "/v1.41/containers/json?all=1", self.runs * 2).median
            out[f"{label} GET /containers/ID/json"] = latency(
                server.sock, f"/v1.41/containers/{ids[0]}/json", self.runs * 5).median
        finally:
            for cid in ids:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    request(server.sock, "DELETE", f"/v1.41/containers/{cid}?force=1")
        for name, value in out.items():
            self.say(f"  {name:50s} {_ms(value)}")
        return out


_RUN = ("run", "--rm", "--network", "none", IMAGE, "true")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def summary(results: dict) -> list[str]:
    """The targets of issue #14 as ratios."""
    lines = []
    api = results.get("docker CLI -> runner serve")
    for other, target in (("docker CLI -> dockerd", 0.5), ("runner run --rm", 1.2)):
        if api and results.get(other):
            ratio = api / results[other]
            lines.append(f"runner serve / {other}: {ratio:.2f}x (target <= {target}x: "
                         f"{'met' if ratio <= target else 'NOT met'})")
    vm_call, native_call = results.get("vm GET /containers/ID/json"), results.get("native GET /containers/ID/json")
    if vm_call and native_call:
        lines.append(f"the VM path adds {_ms(vm_call - native_call).strip()} per inspect call")
    return lines
