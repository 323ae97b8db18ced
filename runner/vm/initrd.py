"""Per-VM configuration for the guest, delivered as an extra initramfs (pure Python, any host OS).

The guest trusts nothing it did not get from the host at boot: its SSH host key, the client's authorized
key, the agent token, the clock and an RNG seed travel in ``/runner/config.json`` inside a tiny newc cpio
archive that is appended to the image's base initrd. Linux unpacks concatenated initramfs archives in order,
so no guest-side tool, network round trip or trust-on-first-use is needed. The cpio is written here in pure
Python because macOS and Windows hosts have no ``cpio`` binary.

config.json contract (validated by :func:`validate_config`, read by ``vmimage/init``)::

    hostname        str    guest hostname
    ssh_host_key    str    the guest's SSH host key, OpenSSH private key PEM text (pinned by the host)
    authorized_keys str    OpenSSH authorized_keys text for root
    agent_token     str    hex; the agent (started later over SSH) requires it from every client
    agent_port      int    TCP port on the guest's loopback where the agent will listen
    time            float  host time (unix seconds) when the config was made; the guest's clock never lags it
    rng_seed        str    hex, 64 bytes; mixed into the guest's entropy pool
    timezone        str    "UTC" (the only zone the image ships)
  optional:
    shares          str    host directories shared over 9p, ``TAG=HEXPATH`` words (the guest path as hex
                           bytes: any path survives the shell); init mounts each after the data disk
    share_options   str    the 9p mount options for them (``runner.vm.shares.MOUNT_OPTIONS``)

With the snapshot fast start (``runner.vm.snapshot``) the same cpio also carries this runner's agent code,
``runner/agent/<version>/`` (see :func:`combined_initrd`), which init starts before its snapshot point.

The init script parses it with one sed call, so the file is written with one ``"key": value`` per line and
every string value must be ASCII without ``"``, ``'`` or ``\\`` (newlines are fine; they become ``\\n``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_TRAILER = "TRAILER!!!"
_REQUIRED = {
    "hostname": str, "ssh_host_key": str, "authorized_keys": str, "agent_token": str,
    "agent_port": int, "time": (int, float), "rng_seed": str, "timezone": str,
}
_OPTIONAL = {"shares": str, "share_options": str}

# newc mode bits
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000


class CpioWriter:
    """Writes a newc ("070701") cpio archive, the format the Linux initramfs unpacker reads.

    Entries are written in the order given; a directory must come before its contents. Owners are always
    root and mtimes fixed to 0 so the same input gives byte-identical archives.
    """

    def __init__(self, stream):
        self._out = stream
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        """Write the trailer and pad to 512 bytes, as GNU cpio does (the kernel skips zero padding)."""
        self._entry(_TRAILER, 0)
        pos = self._out.tell()
        self._out.write(b"\0" * (-pos % 512))


def read_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    """Parse a newc archive into (name, mode, data) tuples, stopping at the trailer (used by tests and checks)."""
    entries, pos = [], 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == _TRAILER:
            return entries
        entries.append((name, mode, body))


def validate_config(config: dict) -> None:
    """Raise ValueError naming every problem: missing/extra keys, wrong types, values init cannot parse."""
    problems = []
    for key, typ in _REQUIRED.items():
        if key not in config:
            problems.append(f"missing {key}")
        elif isinstance(config[key], bool) or not isinstance(config[key], typ):
            problems.append(f"{key} has type {type(config[key]).__name__}")
    for key, typ in _OPTIONAL.items():
        if key in config and not isinstance(config[key], typ):
            problems.append(f"{key} has type {type(config[key]).__name__}")
    problems += [f"unknown key {key}" for key in config if key not in _REQUIRED and key not in _OPTIONAL]
    for key, value in config.items():
        if isinstance(value, str) and (not value.isascii() or any(c in value for c in "\"'\\")):
            problems.append(f"{key} must be ASCII without quotes, apostrophes or backslashes")
    seed = config.get("rng_seed")
    if isinstance(seed, str) and (len(seed) != 128 or any(c not in "0123456789abcdef" for c in seed)):
        problems.append("rng_seed must be 64 bytes as lowercase hex")
    if config.get("timezone") not in (None, "UTC"):
        problems.append("timezone must be UTC")
    if problems:
        raise ValueError("invalid guest config: " + "; ".join(problems))


def config_json(config: dict) -> bytes:
    """The exact bytes of /runner/config.json: one key per line, so the guest's sed can read it."""
    validate_config(config)
    return json.dumps(config, indent=0, sort_keys=True).encode() + b"\n"


def make_config_initrd(config: dict, path: str | os.PathLike) -> None:
    """Write the per-VM cpio holding /runner/config.json (0600, in a 0700 dir: it holds private keys)."""
    payload = config_json(config)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        _write_config_cpio(out, payload)


def _write_config_cpio(stream, payload: bytes, agent: tuple[str, dict[str, bytes]] | None = None) -> None:
    cpio = CpioWriter(stream)
    cpio.add_dir("runner", 0o700)
    cpio.add_file("runner/config.json", payload, 0o600)
    if agent is not None:
        _add_agent_tree(cpio, *agent)
    cpio.close()


def _add_agent_tree(cpio: CpioWriter, version: str, files: dict[str, bytes]) -> None:
    """``runner/agent/<version>/<files>`` plus ``.complete``: the same tree ``runner.vm.ship`` unpacks
    over SSH, so the agent finds its version the same way (its directory's name)."""
    if not re.fullmatch(r"[0-9a-f]{16}", version):
        raise ValueError(f"invalid agent version {version!r}")
    base = f"runner/agent/{version}"
    made = {"runner"}
    for name in sorted(files):
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid agent file name {name!r}")
        # Parents first (the kernel's unpacker creates nothing implicitly): runner/agent, the version, the rest.
        dirs = ["runner/agent", base] + [f"{base}/{'/'.join(parts[:i])}" for i in range(1, len(parts))]
        for d in dirs:
            if d not in made:
                cpio.add_dir(d, 0o700)
                made.add(d)
        cpio.add_file(f"{base}/{name}", files[name], 0o600)
    cpio.add_file(f"{base}/.complete", b"", 0o600)


def combined_initrd(base: str | os.PathLike, config: dict, out: str | os.PathLike,
                    agent: tuple[str, dict[str, bytes]] | None = None) -> None:
    """Write ``out`` = base initrd + config cpio, the file given to QEMU's -initrd (0600: it holds keys).

    The base initrd ends 512-byte aligned; the kernel unpacks the appended archive over the first.
    ``agent``: (version, shipped files) to put the agent's code in the guest at boot (snapshot fast start).
    """
    payload = config_json(config)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst, open(base, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.write(b"\0" * (-dst.tell() % 4))
            _write_config_cpio(dst, payload, agent)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
