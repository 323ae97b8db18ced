"""Docker's security options applied to an OCI config: capabilities, seccomp, no-new-privileges, devices,
privileged mode.

``oci.make_config`` builds the default container (Docker's 14 capabilities, masked paths, the device
allow-list); ``apply`` then changes that config for ``--cap-add/--cap-drop``, ``--security-opt``,
``--device`` and ``--privileged`` with Docker's rules, and writes the seccomp filter into ``linux.seccomp``
so the built-in runtime and runc enforce the same thing:

* capabilities (moby's TweakCapabilities): privileged -> every capability the kernel knows; ``--cap-add ALL``
  -> all minus the drops; ``--cap-drop ALL`` -> only the adds; otherwise the defaults minus the drops plus the
  adds (an add wins over a drop of the same capability).
* seccomp: the default profile (or the ``seccomp=<JSON>`` one) resolved for the final bounding set and the
  machine's architecture (see runner.engine.runtime.seccomp); none with ``seccomp=unconfined`` or privileged.
* privileged (as Docker): no masked or read-only /proc paths, /sys and the cgroup mount writable, every device
  allowed in the cgroup, and the host's device nodes in the container's /dev, subdirectories included.
* ``--device /dev/x[:/dev/y][:rwm]``: the host node's type and numbers become a node in the container and a
  cgroup rule with those permissions, so exactly that device is usable.

Pure except for ``host_device``/``host_devices``, which stat the machine's /dev (the guest's in the VM: the
devices of the machine the engine runs on, as with a remote Docker daemon). Standard library only.
"""

from __future__ import annotations

import os
import stat

from runner.engine.runtime import caps as capsmod
from runner.errors import ContainerStartError
from runner.spec import normalize_cap, parse_device, security_opt_split

# Host /dev entries a privileged container does not get (Docker leaves these to its own mounts).
_SKIP_HOST_DEV = ("console", "ptmx", "tty", "pts", "shm", "mqueue", "core", "fd", "stdin", "stdout", "stderr")
# Directories under /dev that hold no pass-through devices, at any depth (runc's list).
_SKIP_DEV_DIRS = ("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev")


def own_bounding() -> int:
    """This process's bounding set: "all capabilities" can only mean the ones we still have (a host may lack
    some, e.g. CAP_SYS_RESOURCE here; capset of a capability outside it fails)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return (1 << 64) - 1


def tweak_caps(cap_add: list[str], cap_drop: list[str], privileged: bool, last_cap: int | None = None,
               bounding: int | None = None) -> list[str]:
    """The container's capability set by Docker's rules (see the module docstring)."""
    adds = [normalize_cap(c) for c in cap_add or []]
    drops = [normalize_cap(c) for c in cap_drop or []]
    if not privileged and "ALL" not in adds:
        if not adds and not drops:
            return list(capsmod.DOCKER_DEFAULT_CAPS)
        if "ALL" in drops:
            return [c for c in adds if c != "ALL"]
        out = [c for c in capsmod.DOCKER_DEFAULT_CAPS if c not in drops]
        return out + [c for c in adds if c not in out]
    last = capsmod.last_cap() if last_cap is None else last_cap
    bnd = own_bounding() if bounding is None else bounding
    every = [c for i, c in enumerate(capsmod.CAPS[:last + 1]) if bnd >> i & 1]
    return every if privileged else [c for c in every if c not in drops]


def set_caps(process: dict, caps: list[str]) -> None:
    """An OCI process's capabilities as Docker sets them: bounding = effective = permitted = ``caps``."""
    process["capabilities"] = {"bounding": list(caps), "effective": list(caps), "permitted": list(caps),
                               "inheritable": [], "ambient": []}


def options(spec) -> tuple[bool, str | None]:
    """(no_new_privileges, seccomp) from ``--security-opt``: seccomp is None (default), "unconfined" or JSON."""
    nnp, seccomp = True, None
    for opt in spec.security_opt or []:
        key, eq, value = security_opt_split(opt)
        if key == "no-new-privileges":
            nnp = not eq or value == "true"
        elif key == "seccomp":
            seccomp = value
    return nnp, seccomp


