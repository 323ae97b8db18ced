"""ContainerSpec + image config -> OCI runtime-spec ``config.json`` (pure), plus safe lookups inside a rootfs.

``make_config`` and ``exec_process`` are pure functions of their arguments, so every Docker compatibility rule
(entrypoint/cmd resolution, environment order, default mounts, masked paths, the 14 default capabilities) is
unit-tested without root. The output is a plain OCI 1.0.2 config that runc accepts too; that is the contract
between the engine and a runtime (see runner.engine.runtime.builtin and .runc).

Docker rules followed here, with the reason when it is not obvious:

* args: ``--entrypoint`` replaces the image's Entrypoint *and* clears the image's Cmd (a Cmd written for
  another entrypoint is meaningless); a command given by the user replaces Cmd only.
* env: PATH (default when the image has none), HOSTNAME, TERM=xterm with a tty, then the image's Env, then the
  user's ``-e`` (each replacing a same-named earlier entry in place), then HOME from the user's passwd entry when
  still unset (runc's libcontainer does that last step; Docker users rely on it).
* rlimits: RLIMIT_NOFILE soft = hard = the current hard limit. Docker raises it to 1048576, but raising above the
  hard limit needs CAP_SYS_RESOURCE, which some hosts (this one) do not have in their bounding set.
* mounts: the Docker defaults, then ``etc_files`` (hosts, hostname, resolv.conf) as bind mounts, then the user's
  volumes sorted by path depth so /a is mounted before /a/b.
* resources.devices: deny all, then runc's default allow-list (the nodes we create, ptys, and mknod-only for
  everything, which is what makes Docker's CAP_MKNOD harmless).

``resolve_user`` and ``open_in_root`` read the container's rootfs. They never follow a symlink out of it:
every component is opened relative to the previous one with O_NOFOLLOW and symlinks are resolved by hand as if
the rootfs were ``/`` (the technique of filepath-securejoin/openat2 RESOLVE_IN_ROOT). Standard library only.
"""

from __future__ import annotations

import os
import stat

from runner.engine.runtime.caps import DOCKER_DEFAULT_CAPS
from runner.errors import ContainerStartError

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

DEFAULT_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["ro", "nosuid", "noexec", "nodev"]},
]


def _dev_rule(typ: str, major: int | None, minor: int | None, access: str = "rwm") -> dict:
    return {"allow": True, "type": typ, "major": major, "minor": minor, "access": access}


DEFAULT_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    _dev_rule("c", None, None, "m"), _dev_rule("b", None, None, "m"),
    _dev_rule("c", 1, 3), _dev_rule("c", 1, 5), _dev_rule("c", 1, 7), _dev_rule("c", 1, 8), _dev_rule("c", 1, 9),
    _dev_rule("c", 5, 0), _dev_rule("c", 5, 1), _dev_rule("c", 5, 2), _dev_rule("c", 136, None),
]
"""deny-all, mknod of anything, then null zero full random urandom tty console ptmx and the pts ptys."""


# ------------------------------------------------------------------------------------------------ pure builders

def _image_cfg(image_config: dict | None) -> dict:
    """Accept the whole image config JSON ({"config": {...}}) or just its inner "config" object."""
    cfg = image_config or {}
    inner = cfg.get("config")
    return inner if isinstance(inner, dict) else cfg


def resolve_args(spec, image_config: dict | None) -> list[str]:
    """Docker's entrypoint/cmd rule (see module docstring). Raises ContainerStartError when nothing to run."""
    cfg = _image_cfg(image_config)
    if spec.entrypoint is not None:
        entry, cmd = list(spec.entrypoint), list(spec.command or [])
    else:
        entry = list(cfg.get("Entrypoint") or [])
        cmd = list(spec.command) if spec.command is not None else list(cfg.get("Cmd") or [])
    args = entry + cmd
    if not args:
        raise ContainerStartError("no command specified",
                                  hint="give a command after the image name, or use an image with a CMD")
    return args


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """Replace same-named entries in place, append new ones (Docker's ReplaceOrAppendEnvValues)."""
    out = list(base)
    index = {e.split("=", 1)[0]: i for i, e in enumerate(out)}
    for item in overrides:
        if "=" not in item:
            continue  # "-e NAME" without a value is resolved by the CLI from its own environment
        key = item.split("=", 1)[0]
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def _caps(names: list[str]) -> dict:
    return {"bounding": list(names), "effective": list(names), "permitted": list(names),
            "inheritable": [], "ambient": []}


