"""cgroups for containers: v2 (unified, with controllers) or v1 (one hierarchy per controller).

Which one: the host decides. v2 is used when a cgroup2 mount offers the ``memory`` controller in its
``cgroup.controllers`` (the guest: pure v2 at /sys/fs/cgroup). Otherwise every v1 ``cgroup`` mount in
/proc/self/mountinfo is a hierarchy. A *hybrid* host (this development machine: v1 controllers plus a
controller-less cgroup2 at /sys/fs/cgroup/unified) is therefore v1: the cgroup2 mount there can not enforce a
single limit, so it is ignored entirely (runc puts processes there for systemd's sake; we have no systemd).

Where: ``<hierarchy mount point>/<cgroupsPath>`` (OCI: an absolute cgroupsPath is relative to the mount point),
``/runner/<id>`` by default, in every hierarchy we use. Not nested under the caller's own cgroup on purpose:
the engine (or the agent) can sit in a cgroup with processes, and v2's no-internal-processes rule forbids
enabling controllers for children of such a cgroup; a sibling tree under the root has no such problem.

Which v1 hierarchies: memory, cpu, pids (limits) and devices (the device allow-list, which is what makes
Docker's CAP_MKNOD harmless), nothing else. Joining a v1 hierarchy is not free: each cgroup.procs write takes
the global threadgroup rwsem and can wait for an RCU grace period (measured 0.1-15 ms each here), so
hierarchies that enforce nothing (cpuacct, freezer, blkio...) are left alone. Not cpuset either: a fresh v1
cpuset cgroup has empty cpus/mems and refuses tasks until they are copied in.

Device access on v2 is an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the leaf: see
runner.engine.runtime.devices.

Limits: memory.max + memory.swap.max=0 (v2) / memory.limit_in_bytes + memory.memsw.limit_in_bytes (v1, when the
kernel accounts swap), so swap can not dodge the limit; cpu.max / cfs_quota_us+cfs_period_us; pids.max.

Removal kills first: cgroup.kill (v2, kernel 5.14+) or SIGKILL to every pid in cgroup.procs, until it is
empty, then rmdir, retried briefly because the kernel keeps a cgroup busy for a moment after its last task
died. Standard library only (runs in the guest).
"""

from __future__ import annotations

import errno
import os
import signal
import time

from runner.errors import ContainerStartError, PlatformError

V1_CONTROLLERS = ("memory", "cpu", "pids", "devices")
V2_CONTROLLERS = ("memory", "pids", "cpu")


class Hierarchy:
    """One mounted cgroup hierarchy: where it is mounted and which controllers it carries.

    ``options`` are the v1 super options needed to mount the same hierarchy again (e.g. "cpu,cpuacct").
    (A plain class, not a dataclass: importing dataclasses costs milliseconds on the start path.)
    """

    __slots__ = ("mountpoint", "root", "controllers", "version", "options")

    def __init__(self, mountpoint: str, root: str = "/", controllers: tuple = (), version: int = 1,
                 options: str = ""):
        self.mountpoint, self.root, self.controllers = mountpoint, root, tuple(controllers)
        self.version, self.options = version, options

    def _key(self):
        return (self.mountpoint, self.root, self.controllers, self.version, self.options)

    def __eq__(self, other):
        return isinstance(other, Hierarchy) and self._key() == other._key()

    def __repr__(self):
        return f"Hierarchy{self._key()!r}"