def host_device(path: str, ctr_path: str | None = None) -> dict:
    """The OCI ``linux.devices`` entry for a host device node; ContainerStartError (Docker's text) if none."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ContainerStartError(f"error gathering device information while adding custom device \"{path}\": "
                                  f"{(exc.strerror or str(exc)).lower()}",
                                  hint="give a device node that exists on the machine running the containers") from exc
    if stat.S_ISCHR(st.st_mode):
        typ = "c"
    elif stat.S_ISBLK(st.st_mode):
        typ = "b"
    else:
        raise ContainerStartError(f"error gathering device information while adding custom device \"{path}\": "
                                  "not a device node", hint="--device takes a character or block device")
    return {"path": ctr_path or path, "type": typ, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def host_devices(root: str = "/dev", _top: str | None = None) -> list[dict]:
    """Every character and block device under the host's /dev, subdirectories included (/dev/net/tun,
    /dev/mapper/*, /dev/input/*, /dev/snd/*, /dev/cpu/N/*): what a privileged Docker container sees. The
    walk is runc's (libcontainer/devices GetDevices, which moby calls for --privileged): symlinks, fifos
    and sockets are not devices, the pseudo-filesystem and bookkeeping directories (pts, shm, fd, mqueue,
    .lxc, .lxd-mounts, .udev) are skipped at any depth; at the top, the nodes the runtime makes itself
    (console, ptmx, tty, ...) are left to it."""
    top = root if _top is None else _top
    out = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if root == top and entry.name in _SKIP_HOST_DEV or entry.name == "console":
            continue
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in _SKIP_DEV_DIRS:
                    out.extend(host_devices(entry.path, top))
                continue
        except OSError:
            continue
        try:
            dev = host_device(entry.path)
        except ContainerStartError:
            continue  # fifos, sockets, plain files, or gone meanwhile: not device nodes
        dev["path"] = "/dev/" + os.path.relpath(entry.path, top)
        out.append(dev)
    return out


def check(spec) -> None:
    """What ``create`` can verify up front on the machine: every ``--device`` exists and is a device."""
    for text in spec.devices or []:
        host, _, _ = parse_device(text)
        host_device(host)


def _privileged(config: dict) -> None:
    lin = config["linux"]
    lin["maskedPaths"], lin["readonlyPaths"] = [], []
    for m in config.get("mounts") or []:
        if m.get("destination") in ("/sys", "/sys/fs/cgroup"):
            m["options"] = [o for o in m.get("options") or [] if o != "ro"]
    lin.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    lin["devices"] = host_devices()


def apply(config: dict, spec, arch: str | None = None) -> dict:
    """Change the default OCI ``config`` for the spec's security options (module docstring); returns it."""
    from runner.engine.runtime import seccomp as seccompmod
    caps = tweak_caps(spec.cap_add, spec.cap_drop, spec.privileged)
    process = config["process"]
    set_caps(process, caps)
    nnp, profile_text = options(spec)
    process["noNewPrivileges"] = nnp
    lin = config["linux"]
    if spec.privileged:
        _privileged(config)
    for text in spec.devices or []:
        host, ctr, perms = parse_device(text)
        dev = host_device(host, ctr)
        lin["devices"] = [d for d in lin.get("devices") or [] if d["path"] != ctr] + [dev]
        lin.setdefault("resources", {}).setdefault("devices", []).append(
            {"allow": True, "type": dev["type"], "major": dev["major"], "minor": dev["minor"], "access": perms})
    if spec.privileged or profile_text == "unconfined":
        lin.pop("seccomp", None)
        return config
    profile = seccompmod.parse_profile(profile_text) if profile_text else seccompmod.load_default()
    lin["seccomp"] = seccompmod.to_oci(profile, caps, arch or seccompmod.machine_arch())
    return config
