"""The seam between the CLI and wherever containers really run.

The CLI talks only to a :class:`Backend`; it never imports the engine or the runtime, so it imports cleanly on
macOS and Windows. Both backends expose the *engine's* API unchanged: ``NativeBackend`` calls the
:class:`runner.engine.engine.Engine` in-process, ``VMBackend`` sends the same calls to the same Engine running
in the guest through the agent. Arguments and results are JSON-safe data (dicts, lists, str, int), so the
VM path needs no per-method code; only streams (stdio, tar archives) and live process handles differ, and
those are the three small types below.

Optional abilities are data (:class:`Features`), read by callers instead of asking "which backend is this?".
"""

from __future__ import annotations

from runner.records import FrozenRecord, Record

# typing is imported for type checkers only: at run time it costs every CLI call ~6 ms. The two protocols
# below are then plain classes (nothing instantiates them or checks isinstance against them).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Protocol

    ProgressFn = Callable[[dict], None]
else:
    Protocol = object
    ProgressFn = "Callable[[dict], None]"  # only ever used in annotations


class Stdio(FrozenRecord):
    """File descriptors a container process is wired to, seen from the caller's side.

    ``stdin`` None means the process reads /dev/null. With a terminal, output arrives on ``stdout`` only.
    """

    _fields = ("stdin", "stdout", "stderr")

    def __init__(self, stdin: int | None, stdout: int, stderr: int):
        self._init(stdin=stdin, stdout=stdout, stderr=stderr)


class TermSize(Record):
    _fields = ("rows", "cols")

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols


class ProcessHandle(Protocol):
    """A running, attached container process (``run`` without ``-d``, ``start -a``, ``exec``)."""

    container_id: str

    def wait(self) -> int:
        """Block until the process ends; return its exit code (128+signal when killed, like Docker)."""

    def resize(self, size: TermSize) -> None:
        """Tell the process's terminal its new window size (no-op without a terminal)."""

    def signal(self, signum: int) -> None:
        """Deliver a signal to the process (Ctrl-C forwarding without a terminal)."""


class Features(FrozenRecord):
    """What a backend can do, so callers check abilities rather than backend names."""

    _fields = ("bind_mounts", "host_network", "published_ports")

    def __init__(self, bind_mounts: bool = True, host_network: bool = True, published_ports: bool = False):
        self._init(bind_mounts=bind_mounts, host_network=host_network, published_ports=published_ports)


class Backend(Protocol):
    """Every container and image operation the CLI needs. Containers are named by id, id prefix or name."""

    name: str
    features: Features

    # containers
    def create(self, spec: dict) -> str: ...
    def run(self, spec: dict, stdio: Stdio | None, size: TermSize | None = None) -> ProcessHandle | str: ...
    def start(self, ref: str, stdio: Stdio | None, size: TermSize | None = None) -> ProcessHandle | str: ...
    def exec(self, ref: str, exec_spec: dict, stdio: Stdio, size: TermSize | None = None) -> ProcessHandle: ...
    def stop(self, ref: str, timeout: float = 10) -> str: ...
    def kill(self, ref: str, signal: str = "KILL") -> str: ...
    def rm(self, ref: str, force: bool = False) -> str: ...
    def wait(self, ref: str) -> int: ...
    def ps(self, all: bool = False) -> list[dict]: ...
    def inspect(self, ref: str) -> dict: ...
    def logs(self, ref: str, stdio: Stdio, follow: bool = False, tail: int | None = None) -> None: ...

    # images
    def images(self) -> list[dict]: ...
    def image_inspect(self, ref: str) -> dict: ...
    def pull(self, ref: str, platform: str | None = None, credentials: dict | None = None,
             progress: ProgressFn | None = None) -> dict: ...
    def push(self, ref: str, credentials: dict | None = None, progress: ProgressFn | None = None) -> str: ...
    def tag(self, source: str, target: str) -> None: ...
    def rmi(self, ref: str, force: bool = False) -> list[str]: ...
    def load(self, stream: IO[bytes]) -> list[str]: ...
    def save(self, refs: list[str], stream: IO[bytes]) -> None: ...
    def import_image(self, stream: IO[bytes], name: str, changes: dict | None = None) -> str: ...

    # networks and published ports
    def port(self, ref: str) -> dict: ...
    def network_create(self, name: str, subnet: str | None = None) -> dict: ...
    def network_ls(self) -> list[dict]: ...
    def network_inspect(self, name: str) -> dict: ...
    def network_rm(self, name: str) -> str: ...

    # disk space
    def system_df(self) -> dict: ...
    def system_prune(self, all: bool = False) -> dict: ...

    # the backend itself
    def info(self) -> dict[str, Any]: ...
