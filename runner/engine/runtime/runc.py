"""Adapter for an external OCI runtime binary (runc; crun speaks the same CLI), behind BuiltinRuntime's API.

Same bundle, same contract: ``start``/``exec`` return a pid the caller can ``os.waitpid``. runc detaches its
container process (``run --detach``, ``exec --detach``), which then gets re-parented to the nearest *child
subreaper*; the adapter therefore marks the calling process PR_SET_CHILD_SUBREAPER (process-wide, idempotent),
so the container's PID 1 becomes the caller's child as soon as runc exits. Consequence for the caller: it also
inherits any other orphaned descendants and must reap them (an engine shim or the agent does anyway).

runc's one-line errors are mapped to the same error classes as the builtin runtime ("executable file not found"
and "no such file or directory" -> CommandNotFound 127, "permission denied" -> CommandNotExecutable 126).
Cgroups: runc's cgroupfs driver puts an absolute cgroupsPath at the same place as ours, so ``oom_killed`` and
``cgroup_paths`` reuse runner.engine.runtime.cgroups and read them before ``delete``.

Known gap: a terminal. runc only creates a pty itself and hands it over a --console-socket, while our API takes
the caller's pty as stdio; the adapter runs such a process with ``terminal: false`` on the given fds, so the
process sees a tty on 0-2 but has no controlling terminal (job control and ^C-to-foreground do not work).
Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from runner.engine.runtime import cgroups, linux
from runner.errors import CommandNotExecutable, CommandNotFound, ContainerStartError, PlatformError


def _error(stderr: bytes, what: str) -> ContainerStartError:
    text = stderr.decode("utf-8", "replace").strip()
    line = (text.splitlines()[-1] if text else f"{what} failed").replace('\\"', '"')
    for prefix in ("time=", "level=error msg="):
        if line.startswith(prefix) and 'msg="' in line:
            line = line.split('msg="', 1)[1].rsplit('"', 1)[0]
    low = line.lower()
    if "executable file not found" in low or "no such file or directory" in low and "exec" in low:
        return CommandNotFound(line)
    if "permission denied" in low and "exec" in low:
        return CommandNotExecutable(line)
    return ContainerStartError(f"{what}: {line}")


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

    def start(self, bundle: str, container_id: str, stdio: tuple[int, int, int]) -> int:
        self._subreaper()
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        if (config.get("process") or {}).get("terminal"):
            config["process"]["terminal"] = False  # see "Known gap" in the module docstring
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config, f)
        pid_file = os.path.join(bundle, "runc.pid")
        proc = subprocess.run(self._cmd("run", "--detach", "--bundle", bundle, "--pid-file", pid_file, container_id),
                              stdin=stdio[0], stdout=stdio[1], stderr=subprocess.PIPE)
        if proc.returncode != 0:
            err = _error(proc.stderr, "runc run")
            self.delete(bundle, container_id)
            raise err
        return self._read_pid(pid_file)

    def exec(self, bundle: str, container_id: str, init_pid: int, process: dict,
             stdio: tuple[int, int, int]) -> int:
        self._subreaper()
        process = dict(process, terminal=False)
        with tempfile.TemporaryDirectory(prefix="runner-exec-") as tmp:
            proc_file = os.path.join(tmp, "process.json")
            pid_file = os.path.join(tmp, "pid")
            with open(proc_file, "w") as f:
                json.dump(process, f)
            proc = subprocess.run(self._cmd("exec", "--detach", "--process", proc_file, "--pid-file", pid_file,
                                            container_id), stdin=stdio[0], stdout=stdio[1], stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise _error(proc.stderr, "runc exec")
            return self._read_pid(pid_file)

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
