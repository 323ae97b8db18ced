"""``cp`` and the Engine API's ``/containers/{id}/archive``: a container's files as tar streams, in and out.

The one safety rule: a path names a file of the *container*, so every lookup happens inside its root and no
symlink, ``..`` or racing rename may ever reach a file of the machine. How: the work is done by a forked
child that ``chroot``s into the container's root first, so the kernel resolves every path (absolute
symlinks included) as if that root were ``/``:

* a running container: its root as its PID 1 sees it, ``/proc/<pid>/root``, volumes and binds included;
* a stopped one: the child mounts the container's overlay in a private mount namespace (as the shim does;
  the mounts disappear with the child), and its volumes and bind mounts on it, as Docker's cp does.

The child sends one JSON status line (the stat of the path, or an error) on a pipe before any data, so a
missing path is a clean NotFound before a byte of tar is written. The stat dict is Docker's
``X-Docker-Container-Path-Stat``: name, size, mode (Go's os.FileMode bits), mtime (RFC 3339), linkTarget.
Linux only, standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat

from runner.errors import NotFound, RunnerError, UsageError

# Go's os.FileMode type bits, as Docker puts them into the stat header.
_GO_MODE = ((stat.S_ISDIR, 1 << 31), (stat.S_ISLNK, 1 << 27), (stat.S_ISFIFO, 1 << 25), (stat.S_ISSOCK, 1 << 24),
            (stat.S_ISBLK, 1 << 26), (stat.S_ISCHR, (1 << 26) | (1 << 21)))


def go_mode(mode: int) -> int:
    bits = stat.S_IMODE(mode) & 0o777
    for test, bit in _GO_MODE:
        if test(mode):
            bits |= bit
    for flag, bit in ((stat.S_ISUID, 1 << 23), (stat.S_ISGID, 1 << 22), (stat.S_ISVTX, 1 << 20)):
        if mode & flag:
            bits |= bit
    return bits


def path_stat(path: str) -> dict:
    """Docker's stat dict for ``path`` (in the chroot: a container path); the last symlink is not followed."""
    from runner.engine.views import iso_time
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size, "mode": go_mode(st.st_mode),
            "mtime": iso_time(st.st_mtime), "linkTarget": target}


def check_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise UsageError(f"invalid container path {path!r}: it must be absolute", hint="e.g. runner cp ctr:/etc/hosts .")
    return path


def _enter(engine, rec) -> None:
    """In the child: chroot into the container's root (see the module docstring)."""
    import tarfile  # imported before the chroot: afterwards the container's files are all there is
    tarfile.pwd = tarfile.grp = None  # numeric owners only: never read the container's passwd through NSS
    if rec.status == "running" and rec.pid:
        root = f"/proc/{rec.pid}/root"
    else:
        from runner.engine.runtime import linux
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        store = engine.images_store
        lowers = store.layer_dirs(store.resolve(rec.image_id)) or [engine.empty_dir()]
        os.makedirs(engine.empty_dir(), exist_ok=True)
        bundle = engine.bundle(rec.id)
        bundle.mount_rootfs(lowers, volatile=False)
        root = bundle.rootfs
        _mount_volumes(engine, rec, root)
    os.chroot(root)
    os.chdir("/")


def _mount_volumes(engine, rec, root: str) -> None:
    """A stopped container's volumes and bind mounts, where its start would put them (docker cp sees them too),
    read-only ones read-only, in the child's private mount namespace (they vanish with it). Each target is
    resolved inside the root (oci.open_in_root): a symlink in the image cannot aim a mount at the machine."""
    from runner.engine.runtime import linux, oci
    from runner.engine.runtime.builtin import _mount_flags_of
    from runner.engine.volumes import volumes_dir
    from runner.spec import ContainerSpec
    mounts = [m for m in ContainerSpec.from_dict(rec.spec).mounts if m.type in ("volume", "bind")]
    for m in sorted(mounts, key=lambda m: len([p for p in m.target.split("/") if p])):  # /a before /a/b
        source = os.path.join(volumes_dir(engine.root), m.source, "_data") if m.type == "volume" else m.source
        if not os.path.exists(source):
            continue  # a bind source removed since: nothing to show (its start would fail, not this copy)
        create = "dir" if os.path.isdir(source) else "file"
        fd = oci.open_in_root(root, m.target, os.O_PATH, create=create)
        try:
            linux.mount(source, f"/proc/self/fd/{fd}", None, linux.MS_BIND | linux.MS_REC)
        finally:
            os.close(fd)
        if m.readonly:  # a bind mount takes MS_RDONLY only on a remount of the new mount: re-open it
            fd = oci.open_in_root(root, m.target, os.O_PATH)
            try:
                path = f"/proc/self/fd/{fd}"
                linux.mount(None, path, None,
                            linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _mount_flags_of(path))
            finally:
                os.close(fd)


