"""Run runner on Linux with Windows' missing pieces taken away: ``python tests/winsim.py ARGS...`` = ``runner ARGS``.

Windows cannot run here, so the host-side code that must work there (the guest pull, issue 17) is driven in
a process that looks as much like Windows' Python as can be done honestly on Linux:
- the modules Windows lacks are unimportable: fcntl, termios, pty, tty, grp, pwd, resource;
- the ``os`` functions and flags Windows lacks are deleted: pread, pwrite, fchmod, O_CLOEXEC, O_NOFOLLOW,
  O_DIRECTORY, O_PATH, geteuid/getuid/getgid/getegid, pipe2;
- ``msvcrt`` exists, with ``locking`` backed by flock(2) through ctypes (per open file, like a Windows
  handle's lock; the byte range is ignored, and the lock is advisory, not mandatory as on Windows);
- Windows' file-sharing rule is enforced: renaming or removing a file (or a directory holding one) that this
  process has open raises PermissionError (WinError 32), and ``os.rename`` onto an existing file raises
  FileExistsError;
- waiting is shaped like Windows' too: no ``select.poll``/``epoll``/``devpoll``/``kqueue`` (and no selectors
  built on them: ``selectors.DefaultSelector`` is the select one), ``select.select`` accepts sockets only
  (anything else raises WinError 10038, as Winsock does), ``socket`` has no ``AF_UNIX`` (nor socketserver its
  Unix servers), and ``signal`` has only SIGINT, SIGTERM, SIGABRT, SIGFPE, SIGILL, SIGSEGV (plus SIGBREAK):
  no SIGHUP, SIGKILL, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1/2, SIGWINCH, SIGALRM, SIGSTOP/SIGCONT, ...; nor
  ``os.fork``, ``os.setsid``, ``os.killpg``, ``os.getpgid``, ``os.mkfifo``, ``os.openpty``, ``signal.alarm``,
  ``signal.pthread_kill``, ``signal.pthread_sigmask``, ``signal.setitimer``, ``signal.siginterrupt``.
  Python's own Unix internals that hold their references already (subprocess's poll-based communicate,
  signals the interpreter set up at start) keep working: on Windows their Windows halves run instead.
Not simulated (listed in the README): os.name/sys.platform stay Linux (path separators, drive letters),
mandatory locks, other processes' open files, st_blocks, text-mode newline translation without O_BINARY.
``WINSIM_REPORT=path`` makes the process write what it refused and checked there at exit (the test's proof
that the simulation was active).
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import os
import stat
import sys
import types

MISSING_MODULES = ("fcntl", "termios", "pty", "tty", "grp", "pwd", "resource")
MISSING_OS = ("pread", "pwrite", "fchmod", "O_CLOEXEC", "O_NOFOLLOW", "O_DIRECTORY", "O_PATH", "geteuid",
              "getuid", "getgid", "getegid", "pipe2", "fork", "setsid", "killpg", "getpgid", "mkfifo", "openpty")
MISSING_SELECT = ("poll", "epoll", "devpoll", "kqueue", "POLLIN", "POLLOUT", "POLLHUP", "POLLERR", "POLLNVAL",
                  "POLLRDHUP", "POLLPRI", "EPOLLIN")
MISSING_SELECTORS = ("PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector")
WINDOWS_SIGNALS = {"SIGINT": 2, "SIGTERM": 15, "SIGABRT": 6, "SIGFPE": 8, "SIGILL": 4, "SIGSEGV": 11,
                   "SIGBREAK": 21}
MISSING_SIGNAL_CALLS = ("alarm", "pthread_kill", "pthread_sigmask", "setitimer", "getitimer", "siginterrupt",
                        "sigwait", "sigpending", "sigtimedwait", "sigwaitinfo", "pause")
STATS = {"checked": 0, "refused": [], "select_checked": 0, "select_refused": 0, "removed": []}


def _fake_msvcrt() -> types.ModuleType:
    libc = ctypes.CDLL(None, use_errno=True)
    mod = types.ModuleType("msvcrt")
    mod.LK_UNLCK, mod.LK_LOCK, mod.LK_NBLCK, mod.LK_RLCK, mod.LK_NBRLCK = 0, 1, 2, 3, 4

    def locking(fd: int, mode: int, nbytes: int) -> None:
        op = 8 if mode == mod.LK_UNLCK else 2 | 4  # LOCK_UN, or LOCK_EX | LOCK_NB
        if libc.flock(fd, op) != 0:
            code = ctypes.get_errno()
            raise OSError(errno.EDEADLOCK if code == errno.EWOULDBLOCK else code, os.strerror(code))

    mod.locking = locking
    return mod


def _open_files() -> list[str]:
    paths = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/") and stat.S_ISREG(os.stat(f"/proc/self/fd/{name}").st_mode):
                paths.append(target)
        except OSError:
            continue
    return paths


def _resolve(path, dir_fd) -> str:
    path = os.fsdecode(path)
    if dir_fd is not None and not os.path.isabs(path):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.path.abspath(path)


def _guard(real, what: str):
    def guarded(src, *args, src_dir_fd=None, dir_fd=None, **kwargs):
        path = _resolve(src, src_dir_fd if src_dir_fd is not None else dir_fd)
        STATS["checked"] += 1
        for held in _open_files():
            if held == path or held.startswith(path + "/"):
                STATS["refused"].append([what, path])
                raise PermissionError(errno.EACCES, "[WinError 32] The process cannot access the file because "
                                      "it is being used by another process", path)
        if what == "rename" and args and os.path.exists(_resolve(args[0], kwargs.get("dst_dir_fd"))):
            STATS["refused"].append(["rename-over", path])
            raise FileExistsError(errno.EEXIST, "[WinError 183] Cannot create a file when that file already "
                                  "exists", path)
        extra = {k: v for k, v in (("src_dir_fd", src_dir_fd), ("dir_fd", dir_fd)) if v is not None}
        return real(src, *args, **extra, **kwargs)
    return guarded


def _remove(module, names) -> None:
    for name in names:
        if hasattr(module, name):
            delattr(module, name)
            STATS["removed"].append(f"{module.__name__}.{name}")


def _is_socket(obj) -> bool:
    import socket

    if isinstance(obj, socket.socket):
        return obj.fileno() >= 0
    fd = obj if isinstance(obj, int) else getattr(obj, "fileno", lambda: -1)()
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except (OSError, TypeError):
        return False


def _sockets_only_select(real):
    def select(rlist, wlist, xlist, timeout=None):
        STATS["select_checked"] += 1
        for obj in (*rlist, *wlist, *xlist):
            if not _is_socket(obj):
                STATS["select_refused"] += 1
                raise OSError(errno.ENOTSOCK, "[WinError 10038] An operation was attempted on something that "
                              "is not a socket")
        return real(rlist, wlist, xlist, timeout)
    return select


def _windows_signals() -> None:
    import enum
    import signal

    _remove(signal, [n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")
                     and n not in WINDOWS_SIGNALS and n != "SIGBREAK"])
    _remove(signal, MISSING_SIGNAL_CALLS)
    signal.SIGBREAK = WINDOWS_SIGNALS["SIGBREAK"]  # Windows' Ctrl-Break (Linux's 21 is SIGTTIN: harmless here)
    signal.Signals = enum.IntEnum("Signals", WINDOWS_SIGNALS)


def _windows_waiting() -> None:
    import select
    import selectors
    import socket
    import socketserver

    _remove(select, MISSING_SELECT)
    select.select = _sockets_only_select(select.select)
    _remove(selectors, MISSING_SELECTORS)
    selectors.DefaultSelector = selectors.SelectSelector
    socketserver._ServerSelector = selectors.SelectSelector  # what it picks where poll is missing
    _remove(socket, ("AF_UNIX",))
    socket.socketpair = _tcp_socketpair  # Windows' socketpair: two TCP sockets over loopback


def _tcp_socketpair(family=None, type=None, proto=0):
    """What CPython's socket.socketpair is on Windows (no AF_UNIX there): a loopback TCP connection."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b
    _remove(socketserver, ("UnixStreamServer", "UnixDatagramServer", "ThreadingUnixStreamServer",
                           "ThreadingUnixDatagramServer", "ForkingUnixStreamServer", "ForkingUnixDatagramServer",
                           "ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"))


def install() -> None:
    for name in MISSING_MODULES:
        sys.modules[name] = None  # "import fcntl" now raises ImportError, as on Windows
    _remove(os, MISSING_OS)
    import getpass, subprocess  # noqa: F401  (both take "msvcrt importable" to mean Windows: import them first)
    _windows_waiting()
    _windows_signals()
    sys.modules["msvcrt"] = _fake_msvcrt()
    for name in ("rename", "replace", "unlink", "remove", "rmdir"):
        setattr(os, name, _guard(getattr(os, name), name))
    report = os.environ.get("WINSIM_REPORT")
    if report:
        atexit.register(lambda: open(report, "w").write(json.dumps(STATS)))


if __name__ == "__main__":
    install()
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # tests/ is no package path of runner's
    import runpy

    sys.argv = ["runner", *sys.argv[1:]]
    runpy.run_module("runner", run_name="__main__", alter_sys=True)
