"""Processes and files that several processes share, for every OS runner runs on: who is alive, locks, writes.

Why one module: the engine's records (containers, shims), the VM's QEMU record, the connection cache and the
guest agent all store a pid and must later decide whether that pid is *still the same process*: after a crash
or a reboot a pid may belong to anything, so a pid is always paired with its start time (:func:`identity`).
Their state files all need "a reader sees the old or the new file, never half of one" (:func:`write_atomic`)
and "one caller at a time" (:class:`FileLock`), released by the kernel when the holder dies.

Standard library only (shipped into the VM guest). Locks use ``flock`` wherever ``fcntl`` exists and
``msvcrt.locking`` where it does not (Windows); the rest of the per-OS parts import what they need when called
(``ctypes`` and ``subprocess`` are slow imports the Linux path never needs).
"""

from __future__ import annotations

import os
import sys
import time

from runner.errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: subprocess is imported where a process is started
    import subprocess

try:
    import fcntl as _fcntl  # a built-in module: importing it costs nothing measurable
except ImportError:  # Windows
    _fcntl = None

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # Windows has none (and no fork that could leak the fd)

#: Whether a file must be closed before it is renamed or removed, and its lock dies with that close: so on
#: Windows, whose C runtime opens files without FILE_SHARE_DELETE and whose ``msvcrt.locking`` is the only
#: lock (no ``flock``). Where ``flock`` exists, files are renamed while still open and locked (POSIX allows
#: it), so no other process can take the lock between the last check and the rename.
CLOSE_BEFORE_RENAME = _fcntl is None


# ---------------------------------------------------------------------------------------------- identity

def start_time(pid: int) -> int | None:
    """Linux: the process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is
    gone or a zombie. Together with the pid it names a process uniquely: a recycled pid starts later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last ')' are safe.
    rest = data[data.rfind(b")") + 2:].split()
    if rest and rest[0] in (b"Z", b"X"):  # a zombie has exited already
        return None
    return int(rest[19]) if len(rest) > 19 else None


def alive(pid: int | None, started: int | None) -> bool:
    """Linux: whether ``pid`` still runs and is the process that had start time ``started``."""
    return bool(pid) and started is not None and start_time(pid) == started


def running(pid: int) -> bool:
    """Linux: whether ``pid`` runs at all (a zombie counts as gone: the guest's init may reap it late)."""
    return start_time(pid) is not None


def identity(pid: int) -> str | None:
    """A text that differs between two processes that had the same pid (their start time), on any host OS;
    None when the process does not exist or is a zombie."""
    if sys.platform.startswith("linux"):
        started = start_time(pid)
        return None if started is None else f"linux:{started}"
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True)
        line = out.stdout.strip()
        if out.returncode != 0 or not line or line.startswith("Z"):
            return None
        return "darwin:" + line.split(None, 1)[1]
    if os.name == "nt":
        return _windows_identity(pid)
    from runner.errors import PlatformError

    raise PlatformError(f"cannot inspect processes on {sys.platform}")


def cmdline(pid: int) -> str | None:
    """The process's command line, words joined by spaces ("" if it is gone); None where it cannot be read
    cheaply (Windows). Used to check a pid runs the program a record says it runs."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return ""
    except OSError:
        return ""
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout
    return None


def _windows_identity(pid: int) -> str | None:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value != 259:  # STILL_ACTIVE
            return None
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            return None
        return f"windows:{times[0].dwHighDateTime}:{times[0].dwLowDateTime}"
    finally:
        kernel32.CloseHandle(handle)


def kill(pid: int, signum: int | None = None) -> bool:
    """Send ``signum`` (default: kill outright; on Windows any signal is TerminateProcess). False if the process
    was gone already. Callers prove the pid is theirs first (:func:`identity`, :func:`cmdline`)."""
    import signal

    if signum is None:
        signum = signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False


def spawn_detached(argv: list[str], log_path: str | os.PathLike, umask: int | None = None) -> "subprocess.Popen":
    """Start ``argv`` so that it outlives the caller and its terminal's signals (its own session on Unix, a
    detached process group on Windows); stdin is /dev/null, stdout and stderr go to ``log_path`` (truncated,
    0600). The caller keeps the Popen to reap the child if it dies while the caller still runs."""
    import subprocess

    kwargs: dict = {}
    if os.name == "posix":
        kwargs.update(start_new_session=True, umask=-1 if umask is None else umask)
    else:
        kwargs.update(creationflags=subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o600)
    with os.fdopen(log_fd, "wb") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs)


# ---------------------------------------------------------------------------------------------- files

def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o600, durable: bool = True,
                 sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically; the temp file has ``mode`` from its first byte.

    ``durable`` fsyncs the data before the rename, so a crash cannot leave an empty file under the real
    name; ``sync_dir`` also fsyncs the directory, so the rename itself survives a crash.
    """
    import contextlib

    path = os.fspath(path)
    raw = data.encode() if isinstance(data, str) else data
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir and hasattr(os, "O_DIRECTORY"):  # Windows cannot open, so not fsync, a directory
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class FileLock:
    """An exclusive lock on a file (created ``mode`` if missing), released when the holder closes it, exits or
    dies, so a crash never leaves it held: ``flock`` on Unix, ``msvcrt.locking`` on Windows.

    ``timeout`` None waits as long as it takes (one blocking ``flock``, no polling); otherwise the lock is
    tried every 0.1 s and ``error(busy)`` raised at the deadline (``0`` tries once).
    """

    def __init__(self, path: str | os.PathLike, timeout: float | None = None, busy: str = "",
                 error: type[RunnerError] = RunnerError, mode: int = 0o600):
        self.path, self.timeout, self.error, self.mode = os.fspath(path), timeout, error, mode
        self.busy = busy or f"{self.path} is locked by another process"
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _CLOEXEC, self.mode)
        try:
            if self.timeout is None:
                lock_fd(fd)
            else:
                deadline = time.monotonic() + (self.timeout or 0)
                while not lock_fd(fd, wait=False):
                    if time.monotonic() >= deadline and self.timeout is not None:
                        raise self.error(self.busy, hint="wait for it to finish, then try again")
                    time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if _fcntl is None:
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # closing releases the flock

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_fd(fd: int, wait: bool = True) -> bool:
    """Lock the open regular file ``fd`` exclusively until it is closed; False when ``wait`` is off and another
    process holds it. ``flock`` where the OS has it (one blocking call); else ``msvcrt.locking`` on byte 0,
    polled every 0.1 s because its blocking mode gives up after 10 s. A Windows lock is mandatory: only the
    holder's handle may read or write byte 0 meanwhile, which suits files that one writer owns."""
    if _fcntl is not None:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX if wait else _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    import msvcrt

    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not wait:
                return False
        time.sleep(0.1)