class Layout:
    __slots__ = ("version", "hierarchies")

    def __init__(self, version: int, hierarchies: list | None = None):
        self.version, self.hierarchies = version, list(hierarchies or [])

    def __repr__(self):
        return f"Layout(v{self.version}, {self.hierarchies!r})"


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 4 <= len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """All cgroup (v1) and cgroup2 mounts in a /proc/self/mountinfo text, in order."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, super_opts = rfields[0], rfields[2]
        if fstype == "cgroup2":
            out.append(Hierarchy(_unescape(fields[4]), _unescape(fields[3]), (), 2, ""))
        elif fstype == "cgroup":
            opts = [o for o in super_opts.split(",") if o not in ("rw", "ro")]
            ctrls = tuple(o for o in opts if "=" not in o and o not in (
                "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods", "none"))
            names = [o for o in opts if o.startswith("name=")]
            out.append(Hierarchy(_unescape(fields[4]), _unescape(fields[3]), ctrls, 1, ",".join(list(ctrls) + names)))
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {controller or "" (v2) or "name=x": path}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


def choose_layout(mounts: list[Hierarchy], v2_controllers: dict[str, tuple[str, ...]]) -> Layout:
    """Pure decision: v2 if a cgroup2 mount offers memory, else the v1 hierarchies we use.

    ``v2_controllers`` maps a cgroup2 mount point to the controllers its cgroup.controllers lists.
    """
    for h in mounts:
        if h.version == 2 and "memory" in v2_controllers.get(h.mountpoint, ()):
            return Layout(2, [Hierarchy(h.mountpoint, h.root, v2_controllers[h.mountpoint], 2)])
    seen: set[str] = set()
    hs = []
    for h in mounts:
        if h.version != 1 or not set(h.controllers) & set(V1_CONTROLLERS) or h.mountpoint in seen:
            continue
        if any(set(h.controllers) == set(x.controllers) for x in hs):
            continue  # the same hierarchy mounted twice
        seen.add(h.mountpoint)
        hs.append(h)
    return Layout(1, hs)


_LAYOUT: Layout | None = None


def detect(refresh: bool = False) -> Layout:
    """The host's cgroup layout (cached: it does not change while we run)."""
    global _LAYOUT
    if _LAYOUT is not None and not refresh:
        return _LAYOUT
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read())
    except OSError as exc:
        raise PlatformError(f"cannot read /proc/self/mountinfo: {exc.strerror}") from exc
    v2c = {}
    for h in mounts:
        if h.version == 2:
            try:
                with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
                    v2c[h.mountpoint] = tuple(f.read().split())
            except OSError:
                v2c[h.mountpoint] = ()
    layout = choose_layout(mounts, v2c)
    if not layout.hierarchies:
        raise PlatformError("no usable cgroup hierarchy found (neither cgroup2 with memory nor v1 controllers)",
                            hint="mount cgroup2 at /sys/fs/cgroup or the v1 memory/cpu/pids controllers")
    _LAYOUT = layout
    return layout


