"""A build context: ``.dockerignore`` rules, the context tar a client sends, and its safe unpacking.

Why one module for both ends: the host (``runner build DIR``) walks the directory and writes the tar with the
ignore rules applied, so ignored files never leave the host (nor reach a VM); the engine (natively, in the
guest, and behind ``POST /build``) unpacks whatever tar arrives exactly as it unpacks an image layer (no
absolute paths, no ``..``, nothing written through a symlink, no device nodes), into a directory of its own.

Ignore rules are Docker's (moby/patternmatcher): one pattern per line, ``#`` comments, patterns cleaned and
made relative; ``*`` and ``?`` stay within one path component, ``**`` spans any number of them, ``!`` makes an
exception; the last pattern that matches a path (or one of its parent directories) decides. As in Docker's
CLI, the Dockerfile and ``.dockerignore`` are always sent; the builder drops them from what COPY sees when
``.dockerignore`` names them. Standard library only (runs in the guest).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import tarfile

from runner.errors import BuildError, ImageError

DOCKERIGNORE = ".dockerignore"


class Pattern:
    """One ``.dockerignore`` line as a regular expression over ``/``-separated relative paths."""

    __slots__ = ("text", "exclusion", "regex")

    def __init__(self, text: str):
        self.exclusion = text.startswith("!")
        body = text[1:].strip() if self.exclusion else text
        body = posixpath.normpath(body.replace(os.sep, "/"))
        if len(body) > 1 and body.startswith("/"):
            body = body.lstrip("/") or "."
        self.text = body
        self.regex = re.compile(_to_regex(body))

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _to_regex(pattern: str) -> str:
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise BuildError(f"invalid .dockerignore pattern {pattern!r}: unterminated [")
            body = pattern[i + 1:end]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith(("!", "^")) else re.escape(body)) + "]")
            i = end
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out) + "$"


class Ignore:
    """The rules of one ``.dockerignore`` (empty: nothing ignored)."""

    def __init__(self, lines: list[str] | None = None):
        self.patterns = [Pattern(line) for line in lines or []]
        self.has_exceptions = any(p.exclusion for p in self.patterns)

    @classmethod
    def parse(cls, text: str) -> "Ignore":
        lines = []
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                lines.append(line)
        return cls(lines)

    @classmethod
    def read(cls, directory: str) -> "Ignore":
        try:
            with open(os.path.join(directory, DOCKERIGNORE), encoding="utf-8", errors="replace") as f:
                return cls.parse(f.read())
        except FileNotFoundError:
            return cls()

    def ignored(self, path: str) -> bool:
        """Whether the relative ``path`` (``a/b/c``) is excluded: the last pattern matching it or a parent wins."""
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # an inclusion cannot change a match, an exception cannot change a non-match
            hit = pattern.match(path) or any(pattern.match("/".join(parents[:i + 1])) for i in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched


def write_context(directory: str, out, dockerfile: str | None = None, extra: dict[str, bytes] | None = None) -> int:
    """Write the context ``directory`` as a tar to the binary stream ``out``, minus what ``.dockerignore``
    excludes (``dockerfile``, a relative path, and ``.dockerignore`` are always kept, as docker's CLI keeps
    them); ``extra`` adds files by name (a Dockerfile from outside the context or from stdin). Returns the
    number of entries written. Owners are written as 0:0 (the builder's COPY gives root ownership anyway)."""
    ignore = Ignore.read(directory)
    keep = {DOCKERIGNORE, dockerfile or "Dockerfile"}
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, full, st in _walk(directory, ignore, keep):
            info, data = _entry(rel, full, st)
            try:
                tar.addfile(info, data)
            finally:
                if data is not None:
                    data.close()
            count += 1
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
            count += 1
    return count


def _walk(directory: str, ignore: Ignore, keep: set[str]):
    """(relative path, full path, lstat) of every kept entry, parents before children, sorted."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(directory, rel_dir) if rel_dir else directory
        try:
            names = sorted(os.listdir(full_dir), reverse=True)
        except OSError as exc:
            raise BuildError(f"cannot read the build context: {exc.strerror}: {full_dir}") from exc
        pending = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(full_dir, name)
            st = os.lstat(full)
            is_dir = stat.S_ISDIR(st.st_mode)
            if ignore.ignored(rel) and rel not in keep:
                if is_dir and ignore.has_exceptions:
                    pending.append(rel)  # an exception may bring back something below it: look inside
                continue
            yield rel, full, st
            if is_dir:
                pending.append(rel)
        stack.extend(pending)


def _entry(rel: str, full: str, st: os.stat_result):
    info = tarfile.TarInfo(rel)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        return info, None
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
        return info, None
    if not stat.S_ISREG(st.st_mode):  # fifos, sockets, devices: Docker's CLI sends them; COPY skips them
        info.type = tarfile.FIFOTYPE if stat.S_ISFIFO(st.st_mode) else tarfile.REGTYPE
        return info, None
    info.size = st.st_size
    return info, open(full, "rb")


def unpack_context(stream, target: str) -> None:
    """Unpack a context tar (plain or compressed, as Docker accepts) from ``stream`` into the empty directory
    ``target``, validated like an image layer: a ``..`` or an absolute path is refused, no device node is made,
    nothing is written through a symlink."""
    from runner.images import layers
    try:
        layers.unpack(stream, target, whiteouts=layers.WHITEOUT_FLAT, allow_devices=False, same_owner=False)
    except ImageError as exc:
        raise BuildError(f"invalid build context: {exc.message}",
                         hint="send a tar of the context directory with relative paths") from exc
