"""``runner build`` and ``runner builder prune``: the host side of an image build.

The host turns CONTEXT into the tar the engine takes (runner.images.context: ``.dockerignore`` applied here, so
ignored files never leave the host nor reach the VM), streams it through a pipe while the backend (the engine
in-process, or the agent in the VM) reads it, and renders the engine's progress events:

* classic (default, docker's classic builder): the ``stream`` texts as they come (``Step 1/3 : FROM ...``,
  `` ---> Using cache``, the RUN output, ``Successfully built ...``);
* ``--progress plain`` (logs, CI): one ``#N [N/M] INSTRUCTION`` line per step, its output lines as
  ``#N 0.123 text``, then ``#N CACHED`` or ``#N DONE 0.2s``;
* ``-q``: only the image ID.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import List, Optional

import typer

from runner.errors import UsageError


def build(
    context: str = typer.Argument(..., help="the context directory, or - for a tar (or a Dockerfile) on stdin"),
    tags: List[str] = typer.Option([], "-t", "--tag", help="name the image NAME[:TAG] (repeatable)"),
    file: Optional[str] = typer.Option(None, "-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile; - for stdin)"),
    build_args: List[str] = typer.Option([], "--build-arg", help="set a build-time variable K=V (K alone: from the environment)"),
    target: Optional[str] = typer.Option(None, "--target", help="build this stage (and what it needs) only"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not use the build cache"),
    labels: List[str] = typer.Option([], "--label", help="set a label k=v on the image (repeatable)"),
    platform: Optional[str] = typer.Option(None, "--platform", help="the platform to build for (this engine's only)"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only the image ID"),
    iidfile: Optional[str] = typer.Option(None, "--iidfile", help="write the image ID to this file"),
    progress: str = typer.Option("auto", "--progress", help="auto, plain (one line per event) or tty"),
    network: Optional[str] = typer.Option(None, "--network", help="the network of RUN steps (default bridge; none)"),
    rm: bool = typer.Option(True, "--rm/--no-rm", help="remove intermediate containers (always done)"),
    force_rm: bool = typer.Option(False, "--force-rm", help="remove intermediate containers even on failure (always done)"),
):
    """Build an image from a Dockerfile (docker build)."""
    from runner.cli.context import STATE
    options = _options(tags, build_args, target, no_cache, labels, platform, network)
    if progress not in ("auto", "plain", "tty"):
        raise UsageError(f"invalid --progress {progress!r}", hint="use auto, plain or tty")
    stream, extra, dockerfile = _context(context, file)
    if dockerfile:
        options["dockerfile"] = dockerfile
    render = _Render(quiet, plain=progress == "plain")
    with _Feeder(stream, context, extra, dockerfile) as feed:
        image_id = STATE.backend.build(feed.reader, options, render)
    if quiet:
        print(image_id)
    if iidfile:
        with open(iidfile, "w") as f:
            f.write(image_id)


def _options(tags, build_args, target, no_cache, labels, platform, network) -> dict:
    from runner.images.reference import Reference
    for tag in tags:
        Reference.parse(tag)  # a bad name fails before the context is read
    args: dict = {}
    for item in build_args:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --build-arg {item!r}", hint="use --build-arg NAME=VALUE")
        args[key] = value if sep else os.environ.get(key)
    label_map = {}
    for item in labels:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --label {item!r}", hint="use --label key=value")
        label_map[key] = value
    options = {"tags": list(tags), "buildargs": args, "labels": label_map, "nocache": no_cache}
    for key, value in (("target", target), ("platform", platform), ("network", network)):
        if value:
            options[key] = value
    return options


def _context(context: str, file: str | None):
    """(stdin stream or None, extra files for the tar, the Dockerfile's name in the context)."""
    if context == "-":
        if file == "-":
            raise UsageError("cannot read both the context and the Dockerfile from stdin")
        data = sys.stdin.buffer.read()
        if _is_archive(data):
            import io
            return io.BytesIO(data), {}, file
        return None, {"Dockerfile": data}, "Dockerfile"  # a Dockerfile alone: an empty context
    if not os.path.isdir(context):
        raise UsageError(f"unable to prepare context: path {context!r} not found or not a directory",
                         hint="give the context directory, or - for stdin")
    if file == "-":
        return None, {".dockerfile.stdin": sys.stdin.buffer.read()}, ".dockerfile.stdin"
    if file is None:
        return None, {}, None
    path = os.path.abspath(file)
    root = os.path.abspath(context)
    if path.startswith(root + os.sep):
        return None, {}, os.path.relpath(path, root).replace(os.sep, "/")
    try:
        with open(path, "rb") as f:  # outside the context: sent inside it under a name of its own, as docker's
            return None, {".dockerfile.outside": f.read()}, ".dockerfile.outside"
    except OSError as exc:
        raise UsageError(f"cannot read the Dockerfile {file}: {exc.strerror}") from exc


def _is_archive(data: bytes) -> bool:
    import tarfile
    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh" or data[:6] == b"\xfd7zXZ\x00" or data[:4] == b"\x28\xb5\x2f\xfd":
        return True
    if len(data) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(data[:512], "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


class _Feeder:
    """Writes the context tar into a pipe from a thread while the backend reads the other end."""

    def __init__(self, stream, context: str, extra: dict, dockerfile: str | None):
        self.stream, self.context, self.extra, self.dockerfile = stream, context, extra, dockerfile
        self.error: BaseException | None = None

    def __enter__(self) -> "_Feeder":
        if self.stream is not None:
            self.reader = self.stream
            self.thread = None
            return self
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb")
        self._out = os.fdopen(write_fd, "wb")
        self.thread = threading.Thread(target=self._write, name="context", daemon=True)
        self.thread.start()
        return self

    def _write(self) -> None:
        from runner.images.context import write_context
        try:
            if self.context == "-":
                write_context_only(self._out, self.extra)
            else:
                write_context(self.context, self._out, self.dockerfile, self.extra)
        except BrokenPipeError:
            pass  # the engine stopped reading (it failed): its error is the one to report
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._out.close()
            except OSError:
                pass

    def __exit__(self, *exc_info) -> None:
        self.reader.close()
        if self.thread is not None:
            self.thread.join()
            if self.error is not None and exc_info[0] is None:
                raise self.error


def write_context_only(out, files: dict) -> None:
    """A context of just ``files`` (a Dockerfile from stdin)."""
    import io
    import tarfile
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


class _Render:
    """Prints the engine's build events in the chosen style (see the module docstring)."""

    def __init__(self, quiet: bool, plain: bool):
        self.quiet, self.plain = quiet, plain
        self.current = 0
        self.began = time.monotonic()

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        if not self.plain:
            text = event.get("stream")
            if isinstance(text, str):
                sys.stdout.write(text)
                sys.stdout.flush()
            return
        self._plain(event)

    def _plain(self, event: dict) -> None:
        step = event.get("step")
        if isinstance(step, dict):
            n = step.get("n")
            status = step.get("status")
            if status == "start":
                self.current, self.began = n, time.monotonic()
                print(f"#{n} [{n}/{step.get('total')}] {step.get('text')}", flush=True)
            elif status == "cached":
                print(f"#{n} CACHED", flush=True)
            elif status == "done":
                print(f"#{n} DONE {step.get('seconds', 0):.1f}s", flush=True)
            return
        text = event.get("stream")
        if isinstance(text, str) and (event.get("output") or text.startswith("[")):
            stamp = time.monotonic() - self.began
            for line in text.splitlines():
                print(f"#{self.current} {stamp:.3f} {line}" if event.get("output") else line, flush=True)


builder_app = typer.Typer(rich_markup_mode=None, help="Manage the build cache", no_args_is_help=True)


@builder_app.command("prune")
def prune(force: bool = typer.Option(False, "-f", "--force", help="do not ask (runner never asks)")):
    """Remove the build cache: intermediate images of earlier builds (docker builder prune)."""
    from runner.cli.context import STATE
    from runner.cli.render import human_size
    result = STATE.backend.build_prune()
    for image_id in result.get("CachesDeleted") or []:
        print(f"Deleted: {image_id}")
    print(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed') or 0)}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.add_typer(builder_app, name="builder", help="Manage the build cache (docker builder)")