def prime_migrations(limit: float = 1.0):
    """Start paying for the container's cgroup.procs writes now, in a background thread; returns ``stop``.

    Moving a task between cgroups takes the kernel's global cgroup_threadgroup_rwsem for writing, and the
    first writer after a quiet spell waits for a whole RCU grace period (rcu_sync): 5-25 ms here, which made
    joining the cgroup the slowest step of a start. Writers arriving during that wait or within about one
    grace period after the last writer do not wait. So the engine calls this just before it forks the shim:
    the thread moves this very process into the cgroup it already is in (a no-op migration that still takes
    the lock) every few ms until ``stop()`` (the container runs) or ``limit`` seconds. The first grace period
    passes while the shim mounts the rootfs, and the container's own writes find the lock warm (measured:
    16 ms -> about 1 ms median). Not later, in the shim: the writer holds cgroup_mutex during that wait, so the
    shim's mkdir of the container's cgroup would wait for it instead. Best effort: a failure ends the thread.
    ``stop()`` joins the thread, so a caller about to exit has no thread left.
    """
    import threading

    done = threading.Event()

    def run() -> None:
        try:
            layout = detect()
            h = layout.hierarchies[0]
            deadline = time.monotonic() + limit
            while not done.is_set() and time.monotonic() < deadline:
                # Where this process is *now* (read each time: a move by someone else is never undone).
                with open("/proc/self/cgroup") as f:
                    own = parse_proc_cgroup(f.read()).get("" if layout.version == 2 else h.controllers[0])
                rel = os.path.relpath(own or "", h.root)
                if own is None or rel.startswith(".."):
                    return
                _write(os.path.join(os.path.normpath(os.path.join(h.mountpoint, rel)), "cgroup.procs"),
                       str(os.getpid()))
                done.wait(0.003)
        except Exception:
            pass

    thread = threading.Thread(target=run, name="cgroup-prime", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(1.0)

    return stop


def dirs_for(layout: Layout, cgroups_path: str) -> list[str]:
    """Host directories of a container's cgroup, one per hierarchy used."""
    rel = cgroups_path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ContainerStartError(f"invalid cgroupsPath {cgroups_path!r}")
    return [os.path.join(h.mountpoint, rel) for h in layout.hierarchies]


# ---------------------------------------------------------------- value formatting (pure)

def v2_files(resources: dict) -> list[tuple[str, str]]:
    """OCI linux.resources -> [(file, value)] for a v2 leaf."""
    out = []
    mem = (resources or {}).get("memory") or {}
    if mem.get("limit") is not None and mem["limit"] > 0:
        out.append(("memory.max", str(int(mem["limit"]))))
        swap = mem.get("swap")
        if swap is not None and swap > 0:
            # OCI swap is memory+swap (v1 semantics); v2's swap.max is swap alone.
            out.append(("memory.swap.max", str(max(0, int(swap) - int(mem["limit"])))))
    cpu = (resources or {}).get("cpu") or {}
    if cpu.get("quota") is not None and cpu["quota"] > 0:
        out.append(("cpu.max", f"{int(cpu['quota'])} {int(cpu.get('period') or 100000)}"))
    pids = (resources or {}).get("pids") or {}
    if pids.get("limit") is not None and pids["limit"] != 0:
        out.append(("pids.max", "max" if pids["limit"] < 0 else str(int(pids["limit"]))))
    return out


def v1_files(resources: dict) -> list[tuple[str, str, str, bool]]:
    """OCI linux.resources -> [(controller, file, value, required)] for v1 hierarchies, in write order."""
    out = []
    mem = (resources or {}).get("memory") or {}
    if mem.get("limit") is not None and mem["limit"] > 0:
        out.append(("memory", "memory.limit_in_bytes", str(int(mem["limit"])), True))
        if mem.get("swap") is not None and mem["swap"] > 0:
            # memsw exists only when the kernel accounts swap (swapaccount=1); without it there is nothing to dodge.
            out.append(("memory", "memory.memsw.limit_in_bytes", str(int(mem["swap"])), False))
    cpu = (resources or {}).get("cpu") or {}
    if cpu.get("quota") is not None and cpu["quota"] > 0:
        out.append(("cpu", "cpu.cfs_period_us", str(int(cpu.get("period") or 100000)), True))
        out.append(("cpu", "cpu.cfs_quota_us", str(int(cpu["quota"])), True))
    pids = (resources or {}).get("pids") or {}
    if pids.get("limit") is not None and pids["limit"] != 0:
        out.append(("pids", "pids.max", "max" if pids["limit"] < 0 else str(int(pids["limit"])), True))
    for rule in (resources or {}).get("devices") or []:
        out.append(("devices", "devices.allow" if rule.get("allow") else "devices.deny", device_rule(rule), True))
    return out


def device_rule(rule: dict) -> str:
    """OCI device cgroup rule -> v1 devices.allow/deny line ("c 1:3 rwm", "a" for everything)."""
    typ = rule.get("type") or "a"
    major, minor = rule.get("major"), rule.get("minor")
    access = rule.get("access") or "rwm"
    if typ == "a" and major in (None, -1) and minor in (None, -1):
        return "a"
    ma = "*" if major in (None, -1) else str(major)
    mi = "*" if minor in (None, -1) else str(minor)
    return f"{typ} {ma}:{mi} {access}"


def parse_flat_keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.events, memory.oom_control) -> dict."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------- side effects

