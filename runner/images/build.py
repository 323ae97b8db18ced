"""``runner build``'s engine side: a context tar and options in, an image ID out, progress as Docker's JSON events.

One entry point (:func:`build`) for every caller: the engine's ``build`` method, natively, in the VM's guest
(the agent streams the context tar from the host) and behind the Engine API's ``POST /build``, which passes
the client's tar stream and forwards the events. The steps are run by runner.images.builder /
runner.images.steps.

The context: the stream is spooled to one file while hashed, then unpacked (validated like a layer) into
``<store>/build-contexts/<hash>/ctx`` next to the Dockerfile's text. Why keyed by the tar's hash: unpacking is
the biggest cost of a cached rebuild (a file created per context file, ~0.2 s for 500 files here), and an
unchanged context makes the same tar (the host writes it sorted, with the files' own times), so a rebuild with
nothing changed reuses the unpacked directory and only hashes the stream. The directory is never changed once
complete (made in a temp dir, renamed into place); a build holds a shared ``flock`` on it, and only the newest
:data:`KEEP_CONTEXTS` are kept (older ones nobody holds are removed). ``--no-cache`` unpacks afresh into a
private temp dir. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil

from runner.errors import BuildError
from runner.images.builder import Builder, _inside, check_options
from runner.images.context import DOCKERIGNORE, Ignore, unpack_context
from runner.images.steps import run_step

CONTEXTS = "build-contexts"
KEEP_CONTEXTS = 3
_CHUNK = 1 << 20


def build(store, stream, options: dict, progress, run, base, cancel=None) -> str:
    """Build from the context tar ``stream``; returns the image ID. ``run`` runs a RUN step's container and
    ``base`` resolves FROM images (see :class:`runner.images.builder.Builder`); ``cancel`` (a
    :class:`runner.stdio.Cancel`, or None) stops the build between steps once set."""
    opts = check_options(options)
    name = opts.get("dockerfile", "Dockerfile")
    spool, lock = store._claim_temp("context-")  # locked: a killed build's spool is swept (sweep_tmp)
    try:
        digest = hashlib.sha256(name.encode() + b"\0")
        with open(spool, "wb") as out:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        with _context(store, spool, name, digest.hexdigest(), fresh=bool(opts.get("nocache"))) as where:
            with open(os.path.join(where, "dockerfile"), encoding="utf-8") as f:
                text = f.read()
            builder = Builder(store, os.path.join(where, "ctx"), opts, progress, run, base, run_step)
            builder.cancel = cancel
            return builder.build(text)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool)
        os.close(lock)


@contextlib.contextmanager
def _context(store, spool: str, name: str, key: str, fresh: bool):
    """The unpacked context of the tar ``spool`` (``ctx/`` and ``dockerfile``), held for the build."""
    root = os.path.join(store.root, CONTEXTS)
    os.makedirs(root, mode=0o700, exist_ok=True)
    where = os.path.join(root, key)
    if fresh or not os.path.isdir(where):
        made, claim = _unpack(store, spool, name)
        try:
            if fresh:
                try:
                    yield made
                finally:
                    shutil.rmtree(made, ignore_errors=True)
                return
            try:
                os.rename(made, where)
            except OSError:  # another build of the same context got there first: theirs is as good
                shutil.rmtree(made, ignore_errors=True)
        finally:
            os.close(claim)
    lock = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        os.utime(where)  # the newest are kept
        _prune(root, keep=where)
        yield where
    finally:
        os.close(lock)


def _unpack(store, spool: str, name: str) -> tuple[str, int]:
    """Unpack into a locked temp dir (``_claim_temp``: a build killed mid-unpack leaves an orphan the next
    sweep removes); the dir and its lock, which the caller closes once the dir is renamed away or removed."""
    made, claim = store._claim_temp("context-", directory=True)
    try:
        os.mkdir(os.path.join(made, "ctx"), 0o700)
        with open(spool, "rb") as f:
            unpack_context(f, os.path.join(made, "ctx"))
        text = read_dockerfile(os.path.join(made, "ctx"), name)
        with open(os.path.join(made, "dockerfile"), "w", encoding="utf-8") as f:
            f.write(text)
        return made, claim
    except BaseException:
        shutil.rmtree(made, ignore_errors=True)
        os.close(claim)
        raise


def read_dockerfile(context: str, name: str) -> str:
    """The Dockerfile's text; it and ``.dockerignore`` are then dropped from what COPY sees when
    ``.dockerignore`` excludes them (they are sent anyway, as docker's CLI sends them)."""
    try:
        with open(_inside(context, name), "rb") as f:
            data = f.read(4 << 20)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise BuildError(f"Cannot locate specified Dockerfile: {name}",
                         hint="give its path with -f, or add a Dockerfile to the context") from exc
    ignore = Ignore.read(context)
    for kept in (name, DOCKERIGNORE):
        if ignore.ignored(kept):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(context, kept))
    return data.decode("utf-8", "replace")


def prune_contexts(store) -> None:
    """``builder prune`` / ``system prune``: remove every unpacked context no running build holds."""
    root = os.path.join(store.root, CONTEXTS)
    if os.path.isdir(root):
        _prune(root, keep="", count=0)


def _prune(root: str, keep: str, count: int = KEEP_CONTEXTS) -> None:
    """Remove unpacked contexts beyond the newest ``count`` that no build holds (and what a killed prune
    left half-removed)."""
    entries = []
    for entry in os.scandir(root):
        if entry.name.endswith(".gone"):
            shutil.rmtree(entry.path, ignore_errors=True)
            continue
        with contextlib.suppress(OSError):
            entries.append((entry.stat().st_mtime, entry.path))
    for _, path in sorted(entries, reverse=True)[count:]:
        if path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a running build: leave it
        except OSError:
            os.close(fd)
            continue
        try:
            gone = path + ".gone"
            os.rename(path, gone)
        except OSError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)
