"""Image commands: images, pull, push, tag, rmi, load, save, import."""

from __future__ import annotations

import contextlib
import sys
from typing import List, Optional

import typer

from runner.cli import render
from runner.errors import UsageError


def _backend():
    from runner.cli.context import STATE
    return STATE.backend


def _credentials(ref: str) -> dict:
    """Host-side credentials for the image's registry; the engine (maybe in the VM) gets only these."""
    from runner.images.credentials import credentials_for
    from runner.images.reference import Reference
    return credentials_for(Reference.parse(ref).registry)


def _progress(quiet: bool, to_stderr: bool):
    """Docker-like per-layer progress (live on a terminal, status lines otherwise), or nothing."""
    from rich.console import Console

    from runner.cli.progress import ProgressDisplay
    return ProgressDisplay(quiet=quiet, console=Console(stderr=to_stderr, highlight=False, soft_wrap=True))


def pull_image(ref: str, platform: str | None, quiet: bool, to_stderr: bool = False) -> dict:
    with _progress(quiet, to_stderr) as show:
        return _backend().pull(ref, platform=platform, credentials=_credentials(ref), progress=show)


def images(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="only print image ids"),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="json (one object a line, as docker), or a Go template: {{.Repository}}:{{.Tag}}"),
):
    """List images (docker images)."""
    items = _backend().images()
    if quiet:
        for img in items:
            print(img["Id"].split(":")[-1][:12])
        return
    if fmt:
        render.formatted(fmt, [row for img in items for row in render.image_rows(img)], render.IMAGE_HEADERS)
        return
    render.images(items)


def pull(
    image: str = typer.Argument(...),
    platform: Optional[str] = typer.Option(None, "--platform", help="e.g. linux/arm64"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="suppress progress output"),
):
    """Pull an image from a registry (docker pull)."""
    from runner.images.reference import Reference
    pull_image(image, platform, quiet)
    print(Reference.parse(image).name)  # like docker, the full reference last (and alone with -q)


def push(
    image: str = typer.Argument(...),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="suppress progress output"),
):
    """Push an image to a registry (docker push)."""
    with _progress(quiet, False) as show:
        digest = _backend().push(image, credentials=_credentials(image), progress=show)
    if quiet:
        print(digest)


def tag(source: str = typer.Argument(...), target: str = typer.Argument(...)):
    """Give an image another name (docker tag)."""
    _backend().tag(source, target)


def rmi(
    refs: List[str] = typer.Argument(...),
    force: bool = typer.Option(False, "-f", "--force", help="remove even if a container uses it"),
):
    """Remove images (docker rmi)."""
    for ref in refs:
        for line in _backend().rmi(ref, force=force):
            print(line)


def load(
    input_: Optional[str] = typer.Option(None, "-i", "--input", help="read from a tar archive instead of stdin"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="suppress output"),
):
    """Load images from a docker-save archive or an OCI layout tar (docker load)."""
    if input_ is None and sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is a terminal", hint="use -i FILE or a pipe")
    try:
        stream = open(input_, "rb") if input_ else sys.stdin.buffer
    except OSError as exc:
        raise UsageError(f"cannot open {input_}: {exc.strerror}") from exc
    with stream:
        names = _backend().load(stream)
    if not quiet:
        for name in names:
            print(f"Loaded image: {name}")


def save(
    refs: List[str] = typer.Argument(...),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write to a file instead of stdout"),
):
    """Save images to a tar archive, docker-save and OCI layout at once (docker save)."""
    if output is None and sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal", hint="use -o FILE or redirect stdout")
    if output is None:
        out = _Output(sys.stdout.buffer, "/proc/self/fd/1", "standard output")
        _backend().save(list(refs), out)
        out.flush()
        return
    import os
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        f = open(tmp, "wb")
        try:
            out = _Output(f, output)
            _backend().save(list(refs), out)
            out.flush()  # what is still buffered fails here, named, not in close()
        finally:
            with contextlib.suppress(OSError):  # flushed above; after a failure, the buffer's error is raised
                f.close()
        os.replace(tmp, output)  # a failed save never leaves a truncated archive under the real name
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Output:
    """The archive file ``save -o`` writes. Why a wrapper: a full disk *there* must be named as such; below, the
    engine would take any ENOSPC for its own state root's (and hint at ``system prune``, which frees nothing
    on the output's filesystem)."""

    def __init__(self, f, path: str, name: str | None = None):
        self._f, self._path, self._name = f, path, name or path

    def write(self, data) -> int:
        with self._named():
            return self._f.write(data)

    def flush(self) -> None:
        with self._named():
            self._f.flush()

    @contextlib.contextmanager
    def _named(self):
        from runner.diskfull import disk_full_error, is_full
        try:
            yield
        except OSError as exc:
            if not is_full(exc):
                raise
            raise disk_full_error(self._path, f"writing {self._name}",
                                  hint="free space there, or write the archive elsewhere (-o PATH)") from exc


def import_(
    source: str = typer.Argument(..., help="rootfs tar file, or - for stdin"),
    name: str = typer.Argument(..., help="NAME[:TAG] of the new image"),
    change: List[str] = typer.Option([], "-c", "--change",
                                     help="apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                                          "STOPSIGNAL, USER, VOLUME or WORKDIR"),
):
    """Create an image from a root filesystem tarball (docker import)."""
    from runner.images.dockerfile import check_changes
    check_changes(change)  # a bad instruction fails before the tarball is read or sent
    try:
        stream = sys.stdin.buffer if source == "-" else open(source, "rb")
    except OSError as exc:
        raise UsageError(f"cannot open {source}: {exc.strerror}") from exc
    with stream:
        print(_backend().import_image(stream, name, list(change)))


def register(app: typer.Typer) -> None:
    for fn in (images, pull, push, tag, rmi, load, save, import_):
        app.command(fn.__name__.rstrip("_"))(fn)