def _child(engine, rec, status_w: int, work) -> None:
    """The forked child: enter, run ``work(status)`` where status(dict) sends the status line; never returns."""
    code = 1
    try:
        def status(msg: dict) -> None:
            os.write(status_w, (json.dumps(msg) + "\n").encode())
        try:
            _enter(engine, rec)
            work(status)
            code = 0
        except FileNotFoundError as exc:
            status({"error": f"Could not find the file {exc.filename or ''} in container {rec.name}",
                    "kind": "notfound"})
        except NotADirectoryError as exc:
            status({"error": exc.strerror or str(exc), "kind": "usage"})
        except (OSError, RunnerError, ValueError, EOFError) as exc:
            import tarfile
            if isinstance(exc, OSError) and exc.errno == errno.EROFS:  # docker: "marked read-only"
                status({"error": f"{exc.filename or 'the destination'} is on a read-only file system (a read-only "
                                 f"volume or bind mount, or --read-only)", "kind": "usage"})
            elif isinstance(exc, tarfile.TarError) or not isinstance(exc, RunnerError):
                status({"error": f"{exc}", "kind": "error"})
            else:
                status({"error": exc.message, "kind": "error"})
    finally:
        os._exit(code)


def _status(status_r: int, rec) -> dict:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(status_r, 65536)
        if not chunk:
            break
        line += chunk
    msg = json.loads(line) if line.strip() else {"error": "the copy process died", "kind": "error"}
    if "error" in msg:
        if msg.get("kind") == "notfound":
            raise NotFound(msg["error"])
        if msg.get("kind") == "usage":
            raise UsageError(msg["error"])
        raise RunnerError(f"copying files of container {rec.name}: {msg['error']}")
    return msg


def _run(engine, rec, work, feed=None, drain=None) -> dict:
    """Fork the child doing ``work``; ``feed(w_fd)`` writes its stdin pipe, ``drain(r_fd)`` reads its output."""
    import tarfile  # noqa: F401  (before the fork: the child must not import while another thread might)
    from runner.engine.views import iso_time  # noqa: F401  (likewise)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    data_r, data_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # ---- child
        os.close(status_r)
        if feed is not None:
            os.close(data_w)
            work.fd = data_r
        else:
            os.close(data_r)
            work.fd = data_w
        _child(engine, rec, status_w, work)
    os.close(status_w)
    try:
        if feed is not None:
            os.close(data_r)
            data_r = -1
        else:
            os.close(data_w)
            data_w = -1
        if drain is not None:
            msg = _status(status_r, rec)
            drain(data_r)
        else:
            with contextlib.suppress(BrokenPipeError):
                feed(data_w)
            os.close(data_w)
            data_w = -1
            msg = _status(status_r, rec)
        return msg
    finally:
        for fd in (status_r, data_r, data_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


class _Stat:
    fd = -1

    def __init__(self, path: str):
        self.path = path

    def __call__(self, status) -> None:
        status({"stat": path_stat(self.path)})


class _Get(_Stat):
    def __call__(self, status) -> None:
        import tarfile
        st = path_stat(self.path)
        status({"stat": st})
        with os.fdopen(self.fd, "wb", buffering=1 << 16) as out, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(self.path.rstrip("/") or "/", arcname=st["name"], recursive=True)


class _Put(_Stat):
    def __call__(self, status) -> None:
        import tarfile
        st = os.stat(self.path)  # follows symlinks: inside the chroot they stay in the container
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, f"extraction point {self.path} is not a directory")
        with os.fdopen(self.fd, "rb", buffering=1 << 16) as src, tarfile.open(fileobj=src, mode="r|") as tar:
            for member in tar:
                target = os.path.join(self.path, member.name)
                if os.path.islink(target) or (os.path.lexists(target) and not (
                        member.isdir() and os.path.isdir(target))):
                    if not os.path.isdir(target) or os.path.islink(target):
                        os.unlink(target)  # as GNU tar: an existing file or link is replaced, not written through
                tar.extract(member, self.path, set_attrs=True, numeric_owner=True)
        status({"stat": path_stat(self.path)})


def stat_of(engine, rec, path: str) -> dict:
    return _run(engine, rec, _Stat(check_path(path)), drain=lambda fd: None)["stat"]


def get(engine, rec, path: str, stream) -> dict:
    """Write a tar of ``path`` (its base name as the top entry) to ``stream``; returns its stat dict."""
    def drain(fd: int) -> None:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            stream.write(chunk)
    return _run(engine, rec, _Get(check_path(path)), drain=drain)["stat"]


def put(engine, rec, path: str, stream) -> dict:
    """Extract the tar read from ``stream`` into the container directory ``path``."""
    def feed(fd: int) -> None:
        while True:
            chunk = stream.read(1 << 16)
            if not chunk:
                return
            from runner.stdio import write_all
            write_all(fd, chunk)
    return _run(engine, rec, _Put(check_path(path)), feed=feed)["stat"]