def _nofile_hard() -> int:
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1048576 if hard == resource.RLIM_INFINITY else int(hard)


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def _user_mount(m, volumes_root: str) -> dict:
    """One -v/--mount/--tmpfs as an OCI mount: a volume is a bind of its data directory; a tmpfs is
    noexec,nosuid,nodev as Docker's ``--tmpfs`` (``size``/``mode`` when given)."""
    ro = ["ro"] if m.readonly else []
    if m.type == "tmpfs":
        opts = ["nosuid", "nodev", "noexec"] + ([f"size={m.size}"] if m.size else []) + \
            ([f"mode={m.mode:o}"] if m.mode is not None else [])
        return {"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts + ro}
    source = os.path.join(volumes_root, m.source, "_data") if m.type == "volume" else m.source
    return {"destination": m.target, "type": "bind", "source": source, "options": ["rbind", "rprivate"] + ro}


def make_config(spec, image_config: dict | None, *, rootfs: str, container_id: str, hostname: str,
                etc_files: dict[str, str] | None = None, cgroups_path: str, uid: int = 0, gid: int = 0,
                additional_gids: list[int] | None = None, home: str | None = None,
                nofile: int | None = None, volumes_root: str = "") -> dict:
    """Build the OCI config.json for ``spec`` (see module docstring for the Docker rules applied).

    ``home`` is the user's passwd home (``home_dir``), "/root" for uid 0 or "/" otherwise when not given;
    ``nofile`` overrides the RLIMIT_NOFILE value (default: this process's hard limit); ``volumes_root``: the
    directory of named volumes (runner.engine.volumes), whose ``<name>/_data`` a volume mount binds.
    """
    cfg = _image_cfg(image_config)
    args = resolve_args(spec, image_config)
    env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if spec.tty:
        env.append("TERM=xterm")
    env = merge_env(env, list(cfg.get("Env") or []))
    env = merge_env(env, list(spec.env or []))
    if not any(e.startswith("HOME=") for e in env):
        env.append("HOME=" + (home or ("/root" if uid == 0 else "/")))
    limit = nofile if nofile is not None else _nofile_hard()

    process = {
        "terminal": bool(spec.tty),
        "user": {"uid": int(uid), "gid": int(gid), **({"additionalGids": [int(g) for g in additional_gids]}
                                                       if additional_gids else {})},
        "args": args,
        "env": env,
        "cwd": spec.workdir or cfg.get("WorkingDir") or "/",
        "capabilities": _caps(DOCKER_DEFAULT_CAPS),
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": limit, "soft": limit}],
        "noNewPrivileges": True,
    }

    mounts = [dict(m, options=list(m["options"])) for m in DEFAULT_MOUNTS]
    own = [{"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate"]}
           for dest, source in (etc_files or {}).items()]
    # By depth, the /etc files among the user's mounts: a volume on /etc must not hide /etc/hosts.
    for m in sorted(own + [_user_mount(m, volumes_root) for m in spec.mounts or []],
                    key=lambda m: _depth(m["destination"])):
        mounts.append(m)

    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]
    if spec.network != "host":
        namespaces.insert(1, {"type": "network"})

    resources: dict = {"devices": [dict(r) for r in DEFAULT_DEVICE_RULES]}
    lim = spec.limits
    if lim.memory:
        # swap == limit: OCI swap means memory+swap, so the container gets no swap at all (Docker's default
        # is twice the limit; we prefer that a memory limit is a memory limit).
        resources["memory"] = {"limit": int(lim.memory), "swap": int(lim.memory)}
    if lim.cpus:
        resources["cpu"] = {"quota": int(round(lim.cpus * 100000)), "period": 100000}
    if lim.pids:
        resources["pids"] = {"limit": int(lim.pids)}

    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": bool(spec.read_only)},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {"org.runner.container-id": container_id},
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "devices": [],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def exec_process(exec_spec, base_config: dict, uid: int, gid: int, gids: list[int] | None = None) -> dict:
    """OCI ``process`` for ``runner exec``: the container's env/caps/rlimits plus the exec's own settings."""
    base = base_config.get("process") or {}
    env = list(base.get("env") or [])
    if exec_spec.tty:
        env = merge_env(env, ["TERM=xterm"])
    env = merge_env(env, list(exec_spec.env or []))
    user = {"uid": int(uid), "gid": int(gid)}
    if gids:
        user["additionalGids"] = [int(g) for g in gids]
    return {
        "terminal": bool(exec_spec.tty),
        "user": user,
        "args": list(exec_spec.command),
        "env": env,
        "cwd": exec_spec.workdir or base.get("cwd") or "/",
        "capabilities": dict(base.get("capabilities") or _caps(DOCKER_DEFAULT_CAPS)),
        "rlimits": list(base.get("rlimits") or []),
        "noNewPrivileges": bool(base.get("noNewPrivileges", True)),
    }


# ------------------------------------------------------------------------------------- safe rootfs lookups

