"""What `runner bench` measures: the workloads, their sizes and the shell each one runs in a container.

Pure: builds argv lists and parses output, runs nothing (suite.py does). Every in-container workload is a
busybox ``sh -c`` script wrapped by :func:`timed` so that, besides the wall time of the whole
``runner run`` (what a user waits for), the time the work itself took *inside* the container is known;
the difference is the transport: CLI start, backend, the VM's SSH channel and agent, container setup.

busybox's ``date`` has no ``%N``, so the in-container clock is ``adjtimex`` (read-only, no capability
needed), which prints the time with microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

IMAGE = "localhost/busybox"
MARK = "@@runner-bench@@"
MB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    cpu_iterations: int
    forks: int
    mem_mb: int
    io_mb: int
    net_mb: int


# Quick sizes keep a TCG VM run of each workload within seconds; the transport dominates them anyway.
QUICK = Sizes(cpu_iterations=5_000, forks=20, mem_mb=64, io_mb=8, net_mb=16)
FULL = Sizes(cpu_iterations=200_000, forks=500, mem_mb=2048, io_mb=128, net_mb=128)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    description: str
    kind: str                      # "run": runner run --rm; "net": host fetches from a published port; "cold"
    script: str = ""               # the work, for kind "run" (shell, busybox sh)
    size: dict = field(default_factory=dict)
    bytes: int | None = None       # payload, for a throughput
    bind: bool = False             # needs a host directory bind-mounted at /bench
    backends: tuple[str, ...] = ("native", "vm")
    timed: bool = True             # wrap the script with in-container timestamps


def workloads(sizes: Sizes) -> list[Workload]:
    """The suite, in the order it runs (cold start last: it stops the VM)."""
    s = sizes
    loop = "i=0; while [ $i -lt {n} ]; do {body}i=$((i+1)); done"
    io = (f"dd if=/dev/zero of={{path}} bs=1M count={s.io_mb} conv=fsync 2>/dev/null && sync && "
          f"rm -f {{path}}")
    return [
        Workload("start", "Start latency", "runner run --rm --network none IMAGE true (runc: same rootfs)",
                 "run", script="true", timed=False),
        Workload("cpu", "CPU-bound", f"busybox sh arithmetic loop, {s.cpu_iterations} iterations", "run",
                 script=loop.format(n=s.cpu_iterations, body=""), size={"iterations": s.cpu_iterations}),
        Workload("fork", "fork+exec", f"{s.forks} x /bin/true from sh (fork, exec, wait)", "run",
                 script=loop.format(n=s.forks, body="/bin/true; "), size={"processes": s.forks}),
        Workload("memory", "Memory bandwidth", f"dd {s.mem_mb} MiB /dev/zero -> /dev/null, bs=1M", "run",
                 script=f"dd if=/dev/zero of=/dev/null bs=1M count={s.mem_mb} 2>/dev/null",
                 size={"MiB": s.mem_mb}, bytes=s.mem_mb * MB),
        Workload("io-rootfs", "File I/O, rootfs", f"dd {s.io_mb} MiB to a file in the container's rootfs, "
                 "fsync, sync", "run", script=io.format(path="/bench-io.dat"), size={"MiB": s.io_mb},
                 bytes=s.io_mb * MB),
        Workload("io-bind", "File I/O, bind mount", f"dd {s.io_mb} MiB to a bind-mounted host directory "
                 "(9p in the VM), fsync, sync", "run", script=io.format(path="/bench/io.dat"),
                 size={"MiB": s.io_mb}, bytes=s.io_mb * MB, bind=True),
        Workload("net", "Network, published port", f"host fetches {s.net_mb} MiB from busybox httpd through "
                 "-p (inner: the same fetch with wget inside the container)", "net",
                 size={"MiB": s.net_mb}, bytes=s.net_mb * MB),
        Workload("cold-start", "VM cold start", "vm stop, then runner run --rm IMAGE echo: time to first "
                 "output", "cold", backends=("vm",), timed=False),
    ]


def select(all_workloads: list[Workload], keys: list[str] | None) -> list[Workload]:
    if not keys:
        return all_workloads
    known = {w.key for w in all_workloads}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"unknown workload(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return [w for w in all_workloads if w.key in keys]


def timed(script: str) -> str:
    """``script`` between two in-container clock readings, its own output discarded."""
    return (f'a=$(adjtimex 2>&1); {{ {script} ; }} >/dev/null 2>&1; rc=$?; b=$(adjtimex 2>&1); '
            f'echo "{MARK}"; echo "$a"; echo "{MARK}"; echo "$b"; exit $rc')


_SEC = re.compile(r"tv_sec:\s*(\d+)")
_USEC = re.compile(r"tv_usec:\s*(\d+)")


def _stamp(text: str) -> float | None:
    sec, usec = _SEC.search(text), _USEC.search(text)
    if not sec or not usec:
        return None
    return int(sec.group(1)) + int(usec.group(1)) / 1e6


def parse_inner(stdout: str) -> float | None:
    """Seconds between the two clock readings :func:`timed` printed; None when they are not there."""
    parts = stdout.split(MARK)
    if len(parts) < 3:
        return None
    a, b = _stamp(parts[-2]), _stamp(parts[-1])
    if a is None or b is None or b < a:
        return None
    return b - a


def runner_argv(runner: list[str], backend: str, machine: str | None, args: list[str]) -> list[str]:
    """``runner --backend B [--machine M] ARGS``."""
    argv = [*runner, "--backend", backend]
    if backend == "vm" and machine:
        argv += ["--machine", machine]
    return argv + list(args)


def run_args(workload: Workload, name: str, bind_dir: str | None = None) -> list[str]:
    """``run`` arguments for an in-container workload (kind "run")."""
    args = ["run", "--rm", "--name", name, "--network", "none"]
    if workload.bind:
        if not bind_dir:
            raise ValueError("bind workload without a host directory")
        args += ["-v", f"{bind_dir}:/bench"]
    script = timed(workload.script) if workload.timed else workload.script
    if workload.key == "start":
        return args + [IMAGE, "true"]
    return args + [IMAGE, "sh", "-c", script]


def httpd_args(name: str, host_port: int, net_mb: int) -> list[str]:
    """A detached busybox httpd serving ``/big`` (``net_mb`` MiB) on container port 8080, published."""
    script = (f"mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={net_mb} 2>/dev/null && "
              "exec httpd -f -p 8080 -h /www")
    return ["run", "-d", "--name", name, "-p", f"127.0.0.1:{host_port}:8080", IMAGE, "sh", "-c", script]


def wget_inside_args(name: str) -> list[str]:
    """``exec`` arguments timing the same fetch from inside the container (loopback, no transport)."""
    return ["exec", name, "sh", "-c", timed("wget -q -O /dev/null http://127.0.0.1:8080/big")]
