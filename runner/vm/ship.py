"""Ship this runner's engine code into the guest and start the agent from it.

Why ship instead of baking the agent into the VM image: the guest then always runs exactly the host's code,
and changing runner never needs a new image. The shipped files are the stdlib-only part of runner
(``protocol.SHIPPED_FILES`` and ``SHIPPED_TREES``); their hash is the protocol version, computed the same
way by the agent over its own files, so the handshake proves both ends run identical code.

Per boot (``ensure_agent``), with one SSH connection:

1. open a ``direct-tcpip`` channel to the agent port and read its CHALLENGE, which names its version (no
   token needed for that). Same version: done. This is the only step once the agent runs.
2. otherwise one SSH exec, with a tar.gz of the files (~100 KB) on its stdin: unless
   ``/var/lib/runner/agent/<version>/.complete`` exists (the data disk keeps it across reboots), unpack into
   a temp dir and rename it into place, so a half-unpacked tree is never used; then start
   ``python3 -m runner.agent.server --daemon`` from there. The daemon takes a lock in the guest, reuses an
   agent of the same version, replaces one of another version, and returns once it listens.

Not SFTP: the guest's dropbear has no sftp-server, and stdin of the one exec we need anyway is cheaper.

Standard library only at import time (paramiko objects are passed in): every VM CLI call imports it for
:func:`local_version`. The rule for what is shipped (:func:`runner.agent.protocol.collect_sources`) lives in
the protocol, which both ends keep.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from runner.agent import protocol as P
from runner.errors import VMError

GUEST_CONFIG = "/runner/config.json"  # the per-boot config from the host; holds agent_token
START_TIMEOUT = 120.0  # a first agent start under TCG: python3 plus the engine's imports, ~1-3 s here

_local: tuple[str, dict[str, bytes]] | None = None


def package_root() -> Path:
    """The directory that holds the ``runner`` package this code was imported from."""
    return Path(__file__).resolve().parents[2]


def local_sources() -> tuple[str, dict[str, bytes]]:
    """This runner's protocol version and shipped files (read once per process)."""
    global _local
    if _local is None:
        files = P.collect_sources(package_root())
        _local = (P.version_of(files), files)
    return _local


def local_version() -> str:
    return local_sources()[0]


def tarball(files: dict[str, bytes]) -> bytes:
    """A deterministic tar.gz of ``files`` (fixed owner, mode and time: same files, same bytes)."""
    import gzip  # here, like logging below: every VM CLI call imports this module for local_version()
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 1
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def running_version(transport: Any, port: int, timeout: float = 10.0) -> str | None:
    """The version of the agent listening on the guest's ``port``, or None if nothing answers there."""
    # paramiko logs a refused channel at ERROR; with no logging configured Python would print it to the
    # user's terminal, yet "no agent yet" is the expected answer on a fresh boot.
    import logging

    logging.getLogger("paramiko.transport").addHandler(logging.NullHandler())
    try:
        chan = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=timeout)
    except Exception:  # paramiko.ChannelException: the guest refused the connection (no agent yet)
        return None
    try:
        chan.settimeout(timeout)
        decoder = P.Decoder(P.FROM_SERVER)
        frames: list[P.Frame] = []
        while not frames:
            data = chan.recv(65536)
            if not data:
                return None
            frames = decoder.feed(data)
        return P.parse_challenge(frames[0])[0] if frames[0].kind == P.CHALLENGE else None
    except (OSError, P.ProtocolError):
        return None
    finally:
        chan.close()


def start_script(version: str, port: int) -> str:
    """The one shell command that installs the tree from stdin (unless present) and starts the agent."""
    # The guest's engine root is its data disk: engine state, images, and the shipped agent trees. (Imported
    # here: every VM CLI call imports this module, only the slow path starts an agent.)
    from runner.engine import DEFAULT_ROOT as guest_root

    agent_base = f"{guest_root}/agent"
    d = shlex.quote(f"{agent_base}/{version}")
    base = shlex.quote(agent_base)
    return "\n".join([
        "set -e",
        "umask 077",
        f"mkdir -p {base}",
        f"if [ -e {d}/.complete ]; then cat > /dev/null; else",  # stdin is always drained: no stalled send
        f"  t=$(mktemp -d {base}/.unpack.XXXXXX)",
        "  tar -xzf - -C \"$t\"",
        "  touch \"$t/.complete\"",
        f"  rm -rf {d}",
        f"  mv \"$t\" {d}",
        "fi",
        # Trees of other runner versions are dead weight on the data disk once this one runs.
        f"for old in {base}/* {base}/.unpack.*; do [ \"$old\" = {d} ] || rm -rf \"$old\"; done",
        f"cd {d}",
        f"exec python3 -m runner.agent.server --guest --port {int(port)} --token-file {shlex.quote(GUEST_CONFIG)} "
        f"--root {shlex.quote(guest_root)} --daemon",
    ])


def ensure_agent(ssh_client: Any, port: int) -> str:
    """Make sure the agent of this runner's version serves ``port`` in the guest; return its version."""
    from runner.vm import ssh

    version, files = local_sources()
    if running_version(ssh_client.get_transport(), port) == version:
        return version
    code, out, err = ssh.run(ssh_client, start_script(version, port), timeout=START_TIMEOUT,
                             stdin=tarball(files))
    if code != 0:
        detail = (err or out).decode(errors="replace").strip().splitlines()
        raise VMError(f"cannot start the runner agent in the VM: {detail[-1] if detail else f'exit code {code}'}",
                      hint="see /run/runner/agent.log in the VM (`runner vm ssh`)")
    return version
