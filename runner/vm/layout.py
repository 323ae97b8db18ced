"""Where a machine's files live, and nothing else.

Every machine owns one directory, ``<state>/machines/<name>/``, where ``<state>`` is platformdirs'
``user_state_dir("runner")`` or ``$RUNNER_VM_STATE_DIR`` (tests point it at a temp dir). Keeping every file
name in this one module means status, start, stop and rm can never disagree about what belongs to a machine.

Files of a machine (all created 0600, the directory 0700, because they hold private keys and control
sockets that give root in the guest)::

    lock            fcntl/msvcrt lock: one CLI call at a time starts, stops or removes the machine
    config.json     the machine's settings: cpus, memory, disk size (survive restarts)
    run.json        the running QEMU: pid, process identity, ssh port, QMP address, accel, start time.
                    One atomic record instead of separate pid/port files, so a crash can never leave a
                    pid without its port; it is deleted on a clean stop and distrusted after a crash.
    qmp.sock        QMP control socket (Unix); on Windows QMP listens on a 127.0.0.1 TCP port kept in run.json
    ready.log       what the guest wrote to the ``org.runner.ready`` virtio-serial port (``READY``)
    serial.log      the guest console
    qemu.log        QEMU's own stderr (bad flags, accelerator errors)
    data.qcow2      the persistent data disk (images and containers survive VM restarts)
    initrd.img      base initrd + this machine's guest config.json (per machine: it carries its keys)
    keys/           SSH client key and the guest host key (see runner.vm.keys)
    agent.sock      the connection cache's Unix socket (runner.vm.muxctl; moved to a short temp path
                    when too long, like qmp.sock and control.sock)
    agent-mux.pid   the connection cache's pid; agent-mux.lock: one cache per machine; agent-mux.log its log
    forwards.json   host port forwards of published container ports (runner.backends.vm), per boot
    forwards.lock   fcntl lock guarding forwards.json
    snapshot.state  the saved VM state later starts resume (runner.vm.snapshot; holds the host key: 0600)
    snapshot.json   what that state is valid for (its key) and its size
    control.sock    the guest's org.runner.control port (QEMU listens) where the host sends the GO line

Machine-independent: ``<state>/accel.json`` caches the accelerator probe verdicts.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from runner.errors import UsageError
from runner.records import FrozenRecord

STATE_ENV = "RUNNER_VM_STATE_DIR"
DEFAULT_MACHINE = "default"

# Unix socket paths are limited to sizeof(sun_path): 108 bytes on Linux, 104 on macOS (where the state dir
# is ~/Library/Application Support/runner/..., already long). Beyond this QEMU fails to bind.
_SUN_PATH_MAX = 100

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def state_root() -> Path:
    """The runner VM state directory: ``$RUNNER_VM_STATE_DIR`` or platformdirs' user state dir."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override)
    import platformdirs  # lazy: the native CLI path must not pay for it

    return Path(platformdirs.user_state_dir("runner"))


def accel_cache_path() -> Path:
    """The probe verdict cache, shared by all machines (it describes the host, not a machine)."""
    return state_root() / "accel.json"


def validate_name(name: str) -> str:
    """Machine names become directory names and guest hostnames: keep them to a safe alphabet."""
    if not _NAME_RE.match(name):
        raise UsageError(f"invalid machine name {name!r}",
                         hint="use letters, digits, '.', '_' or '-' (up to 63 characters)")
    return name


class MachinePaths(FrozenRecord):
    """The files of one machine. Pure: building it creates nothing."""

    __slots__ = ("name", "dir")
    _fields = __slots__

    def __init__(self, name: str, dir: Path):
        self._init(name=name, dir=dir)

    @classmethod
    def for_name(cls, name: str, root: Path | None = None) -> "MachinePaths":
        validate_name(name)
        return cls(name, (root or state_root()) / "machines" / name)

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def run(self) -> Path:
        return self.dir / "run.json"

    @property
    def ready_log(self) -> Path:
        return self.dir / "ready.log"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def data_disk(self) -> Path:
        return self.dir / "data.qcow2"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    @property
    def known_hosts(self) -> Path:
        """An OpenSSH known_hosts holding only the pinned host key, for `runner vm ssh` via the ssh binary."""
        return self.dir / "known_hosts"

    @property
    def qmp_socket(self) -> Path:
        return self._socket("qmp.sock", "qmp")

    @property
    def agent_socket(self) -> Path:
        """The connection cache's socket (runner.vm.muxctl), where every CLI call reaches the agent."""
        return self._socket("agent.sock", "agent")

    @property
    def control_socket(self) -> Path:
        """The guest's org.runner.control port (QEMU listens): the snapshot fast start's GO line."""
        return self._socket("control.sock", "control")

    def _socket(self, name: str, suffix: str) -> Path:
        """A Unix socket in the machine dir; moved to a short per-user temp dir when the state path is too long
        for sun_path (named by a hash of the machine dir: stable across calls, distinct per machine)."""
        sock = self.dir / name
        if len(os.fsencode(sock)) <= _SUN_PATH_MAX:
            return sock
        digest = hashlib.sha256(os.fsencode(self.dir)).hexdigest()[:16]
        return short_socket_dir() / f"{digest}.{suffix}"

    @property
    def agent_mux_pid(self) -> Path:
        return self.dir / "agent-mux.pid"

    @property
    def agent_mux_lock(self) -> Path:
        return self.dir / "agent-mux.lock"

    @property
    def agent_mux_holder(self) -> Path:
        """Who holds agent-mux.lock: pid, process identity, the boot it serves, whether it serves yet."""
        return self.dir / "agent-mux.holder"

    @property
    def agent_mux_log(self) -> Path:
        return self.dir / "agent-mux.log"

    @property
    def forwards(self) -> Path:
        """Host port forwards for published container ports (they die with QEMU: a runtime file)."""
        return self.dir / "forwards.json"

    @property
    def forwards_lock(self) -> Path:
        return self.dir / "forwards.lock"

    def runtime_files(self) -> list[Path]:
        """Files that describe one boot; stale after a crash and removed before the next start."""
        return [self.run, self.qmp_socket, self.ready_log, self.forwards]


def short_socket_dir() -> Path:
    """A short private directory for sockets whose natural path exceeds sun_path."""
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir() if sys.platform != "darwin" else "/tmp") / f"runner-{uid}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and restrict it to the owner: it will hold keys and sockets."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Atomically write a 0600 file (temp file in the same dir, fsync, rename), so readers see old or new."""
    from runner import procs  # here: every CLI call imports this module, few write a file

    procs.write_atomic(path, data, 0o600)