_MAX_SYMLINKS = 40


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def open_in_root(root: str | int, path: str, flags: int = os.O_RDONLY, *, create: str | None = None,
                 mode: int = 0o755) -> int:
    """Open ``path`` as if ``root`` were ``/``: symlinks (absolute or relative) and ``..`` never leave root.

    Returns an fd (O_CLOEXEC added). ``create`` = "dir" or "file" creates missing components (parents as
    directories, the last one as given) so a mount target can be made safely. ``root`` is a path or a
    directory fd (not closed). Raises OSError (ENOENT, ENOTDIR, ELOOP...) like open(2) would.
    """
    own_root = isinstance(root, str)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if own_root else root
    todo = _parts(path)
    stack: list[int] = []  # fds of the directories walked, stack[-1] is the current one
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            cur = stack[-1] if stack else root_fd
            if name == "..":
                if stack:
                    os.close(stack.pop())
                continue
            last = not todo
            want = (flags | os.O_NOFOLLOW | os.O_CLOEXEC) if last else \
                (os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fd = os.open(name, want, dir_fd=cur)
            except FileNotFoundError:
                if create is None:
                    raise
                if last and create == "file":
                    try:
                        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                                         os.O_CLOEXEC, 0o644, dir_fd=cur))
                    except FileExistsError:
                        pass
                else:
                    try:
                        os.mkdir(name, mode, dir_fd=cur)
                    except FileExistsError:
                        pass
                todo.insert(0, name)
                continue
            except OSError as exc:
                if exc.errno != 40:  # ELOOP: the last component is a symlink; resolve it below
                    raise
                fd = -1
            if fd >= 0:
                st = os.fstat(fd)
                if not stat.S_ISLNK(st.st_mode):
                    if last:
                        return fd
                    if not stat.S_ISDIR(st.st_mode):
                        os.close(fd)
                        raise NotADirectoryError(20, f"{path}: {name} is not a directory")
                    stack.append(fd)
                    continue
                os.close(fd)
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(40, f"{path}: too many levels of symbolic links")
            target = os.readlink(name, dir_fd=cur)
            if target.startswith("/"):
                for f in stack:
                    os.close(f)
                stack = []
            todo[:0] = _parts(target)
        # path was "/" (or only dots): the root itself
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[-1] if stack else root_fd) \
            if not (flags & os.O_PATH) else os.dup(stack[-1] if stack else root_fd)
    finally:
        for f in stack:
            os.close(f)
        if own_root:
            os.close(root_fd)


def _read_in_root(rootfs: str, path: str) -> str | None:
    try:
        fd = open_in_root(rootfs, path, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        return f.read(4 * 1024 * 1024)


def _entries(text: str | None, nfields: int) -> list[list[str]]:
    out = []
    for line in (text or "").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= nfields:
            out.append(parts)
    return out


def _int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def resolve_user(user: str | None, rootfs: str) -> tuple[int, int, list[int]]:
    """Docker/runc's user lookup ("name", "uid", "name:group", "uid:gid") in the rootfs's passwd/group.

    A numeric uid needs no passwd entry (gid then defaults to 0, as in Docker); a name must exist. When no group
    is given, supplementary groups are those listing the user's name as a member; with an explicit group there
    are none (runc's GetExecUser).
    """
    user_arg, _, group_arg = (user or "").partition(":")
    user_arg = user_arg or "0"
    passwd = _entries(_read_in_root(rootfs, "/etc/passwd"), 7)
    numeric_uid = _int(user_arg)
    name, uid, gid = None, numeric_uid, 0
    for e in passwd:
        if e[0] == user_arg or (numeric_uid is not None and _int(e[2]) == numeric_uid):
            name, uid, gid = e[0], _int(e[2]), _int(e[3]) or 0
            break
    else:
        if numeric_uid is None:
            raise ContainerStartError(f"unable to find user {user_arg}: no matching entries in passwd file",
                                      hint="use a numeric uid[:gid], or a user that exists in the image")
    if uid is None:
        raise ContainerStartError(f"invalid uid for user {user_arg!r} in the image's /etc/passwd")
    gids: list[int] = []
    if group_arg or name is not None:
        groups = _entries(_read_in_root(rootfs, "/etc/group"), 4)
        if group_arg:
            numeric_gid = _int(group_arg)
            for e in groups:
                if e[0] == group_arg or (numeric_gid is not None and _int(e[2]) == numeric_gid):
                    gid = _int(e[2]) or 0
                    break
            else:
                if numeric_gid is None:
                    raise ContainerStartError(f"unable to find group {group_arg}: no matching entries in group file",
                                              hint="use a numeric gid, or a group that exists in the image")
                gid = numeric_gid
        else:
            for e in groups:
                if name in [m.strip() for m in e[3].split(",") if m.strip()]:
                    g = _int(e[2])
                    if g is not None and g not in gids:
                        gids.append(g)
    return uid, gid, gids


def home_dir(uid: int, rootfs: str) -> str:
    """The passwd home of ``uid`` in the rootfs ("/" when there is none, like runc)."""
    for e in _entries(_read_in_root(rootfs, "/etc/passwd"), 7):
        if _int(e[2]) == uid:
            return e[5] or "/"
    return "/"