def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Cgroup:
    """A container's cgroup across the hierarchies of ``layout``."""

    def __init__(self, cgroups_path: str, layout: Layout | None = None):
        self.layout = layout or detect()
        self.path = cgroups_path
        self.dirs = dirs_for(self.layout, cgroups_path)

    def _dir(self, controller: str) -> str | None:
        for h, d in zip(self.layout.hierarchies, self.dirs):
            if self.layout.version == 2 or controller in h.controllers:
                return d
        return None

    def procs_files(self) -> list[str]:
        """Files a process writes "0" to in order to join (cgroup.procs moves the whole thread group)."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def create(self, resources: dict) -> None:
        """mkdir the leaf in every hierarchy and write the limits; raise ContainerStartError (after cleanup)."""
        try:
            if self.layout.version == 2:
                self._create_v2(resources or {})
            else:
                self._create_v1(resources or {})
        except OSError as exc:
            self.delete()
            raise ContainerStartError(f"cannot set up cgroup {self.path}: {exc.strerror or exc}") from exc
        except ContainerStartError:
            self.delete()  # the device filter could not be attached
            raise

    def _mkdir_leaf(self, d: str) -> None:
        try:
            os.mkdir(d, 0o755)
        except FileExistsError as exc:
            if _read(os.path.join(d, "cgroup.procs")).strip():
                raise ContainerStartError(f"cgroup {d} already exists and has processes") from exc
        except FileNotFoundError:
            os.makedirs(os.path.dirname(d), exist_ok=True)
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                pass

    def _create_v2(self, resources: dict) -> None:
        h = self.layout.hierarchies[0]
        leaf = self.dirs[0]
        wanted = [c for c in V2_CONTROLLERS if c in h.controllers]
        # Enable the controllers top-down: a controller is usable in a cgroup only when its parent lists it in
        # cgroup.subtree_control; the hierarchy root is exempt from the no-internal-processes rule.
        rel = os.path.relpath(os.path.dirname(leaf), h.mountpoint)
        chain = [h.mountpoint]
        if rel != ".":
            for part in rel.split("/"):
                chain.append(os.path.join(chain[-1], part))
        for i, d in enumerate(chain):
            if i:
                try:
                    os.mkdir(d, 0o755)
                except FileExistsError:
                    pass
            try:
                enabled = _read(os.path.join(d, "cgroup.subtree_control")).split()
            except OSError:
                enabled = []
            missing = [c for c in wanted if c not in enabled]
            for c in missing:
                try:
                    _write(os.path.join(d, "cgroup.subtree_control"), "+" + c)
                except OSError:
                    if c != "cpu":  # cpu can be refused (real-time tasks); only fatal when a cpu limit is asked
                        raise
        self._mkdir_leaf(leaf)
        if resources.get("devices"):
            from runner.engine.runtime import devices
            devices.apply(leaf, resources["devices"])  # before anything can join the cgroup
        for name, value in v2_files(resources):
            path = os.path.join(leaf, name)
            try:
                _write(path, value)
            except FileNotFoundError as exc:
                if name == "memory.swap.max":
                    continue  # kernel without swap accounting: nothing to dodge
                raise OSError(errno.ENOENT, f"{name} is not available (controller not enabled?)") from exc
            except OSError as exc:
                raise OSError(exc.errno, f"writing {value} to {name}: {exc.strerror}") from exc

    def _create_v1(self, resources: dict) -> None:
        for d in self.dirs:
            self._mkdir_leaf(d)
        for ctrl, name, value, required in v1_files(resources):
            d = self._dir(ctrl)
            if d is None:
                if required and ctrl != "devices":
                    raise OSError(errno.ENOENT, f"the {ctrl} cgroup controller is not mounted")
                continue
            try:
                _write(os.path.join(d, name), value)
            except OSError as exc:
                if not required and exc.errno in (errno.ENOENT, errno.EACCES):
                    continue
                raise OSError(exc.errno, f"writing {value} to {name}: {exc.strerror}") from exc

    # -------------------------------------------------------------- queries

    def oom_killed(self) -> bool:
        d = self._dir("memory")
        if d is None:
            return False
        try:
            if self.layout.version == 2:
                return parse_flat_keyed(_read(os.path.join(d, "memory.events"))).get("oom_kill", 0) > 0
            return parse_flat_keyed(_read(os.path.join(d, "memory.oom_control"))).get("oom_kill", 0) > 0
        except OSError:
            return False

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                pass
        return out

    # -------------------------------------------------------------- removal

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL everything in the cgroup and wait (bounded) until it is empty."""
        if self.layout.version == 2:
            try:
                _write(os.path.join(self.dirs[0], "cgroup.kill"), "1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def delete(self, timeout: float = 5.0) -> None:
        """Kill leftovers, then rmdir every leaf; idempotent. Raises ContainerStartError if a dir stays."""
        if not any(os.path.isdir(d) for d in self.dirs):
            return
        self.kill_all(timeout)
        deadline = time.monotonic() + timeout
        left = []
        for d in self.dirs:
            delay = 0.001
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(f"{d}: {exc.strerror}")
                        break
                    self.kill_all(0)
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        if left:
            raise ContainerStartError(f"cannot remove cgroup: {'; '.join(left)}")
