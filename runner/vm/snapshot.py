"""Snapshot fast start: resume a machine from its saved state instead of booting it.

A TCG boot takes 7-8 s to SSH; loading a saved state takes well under 2 s. So the first full boot of a
machine saves the VM's state (QEMU ``migrate`` to a file), and later starts launch QEMU with ``-incoming``
on that file. The state is taken at one fixed point in the guest's init (``wait_for_go`` in vmimage/init)::

    cold boot:  kernel, modules, mounts, network, dropbear's host key (per machine), acpid, the engine's
                network modules, and the agent (from the code the host put in the config initramfs,
                imports done: its start is the slowest part of a first container call under TCG)
                -> guest writes WAITING to org.runner.ready and blocks reading org.runner.control
                -> host: migrate to snapshot.state (saved once), cont
    both:       host sends  GO <unix time> <rng seed> <agent token>  on org.runner.control
                -> guest: moves its clock forward, mixes the seed into its RNG, stores the token,
                   mounts the data disk (dropping block buffers cached before the snapshot), has the
                   agent force a CRNG reseed (it sees the new token; it then also brings up the default
                   network), mounts the shared directories, starts dropbear, writes READY

Why there: the data disk is not mounted yet (a state holding a mounted ext4 would be stale as soon as the
disk changes, and resuming it would corrupt the disk), and nothing per boot has been used yet: the clock,
the RNG and this boot's agent token come with the GO line. The state holds this machine's SSH host key
(dropbear's converted copy), so it is per machine, 0600 in the 0700 machine dir, like the keys themselves.

The state is only used when its key matches: a hash of QEMU's argv with the per-boot values left out (so
memory, cpus, devices, kernel and root disk paths, shares), the QEMU binary, the image manifest (image
version, recipe, artifact hashes), both public keys and the agent's version (the hash of its code). Anything else is a cold boot that saves a new one.
A resume that fails for any reason (QEMU refuses the state, the guest does not answer) discards the state
and boots normally, with a warning (``runner.vm.machine``).

Not on Windows hosts: QEMU's ``exec:`` migration and the Unix control socket are POSIX-only there.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from runner.errors import VMError

STATE = "snapshot.state"
META = "snapshot.json"
CONTROL = "control.sock"
SAVE_TIMEOUT = 120.0


ENV = "RUNNER_VM_SNAPSHOT"  # "0" turns the fast start off (every start is a full boot, as before)


def enabled(os_name: str) -> bool:
    return os_name != "windows" and os.environ.get(ENV, "1") != "0"


def state_path(machine_dir: Path) -> Path:
    return machine_dir / STATE


def meta_path(machine_dir: Path) -> Path:
    return machine_dir / META


def key(argv: list[str], ssh_port: int, extra: dict[str, Any]) -> str:
    """What the saved state depends on. The SSH forward's host port changes every boot and does not reach
    the guest, so it is left out; everything else in the argv must be the same."""
    fwd = f"127.0.0.1:{ssh_port}-"
    normal = [a.replace(fwd, "127.0.0.1:PORT-") for a in argv]
    blob = json.dumps({"argv": normal, **extra}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def file_identity(path: str | os.PathLike) -> str:
    """Cheap identity of a big file that never changes in place without its mtime changing (QEMU binary)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def usable(machine_dir: Path, wanted_key: str) -> Path | None:
    """The saved state if there is one for exactly this key, else None."""
    try:
        meta = json.loads(meta_path(machine_dir).read_text())
        path = state_path(machine_dir)
        if meta.get("key") == wanted_key and path.stat().st_size == meta.get("size"):
            return path
    except (OSError, ValueError, AttributeError):
        pass
    return None


def incoming_uri(path: Path) -> str:
    return "exec:cat " + shlex.quote(str(path))


def discard(machine_dir: Path) -> None:
    for path in (meta_path(machine_dir), state_path(machine_dir),
                 state_path(machine_dir).with_name(STATE + ".tmp")):
        path.unlink(missing_ok=True)


def save(qmp: Any, machine_dir: Path, state_key: str, timeout: float = SAVE_TIMEOUT) -> dict:
    """Save the (waiting) guest's state with QEMU's migration to a file; QEMU is left paused (postmigrate):
    the caller resumes it with ``cont``. Returns the size and seconds taken."""
    from runner.vm import layout

    discard(machine_dir)
    tmp = state_path(machine_dir).with_name(STATE + ".tmp")
    began = time.monotonic()
    # QEMU runs under umask 077 (see Machine._spawn), so the file cat creates is 0600 from the start.
    qmp.execute("migrate", {"uri": "exec:cat > " + shlex.quote(str(tmp))})
    deadline = began + timeout
    while True:
        status = (qmp.execute("query-migrate") or {}).get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            if status not in ("failed", "cancelled"):
                qmp.execute("migrate_cancel")
            tmp.unlink(missing_ok=True)
            raise VMError(f"saving the VM state failed (migration {status})")
        time.sleep(0.02)
    if os.name == "posix":
        os.chmod(tmp, 0o600)
    size = tmp.stat().st_size
    os.replace(tmp, state_path(machine_dir))
    layout.write_private(meta_path(machine_dir), json.dumps(
        {"key": state_key, "size": size, "saved_at": time.time()}, indent=2) + "\n")
    return {"size": size, "seconds": round(time.monotonic() - began, 3)}


def go_line(token: str) -> bytes:
    """GO <unix time> <64 bytes of fresh entropy, hex> <this boot's agent token>."""
    return f"GO {time.time():.3f} {secrets.token_hex(64)} {token}\n".encode()


def send_go(control: str, token: str, timeout: float = 5.0) -> socket.socket:
    """Send the GO line; returns the connected socket, which the caller keeps open until the guest is ready
    (closing it at once could make QEMU drop bytes the guest has not taken yet)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(control)
        sock.sendall(go_line(token))
    except OSError:
        sock.close()
        raise
    return sock
