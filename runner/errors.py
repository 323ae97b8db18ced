"""One error root for everything runner reports to a user.

Every failure a user can cause or meet is a :class:`RunnerError` carrying a one-line ``message``, an optional
``hint`` (what to do about it) and the process ``exit_code`` the CLI ends with. The CLI prints them once, in
``runner.cli.app``; nothing else prints errors. Errors raised inside the VM's agent travel to the host as
``to_dict()`` and are rebuilt with ``from_dict()``, so a user sees exactly the same text on both backends.

Tree::

    RunnerError (125)
     ├─ UsageError          bad flags or arguments
     ├─ NotFound            no such container / image / machine
     ├─ Conflict            name in use, container running, image in use
     ├─ ImageError          malformed or unsafe image data (tar, manifest, digest)
     ├─ RegistryError       registry refused or failed (auth, 404, bad reply)
     ├─ BuildError (1)      a Dockerfile or its build failed (syntax, a RUN's exit code, a missing source)
     ├─ ContainerStartError the container could not be created
     │    ├─ CommandNotExecutable (126)
     │    └─ CommandNotFound      (127)
     ├─ PlatformError       this host lacks what is needed (not Linux, not root, no cgroups, no QEMU)
     ├─ DiskFullError       a filesystem runner writes to is full (ENOSPC/EDQUOT; see runner.diskfull)
     └─ VMError             the VM could not be started or reached
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of all user-facing errors: message, hint and the exit code the CLI returns."""

    exit_code = 125

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        """A JSON-safe form, so the agent can send the error to the host unchanged."""
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint,
                "exit_code": self.exit_code}

    @staticmethod
    def from_dict(data: dict) -> "RunnerError":
        """Rebuild an error sent by :meth:`to_dict`; unknown types fall back to the root class."""
        cls = _BY_NAME.get(str(data.get("type")), RunnerError)
        return cls(str(data.get("message", "unknown error")), data.get("hint"), int(data.get("exit_code", 125)))


class UsageError(RunnerError):
    """Bad flags or arguments."""


class NotFound(RunnerError):
    """No such container, image, network or machine."""


class ImageNotFound(NotFound):
    """No such image: what ``run``/``create`` pull and retry on with ``--pull missing``, as docker does."""


class Conflict(RunnerError):
    """The object exists or is in a state that forbids the request."""


class ImageError(RunnerError):
    """Image data is malformed or unsafe."""


class BuildError(RunnerError):
    """A build failed: the Dockerfile is wrong, a source is missing or a RUN step failed. Exit 1, as docker
    build's."""

    exit_code = 1


class RegistryError(RunnerError):
    """A registry refused the request or replied with something invalid."""


class ContainerStartError(RunnerError):
    """The container could not be created or its process not started."""


class CommandNotExecutable(ContainerStartError):
    """The command exists but cannot be executed (Docker's 126)."""

    exit_code = 126


class CommandNotFound(ContainerStartError):
    """The command does not exist in the container (Docker's 127)."""

    exit_code = 127


class PlatformError(RunnerError):
    """The host lacks something runner needs (Linux, root, cgroups, QEMU, ...)."""


class DiskFullError(RunnerError):
    """A filesystem runner writes to (its state root, the VM's data disk) has no space or quota left."""


class NeedsRoot(PlatformError):
    """The native backend needs root and this process is not root: the CLI re-executes itself through
    ``sudo`` when there is one (runner.cli.main), else reports this."""


class VMError(RunnerError):
    """The VM could not be started, stopped or reached."""


_BY_NAME = {cls.__name__: cls for cls in (
    RunnerError, UsageError, NotFound, ImageNotFound, Conflict, ImageError, RegistryError, BuildError, ContainerStartError,
    CommandNotExecutable, CommandNotFound, PlatformError, NeedsRoot, DiskFullError, VMError)}
