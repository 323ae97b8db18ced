"""The built-in OCI runtime: runc's model in Python, with one fork and ctypes system calls.

It executes an OCI bundle (``config.json`` whose ``root.path`` is an already-mounted rootfs) and returns the host
pid of the container's PID 1 as a *child of the calling process*, so the caller (the engine's shim or the agent)
reaps it with ``os.waitpid`` and gets the real exit status. No daemon, no intermediate process left behind.

Start sequence (one fork; the parent needs no sync round-trip because the child joins its cgroup itself)::

    caller thread                                         child  (PID 1 of the new PID namespace)
    ─────────────                                         ─────────────────────────────────────────
    read config.json, detect cgroups
    mkdir cgroup(s), write limits           (1)
    pipe2(O_CLOEXEC) = errpipe
    unshare(CLONE_NEWPID)                   (2)
    fork() ─────────────────────────────────────────────► reset signals; setsid; stdio -> 0,1,2 (+TIOCSCTTY)
    setns(saved pid_for_children)           (2)           write "0" to cgroup.procs of each hierarchy  (3)
    close errpipe[w]                                      setns(namespace paths), unshare(mnt uts ipc net cgroup)
    read errpipe ...                                      sethostname; lo up (new net ns)
                                                          / rslave; bind rootfs; mounts; /dev nodes     (4)
                                                          pivot_root(".", "."); umount2(".", MNT_DETACH) (5)
                                                          sysctl, readonly paths, masked paths, ro root
                                                          rlimits; fds >= 3 close-on-exec
                                                          drop bounding; KEEPCAPS setgroups/setgid/setuid;
                                                          capset; ambient; chdir cwd; no_new_privs
                                                          PATH lookup inside the container             (6)
               ◄── EOF: exec succeeded (errpipe is O_CLOEXEC) ── execve(args)
               ◄── or {"kind", "message"} JSON, then _exit(1)
    EOF: return pid   |  JSON: reap child, delete cgroup, raise ContainerStartError/CommandNotFound/...

(1) Limits are in place before the workload exists, so it can never run unlimited, and a limit the kernel
    refuses fails the start before anything was forked.
(2) A process can not move itself into a new PID namespace; unshare(CLONE_NEWPID) only decides the namespace of
    the caller's *next children*. It changes ``pid_for_children`` of the calling *thread* only (nsproxy is per
    task), so other threads of a multi-threaded caller are unaffected, and it is restored right after the fork.
    The forked child is therefore PID 1 itself and a direct child of the caller: no second fork, no
    intermediate process, no PR_SET_CHILD_SUBREAPER. ``exec`` uses the same trick with setns into the
    container's PID namespace.
(3) The child joins its cgroup itself ("0" means "me") *before* unshare(CLONE_NEWCGROUP), so the cgroup
    namespace's root is the container's cgroup and /sys/fs/cgroup inside shows only the container.
(4) Mount targets are resolved inside the rootfs without following symlinks out of it (``oci.open_in_root``)
    and mounted through /proc/self/fd/N, so an image with ``/proc -> /etc`` or ``/dev -> /`` symlinks can not
    redirect a mount onto the host. / is made rslave first: nothing we mount propagates back to the caller,
    while the caller's unmounts still propagate in (so the container does not pin host mounts busy).
(5) pivot_root(".", ".") stacks the old root on top of the new one at the same place; the lazy umount of "."
    then removes the old root. No put_old directory is needed in a possibly read-only image.
(6) The lookup uses the container's PATH and filesystem, after pivot_root and setuid, so "not found" (127) and
    "permission denied" (126) mean what they mean inside the container.

Between fork and execve the child is single-threaded but forked from a possibly multi-threaded Python: it only
makes system calls through already-imported modules, never imports, logs, or starts threads, and always ends
in execve or os._exit. Standard library only: this runs in the VM guest's agent too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import termios

from runner.engine.runtime import caps as capsmod
from runner.engine.runtime import cgroups, linux
from runner.engine.runtime import seccomp as seccompmod
from runner.engine.runtime.oci import DEFAULT_PATH, open_in_root
from runner.errors import CommandNotExecutable, CommandNotFound, ContainerStartError

# ------------------------------------------------------------------------------------------ mount options

_FLAGS = {
    "ro": (True, linux.MS_RDONLY), "rw": (False, linux.MS_RDONLY),
    "nosuid": (True, linux.MS_NOSUID), "suid": (False, linux.MS_NOSUID),
    "nodev": (True, linux.MS_NODEV), "dev": (False, linux.MS_NODEV),
    "noexec": (True, linux.MS_NOEXEC), "exec": (False, linux.MS_NOEXEC),
    "sync": (True, linux.MS_SYNCHRONOUS), "async": (False, linux.MS_SYNCHRONOUS),
    "dirsync": (True, linux.MS_DIRSYNC), "remount": (True, linux.MS_REMOUNT),
    "mand": (True, linux.MS_MANDLOCK), "nomand": (False, linux.MS_MANDLOCK),
    "noatime": (True, linux.MS_NOATIME), "atime": (False, linux.MS_NOATIME),
    "nodiratime": (True, linux.MS_NODIRATIME), "diratime": (False, linux.MS_NODIRATIME),
    "bind": (True, linux.MS_BIND), "rbind": (True, linux.MS_BIND | linux.MS_REC),
    "relatime": (True, linux.MS_RELATIME), "norelatime": (False, linux.MS_RELATIME),
    "strictatime": (True, linux.MS_STRICTATIME), "nostrictatime": (False, linux.MS_STRICTATIME),
    "defaults": (False, 0),
}
_PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}


def parse_mount_options(options: list[str]) -> tuple[int, int, str]:
    """OCI mount options -> (mount flags, propagation flags, data string for the filesystem)."""
    flags, prop, data = 0, 0, []
    for opt in options or []:
        if opt in _FLAGS:
            on, bit = _FLAGS[opt]
            flags = (flags | bit) if on else (flags & ~bit)
        elif opt in _PROPAGATION:
            prop |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


# statvfs f_flag bits -> MS_* bits that a bind remount must repeat (it replaces the per-mount flags wholesale)
_ST_TO_MS = ((1, linux.MS_RDONLY), (2, linux.MS_NOSUID), (4, linux.MS_NODEV), (8, linux.MS_NOEXEC),
             (1024, linux.MS_NOATIME), (2048, linux.MS_NODIRATIME), (4096, linux.MS_RELATIME))


def _mount_flags_of(path: str) -> int:
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if f & st)


DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                   ("tty", 5, 0))
DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))

_RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}


class _ChildError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _load_config(bundle: str) -> dict:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise ContainerStartError(f"bundle {bundle} has no config.json") from exc
    except (OSError, ValueError) as exc:
        raise ContainerStartError(f"cannot read {path}: {exc}") from exc


def _cgroup_for(config: dict | None, container_id: str) -> cgroups.Cgroup:
    path = ((config or {}).get("linux") or {}).get("cgroupsPath") or f"/runner/{container_id}"
    return cgroups.Cgroup(path)


# ------------------------------------------------------------------------------------------ the runtime

class BuiltinRuntime:
    """OCI runtime in-process: start / exec / delete, no state of its own beyond the cgroup."""

    name = "builtin"

    def prime(self):
        """Called by the engine before it forks the shim; returns ``stop``: see cgroups.prime_migrations."""
        return cgroups.prime_migrations()

    # -------------------------------------------------------------------------------- start
    def start(self, bundle: str, container_id: str, stdio: tuple[int, int, int],
              console_socket: int | None = None) -> int:
        """See the module docstring. With ``process.terminal`` and a ``console_socket`` (a unix socket, as
        runc's ``--console-socket``), the pty is created inside the container and its master fd is sent
        there (SCM_RIGHTS) before execve; ``stdio`` is then ignored."""
        config = _load_config(bundle)
        rootfs = (config.get("root") or {}).get("path") or "rootfs"
        if not os.path.isabs(rootfs):
            rootfs = os.path.join(bundle, rootfs)
        if not os.path.isdir(rootfs):
            raise ContainerStartError(f"rootfs {rootfs} does not exist or is not a directory")
        if not (config.get("process") or {}).get("args"):
            raise ContainerStartError("config.json has no process.args")
        namespaces = (config.get("linux") or {}).get("namespaces") or []
        if any(ns.get("type") == "user" for ns in namespaces):
            raise ContainerStartError("user namespaces are not supported by the builtin runtime",
                                      hint="use --runtime runc")
        cg = _cgroup_for(config, container_id)
        cg.create((config.get("linux") or {}).get("resources") or {})
        pid_ns = next((ns for ns in namespaces if ns.get("type") == "pid"), None)
        try:
            plan = _StartPlan(config, rootfs, cg, stdio, console_socket)
            plan.seccomp = seccompmod.prepare((config.get("linux") or {}).get("seccomp"))
            pid = _fork(pid_ns, plan)
        except BaseException:
            cg.delete()
            raise
        return _await_exec(pid, plan.errpipe_r, on_error=cg.delete)

    # -------------------------------------------------------------------------------- exec
    def exec(self, bundle: str, container_id: str, init_pid: int, process: dict,
             stdio: tuple[int, int, int], console_socket: int | None = None) -> int:
        """Like start, for a new process in the running container whose PID 1 is ``init_pid``."""
        config = _load_config(bundle)
        cg = _cgroup_for(config, container_id)
        if not process.get("args"):
            raise ContainerStartError("exec needs a command")
        namespaces = [ns.get("type") for ns in (config.get("linux") or {}).get("namespaces") or []]
        fds: dict[str, int] = {}
        try:
            for typ in namespaces:
                if typ in linux.NS_PROC_NAMES:
                    fds[typ] = os.open(f"/proc/{init_pid}/ns/{linux.NS_PROC_NAMES[typ]}", os.O_RDONLY | os.O_CLOEXEC)
            # The fds pin the namespaces; now make sure init_pid was not recycled by an unrelated process.
            if not _pid_in_cgroup(init_pid, cg):
                raise ContainerStartError(f"container {container_id} is not running (pid {init_pid} is gone)")
        except FileNotFoundError as exc:
            for fd in fds.values():
                os.close(fd)
            raise ContainerStartError(f"container {container_id} is not running (pid {init_pid} is gone)") from exc
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        try:
            plan = _ExecPlan(process, cg, fds, stdio, console_socket)
            plan.seccomp = seccompmod.prepare((config.get("linux") or {}).get("seccomp"))  # the container's
            pid = _fork({"fd": fds["pid"]} if "pid" in fds else None, plan)
        finally:
            for fd in fds.values():
                os.close(fd)
        return _await_exec(pid, plan.errpipe_r)

    # -------------------------------------------------------------------------------- teardown & queries
    def delete(self, bundle: str, container_id: str) -> None:
        try:
            config = _load_config(bundle)
        except ContainerStartError:
            config = None
        _cgroup_for(config, container_id).delete()

    def oom_killed(self, bundle: str, container_id: str) -> bool:
        try:
            config = _load_config(bundle)
        except ContainerStartError:
            config = None
        return _cgroup_for(config, container_id).oom_killed()

    def cgroup_paths(self, bundle: str, container_id: str) -> list[str]:
        try:
            config = _load_config(bundle)
        except ContainerStartError:
            config = None
        return list(_cgroup_for(config, container_id).dirs)


def _pid_in_cgroup(pid: int, cg: cgroups.Cgroup) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return False
    rel = "/" + cg.path.strip("/")
    return any(line.split(":", 2)[-1] == rel or line.split(":", 2)[-1].startswith(rel + "/")
               for line in text.splitlines())


# ------------------------------------------------------------------------------------------ parent side

def _fork_in_pidns(pid_ns: dict | None, child) -> int:
    """fork() so the child lands in a new (or the given) PID namespace; see note (2) in the module docstring."""
    saved = -1
    if pid_ns is not None:
        try:
            saved = os.open("/proc/thread-self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            saved = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if pid_ns is not None:
            try:
                if "fd" in pid_ns:
                    linux.setns(pid_ns["fd"], linux.CLONE_NEWPID)
                elif pid_ns.get("path"):
                    fd = os.open(pid_ns["path"], os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        linux.setns(fd, linux.CLONE_NEWPID)
                    finally:
                        os.close(fd)
                else:
                    linux.unshare(linux.CLONE_NEWPID)
            except OSError as exc:
                raise ContainerStartError(f"cannot create the PID namespace: {exc.strerror}",
                                          hint="runner needs root (CAP_SYS_ADMIN) for native containers") from exc
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            child()
            os._exit(1)
        return pid
    finally:
        if saved >= 0:
            # Restore this thread's pid_for_children: later forks of the caller must stay in its namespace.
            linux.setns(saved, linux.CLONE_NEWPID)
            os.close(saved)


def _fork(pid_ns: dict | None, plan: "_Child") -> int:
    """Fork the plan's child; the parent keeps only the read end of the error pipe."""
    try:
        pid = _fork_in_pidns(pid_ns, plan.run_child)
    except BaseException:
        os.close(plan.errpipe_r)
        raise
    finally:
        os.close(plan.errpipe_w)
    return pid


def _await_exec(pid: int, errpipe_r: int, on_error=None) -> int:
    """Read the child's error pipe until EOF; EOF without data means execve succeeded."""
    chunks = []
    try:
        while True:
            try:
                b = os.read(errpipe_r, 65536)
            except InterruptedError:
                continue
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(errpipe_r)
    if not chunks:
        return pid
    # The child failed before execve: reap it so no zombie is left, then tear down and report.
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if on_error is not None:
        try:
            on_error()
        except Exception:
            pass
    try:
        err = json.loads(b"".join(chunks).decode("utf-8", "replace"))
    except ValueError:
        err = {"kind": "start", "message": b"".join(chunks).decode("utf-8", "replace")[:500]}
    kind, message = err.get("kind"), str(err.get("message") or "container init failed")
    if kind == "notfound":
        raise CommandNotFound(message, hint="check the command name and the image's PATH")
    if kind == "noexec":
        raise CommandNotExecutable(message, hint="the file must be an executable the container can run")
    raise ContainerStartError(message)


# ------------------------------------------------------------------------------------------ child side

class _Child:
    """What both start and exec children do; subclasses fill in ``setup``. Runs only in the forked child."""

    def __init__(self, process: dict, cg: cgroups.Cgroup, stdio: tuple[int, int, int],
                 console_socket: int | None = None):
        self.process = process
        self.cg = cg
        self.stdio = stdio
        # With a console socket the terminal is made inside the container (setup_console), not passed in.
        self.console_socket = console_socket if process.get("terminal") else None
        self.step = "starting"
        self.seccomp = None  # a seccompmod.Prepared: compiled in the parent, installed by the child
        self.last_cap = capsmod.last_cap()  # read now: after pivot_root /proc/sys is read-only and masked
        self.errpipe_r, self.errpipe_w = os.pipe2(os.O_CLOEXEC)

    def run_child(self) -> None:
        """Entry point after fork; never returns."""
        try:
            os.close(self.errpipe_r)
            self.setup()
            self.step = "exec"
            self.execute()
        except _ChildError as exc:
            self._report(exc.kind, str(exc))
        except OSError as exc:
            detail = exc.strerror or str(exc)
            if exc.filename is not None:
                detail += f": {exc.filename}"
            self._report("start", f"{self.step}: {detail}")
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as one line
            self._report("start", f"{self.step}: {type(exc).__name__}: {exc}")
        os._exit(1)

    def _report(self, kind: str, message: str) -> None:
        data = json.dumps({"kind": kind, "message": message[:2000]}).encode()
        try:
            os.write(self.errpipe_w, data)
        except OSError:
            pass

    # -- steps shared by start and exec --------------------------------------------------------------------
    def prologue(self) -> None:
        self.step = "resetting signals"
        linux.reset_signal_dispositions()
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        self.step = "setting up stdio"
        # setsid: the container's process leads its own session (the caller's terminal signals stay out), and
        # a session leader is what may take a controlling terminal below.
        os.setsid()
        if self.console_socket is not None:
            return  # stdio becomes the container's own pty in setup_console
        tmp = [os.dup(fd) for fd in self.stdio]  # dup first: the fds may already be 0-2 in another order
        for i, fd in enumerate(tmp):
            os.dup2(fd, i, inheritable=True)
            os.close(fd)
        if self.process.get("terminal"):
            linux.set_controlling_tty(0)

    def setup_console(self, bind_console: bool) -> None:
        """runc's console socket: a pty from the container's devpts, master sent out, slave as stdio."""
        if self.console_socket is None:
            return
        self.step = "creating the console"
        master, slave_path = linux.open_pty()
        size = self.process.get("consoleSize")
        if size:
            fcntl.ioctl(master, termios.TIOCSWINSZ,
                        struct.pack("HHHH", int(size.get("height", 0)), int(size.get("width", 0)), 0, 0))
        slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
        if bind_console:
            # /dev/console is the container's terminal, as with runc.
            os.close(os.open("/dev/console", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            linux.mount(slave_path, "/dev/console", None, linux.MS_BIND)
        sock = socket.socket(fileno=os.dup(self.console_socket))
        try:
            socket.send_fds(sock, [b"console"], [master])
        finally:
            sock.close()
            os.close(master)
        for i in range(3):
            os.dup2(slave, i, inheritable=True)
        os.close(slave)
        linux.set_controlling_tty(0)

    def join_cgroup(self) -> None:
        self.step = "joining the cgroup"
        for path in self.cg.procs_files():
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def finalize(self) -> None:
        """rlimits, fds, user and capabilities, cwd, no_new_privs: runc's finalizeNamespace order."""
        p = self.process
        self.step = "setting rlimits"
        for rl in p.get("rlimits") or []:
            res = _RLIMITS.get(rl.get("type"))
            if res is None:
                raise _ChildError("start", f"unknown rlimit {rl.get('type')!r}")
            try:
                resource.setrlimit(res, (int(rl["soft"]), int(rl["hard"])))
            except (OSError, ValueError) as exc:
                raise _ChildError("start", f"setrlimit {rl.get('type')} {rl.get('soft')}/{rl.get('hard')}: {exc}"
                                  " (raising a hard limit needs CAP_SYS_RESOURCE)") from exc
        self.step = "closing file descriptors"
        # Only 0-2 may reach the workload. Mark everything else close-on-exec (one close_range call) instead of
        # closing now: we still use a few fds until execve, and the error pipe must stay open until then.
        if not linux.close_range_cloexec(3):
            for name in os.listdir("/proc/self/fd"):
                fd = int(name)
                if fd > 2:
                    try:
                        os.set_inheritable(fd, False)
                    except OSError:
                        pass
        user = p.get("user") or {}
        c = p.get("capabilities") or {}
        if self.seccomp is not None and not p.get("noNewPrivileges"):
            # Without no_new_privs only CAP_SYS_ADMIN may load a filter: load it while we still have it (runc
            # does the same); the filter must then allow the few calls left before execve.
            self.step = "loading the seccomp filter"
            self.seccomp.install()
            self.seccomp = None
        self.step = "dropping capabilities"
        capsmod.drop_bounding(capsmod.mask(c.get("bounding")), self.last_cap)
        self.step = "switching user"
        # KEEPCAPS: setuid to non-root would otherwise empty the permitted set before capset can narrow it.
        linux.prctl(linux.PR_SET_KEEPCAPS, 1)
        os.setgroups([int(g) for g in user.get("additionalGids") or []])
        os.setgid(int(user.get("gid", 0)))
        os.setuid(int(user.get("uid", 0)))
        linux.prctl(linux.PR_SET_KEEPCAPS, 0)
        self.step = "setting capabilities"
        capsmod.apply(capsmod.mask(c.get("effective")), capsmod.mask(c.get("permitted")),
                      capsmod.mask(c.get("inheritable")), capsmod.mask(c.get("ambient")))
        os.umask(int(user.get("umask", 0o022)))
        cwd = p.get("cwd") or "/"
        self.step = f"changing to the working directory {cwd}"
        try:
            os.chdir(cwd)  # after setuid, so the user's own permissions apply (like runc)
        except OSError as exc:
            raise _ChildError("start", f"cannot change to the working directory {cwd}: {exc.strerror}") from exc
        if p.get("noNewPrivileges"):
            self.step = "setting no_new_privs"
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)

    def execute(self) -> None:
        p = self.process
        args = [str(a) for a in p["args"]]
        env = {}
        for item in p.get("env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        path = _lookup(args[0], env.get("PATH", DEFAULT_PATH))
        if self.seccomp is not None:
            # Last, after no_new_privs and the PATH lookup: the filter binds the workload, not our setup.
            self.step = "loading the seccomp filter"
            self.seccomp.install()
        try:
            os.execve(path, args, env)
        except OSError as exc:
            code = exc.errno
            if code in (errno.ENOENT, errno.ENOTDIR):
                raise _ChildError("notfound", f"exec {args[0]}: no such file or directory") from exc
            if code in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOEXEC, errno.ETXTBSY):
                raise _ChildError("noexec", f"exec {args[0]}: {os.strerror(code).lower()}") from exc
            raise _ChildError("start", f"exec {args[0]}: {os.strerror(code)}") from exc


def _lookup(cmd: str, path_env: str) -> str:
    """PATH lookup inside the container (Go's exec.LookPath rules, as runc uses them)."""
    if "/" in cmd:
        return cmd
    for d in path_env.split(":"):
        candidate = os.path.join(d or ".", cmd)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise _ChildError("notfound", f'exec: "{cmd}": executable file not found in $PATH')


class _StartPlan(_Child):
    def __init__(self, config: dict, rootfs: str, cg: cgroups.Cgroup, stdio, console_socket: int | None = None):
        super().__init__(config.get("process") or {}, cg, stdio, console_socket)
        self.config = config
        self.rootfs = os.path.realpath(rootfs)  # host path, resolved once here (the host is trusted)
        self.linux = config.get("linux") or {}
        self.layout = cg.layout

    def setup(self) -> None:
        self.prologue()
        self.join_cgroup()
        self.namespaces()
        self.rootfs_setup()
        self.finalize()

    def namespaces(self) -> None:
        flags, new_net, has_uts = 0, False, False
        for ns in self.linux.get("namespaces") or []:
            typ = ns.get("type")
            if typ == "pid":
                continue  # done by the parent (note 2)
            bit = linux.NS_FLAGS.get(typ)
            if bit is None:
                raise _ChildError("start", f"unknown namespace type {typ!r}")
            if ns.get("path"):
                # An existing namespace (e.g. a network namespace the network module wired up): join it.
                self.step = f"joining the {typ} namespace {ns['path']}"
                fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
                try:
                    linux.setns(fd, bit)
                finally:
                    os.close(fd)
            else:
                flags |= bit
                new_net = new_net or typ == "network"
            has_uts = has_uts or typ == "uts"
        if not flags & linux.CLONE_NEWNS:
            raise _ChildError("start", "the builtin runtime needs a mount namespace")
        self.step = "creating namespaces"
        linux.unshare(flags)
        if has_uts and self.config.get("hostname"):
            self.step = "setting the hostname"
            linux.sethostname(self.config["hostname"])
        if new_net:
            self.step = "bringing up lo"
            linux.interface_up("lo")

    # -- filesystem --------------------------------------------------------------------------------------
    def rootfs_setup(self) -> None:
        rootfs = self.rootfs
        self.step = "making / rslave"
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        self.step = "binding the rootfs onto itself"
        # pivot_root needs the new root to be a mount point; a bind makes any directory one.
        linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            old_umask = os.umask(0)  # device nodes and mount points get exactly the modes we ask for
            dev_is_tmpfs = False
            for m in self.config.get("mounts") or []:
                self.step = f"mounting {m.get('destination')}"
                self.mount_one(root_fd, m)
                if m.get("destination", "").rstrip("/") == "/dev" and m.get("type") != "bind":
                    dev_is_tmpfs = True
            if dev_is_tmpfs:
                self.step = "creating /dev nodes"
                self.create_devices(root_fd)
            os.umask(old_umask)
            self.step = "pivot_root"
            os.fchdir(root_fd)
        finally:
            os.close(root_fd)
        try:
            linux.pivot_root(".", ".")
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise _ChildError("start", "pivot_root: invalid argument (is / an initramfs? it must be a real "
                                  "mount: boot from a disk or move a bind of / onto / first)") from exc
            raise
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")
        self.setup_console(bind_console=True)
        for key, value in (self.linux.get("sysctl") or {}).items():
            self.step = f"setting sysctl {key}"
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
        for path in self.linux.get("readonlyPaths") or []:
            self.step = f"making {path} read-only"
            self.readonly_path(path)
        for path in self.linux.get("maskedPaths") or []:
            self.step = f"masking {path}"
            self.mask_path(path)
        cwd = self.process.get("cwd") or "/"
        if cwd != "/" and not os.path.isdir(cwd):
            # Docker creates a missing working directory (owned by the user); do it while / is still writable.
            self.step = f"creating the working directory {cwd}"
            try:
                os.makedirs(cwd, 0o755, exist_ok=True)
                user = self.process.get("user") or {}
                os.chown(cwd, int(user.get("uid", 0)), int(user.get("gid", 0)))
            except OSError:
                pass  # chdir will report it
        if (self.config.get("root") or {}).get("readonly"):
            self.step = "making the root read-only"
            linux.mount(None, "/", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _mount_flags_of("/"))

    def _target(self, root_fd: int, dest: str, create: str) -> int:
        return open_in_root(root_fd, dest, os.O_PATH, create=create, mode=0o755)

    def mount_one(self, root_fd: int, m: dict) -> None:
        dest = m.get("destination") or ""
        if not dest.startswith("/"):
            raise _ChildError("start", f"mount destination {dest!r} is not absolute")
        typ = m.get("type") or ""
        src = m.get("source") or typ
        flags, prop, data = parse_mount_options(m.get("options") or [])
        if typ == "bind" or flags & linux.MS_BIND:
            try:
                is_dir = stat.S_ISDIR(os.stat(src).st_mode)
            except OSError as exc:
                raise _ChildError("start", f"bind mount source {src}: {exc.strerror}") from exc
            fd = self._target(root_fd, dest, "dir" if is_dir else "file")
            try:
                linux.mount(src, f"/proc/self/fd/{fd}", None, linux.MS_BIND | (flags & linux.MS_REC))
            finally:
                os.close(fd)
            extra = flags & ~(linux.MS_BIND | linux.MS_REC | linux.MS_REMOUNT)
            if extra:
                # A bind mount ignores other flags; they take effect on a remount of the new mount. Re-open the
                # target so the fd refers to the new mount, not the directory underneath it.
                fd = self._target(root_fd, dest, "dir" if is_dir else "file")
                try:
                    p = f"/proc/self/fd/{fd}"
                    linux.mount(None, p, None, linux.MS_BIND | linux.MS_REMOUNT | extra | _mount_flags_of(p))
                finally:
                    os.close(fd)
        elif typ == "cgroup":
            self.mount_cgroup(root_fd, dest, flags)
        else:
            fd = self._target(root_fd, dest, "dir")
            try:
                linux.mount(src, f"/proc/self/fd/{fd}", typ, flags, data or None)
            finally:
                os.close(fd)
        if prop:
            fd = self._target(root_fd, dest, "dir")
            try:
                linux.mount(None, f"/proc/self/fd/{fd}", None, prop)
            finally:
                os.close(fd)

    def mount_cgroup(self, root_fd: int, dest: str, flags: int) -> None:
        """The container's own cgroup, seen through its cgroup namespace (note 3)."""
        if self.layout.version == 2:
            fd = self._target(root_fd, dest, "dir")
            try:
                linux.mount("cgroup", f"/proc/self/fd/{fd}", "cgroup2", flags, None)
            finally:
                os.close(fd)
            return
        # v1: a tmpfs with one mount per hierarchy, like runc and Docker.
        fd = self._target(root_fd, dest, "dir")
        try:
            linux.mount("tmpfs", f"/proc/self/fd/{fd}", "tmpfs", flags & ~linux.MS_RDONLY, "mode=755")
        finally:
            os.close(fd)
        for h in self.layout.hierarchies:
            sub = dest.rstrip("/") + "/" + os.path.basename(h.mountpoint)
            fd = self._target(root_fd, sub, "dir")
            try:
                linux.mount("cgroup", f"/proc/self/fd/{fd}", "cgroup", flags, h.options)
            finally:
                os.close(fd)
        if flags & linux.MS_RDONLY:
            fd = self._target(root_fd, dest, "dir")
            try:
                p = f"/proc/self/fd/{fd}"
                linux.mount(None, p, None, linux.MS_REMOUNT | (flags | linux.MS_RDONLY), "mode=755")
            finally:
                os.close(fd)

    def create_devices(self, root_fd: int) -> None:
        dev_fd = open_in_root(root_fd, "/dev", os.O_RDONLY | os.O_DIRECTORY)
        try:
            extra = []
            for d in self.linux.get("devices") or []:
                path = d.get("path", "")
                if path.startswith("/dev/") and ".." not in path.split("/"):
                    extra.append(d)  # nested ones too (--device /dev/net/tun): their directories are made
            names = {d["path"][5:] for d in extra}
            for name, major, minor in DEFAULT_DEVICES:
                if name not in names:
                    self._mknod(dev_fd, name, stat.S_IFCHR | 0o666, major, minor, 0, 0)
            for d in extra:
                kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type"))
                if kind is None:
                    raise _ChildError("start", f"unknown device type {d.get('type')!r} for {d.get('path')}")
                parent, _, name = d["path"][5:].rpartition("/")
                # The parent directory inside the container's /dev, made without following symlinks out of it.
                dir_fd = open_in_root(dev_fd, parent, os.O_PATH | os.O_DIRECTORY, create="dir") if parent else dev_fd
                try:
                    self._mknod(dir_fd, name, kind | (int(d.get("fileMode", 0o666)) & 0o7777), int(d.get("major", 0)),
                                int(d.get("minor", 0)), int(d.get("uid", 0)), int(d.get("gid", 0)))
                finally:
                    if dir_fd != dev_fd:
                        os.close(dir_fd)
            for name, target in DEV_SYMLINKS:
                if name == "core" and not os.path.exists("/proc/kcore"):
                    continue  # like runc: no dangling /dev/core on kernels without /proc/kcore
                try:
                    os.symlink(target, name, dir_fd=dev_fd)
                except FileExistsError:
                    pass
            if self.process.get("terminal") and self.console_socket is None and os.isatty(self.stdio[0]):
                # /dev/console is the container's terminal, as with runc (bind of the pty we were given).
                os.close(os.open("console", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=dev_fd))
                fd = os.open("console", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev_fd)
                try:
                    # By path, not /proc/self/fd/0: the pty was opened in the caller's mount namespace, and
                    # a bind from an fd of another namespace's mount fails with EINVAL.
                    linux.mount(os.ttyname(0), f"/proc/self/fd/{fd}", None, linux.MS_BIND)
                finally:
                    os.close(fd)
        finally:
            os.close(dev_fd)

    @staticmethod
    def _mknod(dev_fd: int, name: str, mode: int, major: int, minor: int, uid: int, gid: int) -> None:
        try:
            os.mknod(name, mode, os.makedev(major, minor), dir_fd=dev_fd)
        except FileExistsError:
            return
        if uid or gid:
            os.chown(name, uid, gid, dir_fd=dev_fd, follow_symlinks=False)

    # -- after pivot_root: the paths below are the container's own /proc and /sys --------------------------
    @staticmethod
    def readonly_path(path: str) -> None:
        try:
            linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _mount_flags_of(path))

    @staticmethod
    def mask_path(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return  # nothing there to hide
        if stat.S_ISDIR(st.st_mode):
            linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY, None)
        else:
            linux.mount("/dev/null", path, None, linux.MS_BIND)


class _ExecPlan(_Child):
    def __init__(self, process: dict, cg: cgroups.Cgroup, ns_fds: dict[str, int], stdio,
                 console_socket: int | None = None):
        super().__init__(process, cg, stdio, console_socket)
        self.ns_fds = ns_fds

    def setup(self) -> None:
        self.prologue()
        self.join_cgroup()  # host paths: before entering the container's mount namespace
        # Order: user first (it decides the rights for the rest), mount last (after it, host paths are gone).
        for typ in ("user", "ipc", "uts", "network", "cgroup", "mount"):
            fd = self.ns_fds.get(typ)
            if fd is not None:
                self.step = f"joining the container's {typ} namespace"
                linux.setns(fd, linux.NS_FLAGS[typ])
        self.setup_console(bind_console=False)
        self.finalize()
