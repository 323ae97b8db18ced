"""Adapter for an external OCI runtime binary (runc; crun speaks the same CLI), behind BuiltinRuntime's API.

Chosen per container with ``runner run/create --runtime runc`` (recorded in the container's state, shown as
inspect's ``HostConfig.Runtime``). Same bundle, same contract: the OCI ``config.json`` the engine writes is
all runc gets, and ``start``/``exec`` return a pid the caller can ``os.waitpid``. runc detaches its
container process (``run --detach``, ``exec --detach``), which then gets re-parented to the nearest *child
subreaper*; the adapter therefore marks the calling process PR_SET_CHILD_SUBREAPER (process-wide, idempotent),
so the container's PID 1 becomes the caller's child as soon as runc exits. Consequence for the caller: it also
inherits any other orphaned descendants and must reap them (an engine shim or the agent does anyway).

stdio: a detached runc hands its own fds 0-2 to the container, so runc's stderr *is* the container's stderr
(capturing it would keep runc's caller waiting until the container exits). runc's own errors are therefore
read from its ``--log`` file (JSON lines) instead, and mapped to the same error classes as the builtin
runtime ("executable file not found" and "no such file or directory" -> CommandNotFound 127, "permission
denied" -> CommandNotExecutable 126). Cgroups: runc's cgroupfs driver puts the cgroupsPath at the same place
as ours, so ``oom_killed`` and ``cgroup_paths`` reuse runner.engine.runtime.cgroups and read them before
``delete``.

A terminal (``-t``): runc makes the pty inside the container and sends its master over ``--console-socket``,
a listening unix socket *path*; the engine's API passes a connected socket fd instead (the builtin runtime
writes to it directly). The adapter listens on a private temporary path, accepts runc's connection after
runc returns (runc connects and sends before the container starts; the kernel queues both) and passes the
master on to the engine's socket.
Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile

from runner.engine.runtime import cgroups, linux
from runner.errors import CommandNotExecutable, CommandNotFound, ContainerStartError, PlatformError


def _error(log_path: str, what: str) -> ContainerStartError:
    """The last error runc logged (its ``--log`` file, JSON lines) as a runner error."""
    line = ""
    with contextlib.suppress(OSError), open(log_path, errors="replace") as f:
        for raw in f:
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if entry.get("level") in ("error", "fatal"):
                    line = str(entry.get("msg", "")).strip()
    line = line or f"{what} failed"
    low = line.lower()
    if "executable file not found" in low or "no such file or directory" in low and "exec" in low:
        return CommandNotFound(line)
    if "permission denied" in low and "exec" in low:
        return CommandNotExecutable(line)
    return ContainerStartError(line if line.startswith(what) else f"{what}: {line}")


@contextlib.contextmanager
def _console_relay(console_socket: int | None, tmp: str):
    """runc's ``--console-socket`` arguments; on leaving after success, the pty master runc sent is passed on
    to ``console_socket`` (a connected unix socket fd the caller reads it from). None: no terminal."""
    if console_socket is None:
        yield []
        return
    path = os.path.join(tmp, "console.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        yield ["--console-socket", path]
        listener.settimeout(10)  # runc has returned: its connection is queued already, or never comes
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            raise ContainerStartError("runc did not hand over the container's terminal") from exc
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise ContainerStartError("runc did not hand over the container's terminal")
        try:
            with socket.socket(fileno=os.dup(console_socket)) as out:
                socket.send_fds(out, [b"\0"], fds[:1])
        finally:
            for fd in fds:
                os.close(fd)


class RuncRuntime:
    """Drive ``runc`` (or a compatible binary) with its own state root."""

    name = "runc"

    def __init__(self, binary: str | None = None, root: str = "/run/runner-runc"):
        self.binary = binary or shutil.which("runc") or shutil.which("crun")
        if not self.binary:
            raise PlatformError("no external OCI runtime found on PATH", hint="install runc, or use the builtin runtime")
        self.root = root

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *args]

    @staticmethod
    def _subreaper() -> None:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)

    @staticmethod
    def _read_pid(path: str) -> int:
        with open(path) as f:
            return int(f.read().strip())

    def _run(self, args: list[str], container_id: str, stdio: tuple[int, int, int], tmp: str, what: str) -> int:
        """Run one detaching runc command with the container's stdio; returns the pid runc wrote."""
        log, pid_file = os.path.join(tmp, "runc.log"), os.path.join(tmp, "pid")
        cmd = [self.binary, "--root", self.root, "--log", log, "--log-format", "json", *args,
               "--pid-file", pid_file, container_id]
        proc = subprocess.run(cmd, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        if proc.returncode != 0:
            raise _error(log, what)
        return self._read_pid(pid_file)

    def start(self, bundle: str, container_id: str, stdio: tuple[int, int, int],
              console_socket: int | None = None) -> int:
        self._subreaper()
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        if (config.get("process") or {}).get("terminal") and console_socket is None:
            config["process"]["terminal"] = False  # a caller with no console socket gets the tty it passed
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config, f)
        with tempfile.TemporaryDirectory(prefix="runner-runc-") as tmp:
            try:
                with _console_relay(console_socket, tmp) as console:
                    return self._run(["run", "--detach", "--bundle", bundle, *console], container_id, stdio, tmp,
                                     "runc run")
            except BaseException:
                self.delete(bundle, container_id)
                raise

    def exec(self, bundle: str, container_id: str, init_pid: int, process: dict,
             stdio: tuple[int, int, int], console_socket: int | None = None) -> int:
        self._subreaper()
        process = dict(process, terminal=console_socket is not None)
        with tempfile.TemporaryDirectory(prefix="runner-exec-") as tmp:
            proc_file = os.path.join(tmp, "process.json")
            with open(proc_file, "w") as f:
                json.dump(process, f)
            with _console_relay(console_socket, tmp) as console:
                return self._run(["exec", "--detach", "--process", proc_file, *console], container_id, stdio, tmp,
                                 "runc exec")

    def delete(self, bundle: str, container_id: str) -> None:
        subprocess.run(self._cmd("delete", "--force", container_id), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self._cgroup(bundle, container_id).delete()  # idempotent; covers a runc that never got that far

    def oom_killed(self, bundle: str, container_id: str) -> bool:
        return self._cgroup(bundle, container_id).oom_killed()

    def cgroup_paths(self, bundle: str, container_id: str) -> list[str]:
        return list(self._cgroup(bundle, container_id).dirs)

    @staticmethod
    def _cgroup(bundle: str, container_id: str) -> cgroups.Cgroup:
        try:
            with open(os.path.join(bundle, "config.json")) as f:
                path = (json.load(f).get("linux") or {}).get("cgroupsPath")
        except (OSError, ValueError):
            path = None
        return cgroups.Cgroup(path or f"/runner/{container_id}")
