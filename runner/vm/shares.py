"""Host directories shared with the guest over 9p, so ``-v /host/dir:/ctr`` works on the VM backend.

Like Docker Desktop, a machine shares a default set of host directories: the user's home and the system
temp dir (on macOS also ``/Users``, ``/Volumes`` and ``/private``, where ``/tmp`` and ``/var/folders``
really live). ``runner vm start --share DIR`` (repeatable) replaces that set; it is kept in the machine's
config. QEMU cannot add a 9p export to a running guest, so the set is fixed for one boot.

Each share is mounted in the guest at the *same absolute path* as on the host (its real path, symlinks
resolved), so the engine in the guest bind-mounts ``-v`` sources unchanged: the VM backend only resolves
a source to its real path and checks that it lies under a share. ``msize=512000`` because the default
small msize caps 9p at ~15 MB/s where 512000 gives ~225 MB/s write (shared/notes/measurements.md).
``cache=mmap``: no page-cache coherence promises 9p cannot keep, but mmap works (needed by some tools).

A share may not hide what the guest itself needs: ``/root`` (root's ``authorized_keys``: the host's ``/root``
over it locks SSH out), system directories, the engine's ``/var/lib/runner``. The default set leaves such a
directory out (root's home on a Linux host); ``--share`` refuses it. ``/tmp`` is fine: the agent keeps its
temp files on the data disk.

Windows hosts: QEMU for Windows has no virtfs, so nothing is shared and ``-v`` is refused with a hint.

Pure functions except :func:`default_dirs` (reads the home and temp dir) and :func:`resolve_source`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Iterable, Sequence

from runner.engine import DEFAULT_ROOT
from runner.errors import UsageError
from runner.vm.qemu_cmd import Share

MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"

# Guest directories a share must not be, be under, or contain (the guest's own system and runner's state).
GUEST_RESERVED = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run", "/sbin",
                  "/sys", "/usr", DEFAULT_ROOT, "/runner")


def reserved_reason(path: str) -> str | None:
    """Why ``path`` (real, absolute) cannot be mounted in the guest at the same path, or None."""
    for r in GUEST_RESERVED:
        if _under(path, r) or _under(r, path):
            return f"{path} would hide the VM's own {r}"
    return None


def default_dirs(os_name: str | None = None) -> list[str]:
    """The directories a machine shares when the user named none."""
    if os_name is None:
        from runner.vm.accel import host_os

        os_name = host_os()
    if os_name == "windows":
        return []
    dirs = [os.path.expanduser("~"), tempfile.gettempdir()]
    if os_name == "darwin":
        dirs += ["/Users", "/Volumes", "/private"]
    else:
        dirs.append("/tmp")
    return [d for d in normalize([d for d in dirs if os.path.isdir(d)]) if reserved_reason(d) is None]


def normalize(dirs: Iterable[str]) -> list[str]:
    """Real absolute paths, without duplicates or directories inside another share (mounted once)."""
    real = sorted({os.path.realpath(os.path.abspath(os.path.expanduser(d))) for d in dirs})
    out: list[str] = []
    for d in real:
        if not any(_under(d, parent) for parent in out):
            out.append(d)
    return out


def check_dirs(dirs: Sequence[str]) -> list[str]:
    """``--share`` values: existing directories, as absolute real paths."""
    missing = [d for d in dirs if not os.path.isdir(os.path.expanduser(d))]
    if missing:
        raise UsageError(f"cannot share {', '.join(missing)}: not a directory on this host")
    out = normalize(dirs)
    for d in out:
        why = reserved_reason(d)
        if why:
            raise UsageError(f"cannot share {d} with the VM: {why}",
                             hint="share a directory elsewhere (it is mounted in the VM at the same path)")
    return out


def tag_for(path: str) -> str:
    """A 9p mount tag (at most 31 bytes) that names the directory stably."""
    return "rs" + hashlib.sha256(path.encode()).hexdigest()[:16]


def to_shares(dirs: Sequence[str]) -> tuple[Share, ...]:
    return tuple(Share(d, tag_for(d)) for d in dirs)


def guest_config(dirs: Sequence[str]) -> dict[str, str]:
    """The guest config entries (``runner.vm.initrd``) from which the guest's init mounts every share at its
    host path after boot: ``TAG=HEXPATH`` words, the path hex-encoded so any name survives init's shell."""
    if not dirs:
        return {}
    return {"shares": " ".join(f"{tag_for(d)}={os.fsencode(d).hex()}" for d in dirs),
            "share_options": MOUNT_OPTIONS}


def failed_mounts(ready_text: str) -> list[str]:
    """The share paths the guest reported it could not mount (``SHARE-FAILED HEXPATH`` readiness lines)."""
    failed = []
    for line in ready_text.splitlines():
        word, _, hexpath = line.partition(" ")
        if word == "SHARE-FAILED":
            try:
                failed.append(os.fsdecode(bytes.fromhex(hexpath.strip())))
            except ValueError:
                failed.append(repr(hexpath))
    return failed


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def find_share(real_path: str, dirs: Sequence[str]) -> str | None:
    """The share that contains ``real_path`` (already resolved), if any."""
    for d in dirs:
        if _under(real_path, d):
            return d
    return None


def resolve_source(source: str) -> str:
    """A ``-v`` source as the guest sees it: its real path on the host (symlinks resolved, e.g. macOS
    ``/tmp`` -> ``/private/tmp``), since shares are mounted at their real paths."""
    return os.path.realpath(source)


def not_shared_error(source: str, dirs: Sequence[str], machine: str) -> UsageError:
    shared = ", ".join(dirs) if dirs else "none"
    return UsageError(
        f"cannot mount {source}: it is not in a directory shared with the VM (shared: {shared})",
        hint=f"move it under a shared directory, or share its parent and restart the machine: "
             f"runner vm stop --name {machine} && runner vm start --name {machine} --share DIR "
             f"(repeat --share for each directory; the list replaces the defaults)")
