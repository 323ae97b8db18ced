"""``runner exec``: a new process inside a running container, attached to the caller's stdio.

The runtime does the entering (setns, cgroup, capabilities); this module only wires stdio. Without a
terminal the process writes straight into the caller's fds. With one, the runtime makes a pty inside the
container and hands its master back here; a thread pumps it, because the caller (the CLI natively, the
agent in the guest) may hand us pipes rather than a terminal.
"""

from __future__ import annotations

import json
import os
import socket
import threading

from runner.stdio import Stdio, TermSize
from runner.engine import logs
from runner.engine.process import AttachedProcess, exit_code_of
from runner.engine.state import ContainerRecord
from runner.spec import ExecSpec


class ExecProcess(AttachedProcess):
    """An exec'd process is the caller's own child: wait for it directly, then for its output pump."""

    def __init__(self, cid: str, pid: int, master: int | None, pump: threading.Thread | None):
        super().__init__(cid, pid, master)
        self._pump = pump

    def wait(self) -> int:
        if self._code is None:
            _, status = os.waitpid(self.pid, 0)
            self._code = exit_code_of(status)
            if self._pump is not None:
                self._pump.join()
            self._close_master()
        return self._code


def start_exec(engine, rec: ContainerRecord, spec: ExecSpec, stdio: Stdio, size: TermSize | None) -> ExecProcess:
    from runner.engine.runtime import oci
    bundle = engine.bundle_dir(rec.id)
    runtime = engine.runtime_for(rec.runtime)  # the one the container was created with
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    # The container's own /etc/passwd, seen through its PID 1's root: names resolve as they do inside.
    user = spec.user
    if user is not None:
        uid, gid, gids = oci.resolve_user(user, f"/proc/{rec.pid}/root")
    else:
        u = config["process"]["user"]
        uid, gid, gids = u["uid"], u["gid"], u.get("additionalGids", [])
    process = oci.exec_process(spec, config, uid, gid, gids)
    if spec.privileged:
        from runner.engine.runtime import security
        security.set_caps(process, security.tweak_caps([], [], True))
    if spec.tty and size is not None:
        process["consoleSize"] = {"height": size.rows, "width": size.cols}
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if spec.tty:
            # As for run -t: the pty comes from the container's own devpts via a console socket.
            console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                pid = runtime.exec(bundle, rec.id, rec.pid, process, (devnull, devnull, devnull),
                                   console_socket=theirs.fileno())
            finally:
                theirs.close()
            try:
                _, fds, _, _ = socket.recv_fds(console, 16, 1)
            finally:
                console.close()
            master = fds[0]
            stdin = (stdio.stdin, master) if spec.interactive and stdio.stdin is not None else None
            pump = threading.Thread(target=logs.relay, args=({master: logs.STDOUT}, None,
                                                             {logs.STDOUT: stdio.stdout}, stdin), daemon=True)
            pump.start()
            return ExecProcess(rec.id, pid, master, pump)
        cin = stdio.stdin if spec.interactive and stdio.stdin is not None else devnull
        pid = runtime.exec(bundle, rec.id, rec.pid, process, (cin, stdio.stdout, stdio.stderr))
        return ExecProcess(rec.id, pid, None, None)
    finally:
        os.close(devnull)
