"""Read an image's root filesystem as overlayfs would show it, without mounting anything.

Why: a build needs a few facts from the image a step starts from (does the WORKDIR exist, the owner and mode of
a COPY destination's parent directories, ``/etc/passwd`` for ``--chown=name``) and the files of another stage
for ``COPY --from``. Mounting an overlay for each would need a mount namespace per step; reading the unpacked
layer directories (runner.images.store, top-most first, overlay-format whiteouts: a 0:0 character device hides
a name, the ``overlay.opaque`` xattr hides a directory's lower contents) gives the same answers. Symbolic links
met while resolving a path are followed *inside* this root (an absolute target starts again at the image's
``/``), as Docker's FollowSymlinkInScope does. Standard library only (runs in the guest).
"""

from __future__ import annotations

import os
import stat

from runner.errors import BuildError

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
_MAX_LINKS = 40


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    for name in _OPAQUE:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class MergedView:
    """The merged tree of ``lowers`` (layer directories, top-most first; empty: an empty image)."""

    def __init__(self, lowers: list[str]):
        self.lowers = list(lowers)

    def instances(self, parts: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
        """Where ``parts`` is visible: the top-most entry, and for a directory every lower one merged into it."""
        out: list[tuple[str, os.stat_result]] = []
        for layer in self.lowers:
            found, blocked = self._probe(layer, parts)
            if found is None:
                if blocked:
                    break
                continue
            path, st = found
            if _is_whiteout(st) or (out and not stat.S_ISDIR(st.st_mode)):
                break
            out.append(found)
            if not stat.S_ISDIR(st.st_mode) or _opaque(path):
                break
        return out

    @staticmethod
    def _probe(layer: str, parts: tuple[str, ...]):
        """((path, lstat) of ``parts`` in ``layer``, or None; whether this layer hides lower layers' ``parts``)."""
        path = layer
        for i, name in enumerate(parts):
            path = os.path.join(path, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None, False
            if i < len(parts) - 1:
                if _is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                    return None, True  # a whiteout or a file here hides whatever lower layers have below
                if _opaque(path):
                    try:
                        os.lstat(os.path.join(layer, *parts))
                    except FileNotFoundError:
                        return None, True
        return (path, os.lstat(path) if not parts else st), False

    def lstat(self, parts: tuple[str, ...]) -> tuple[str, os.stat_result] | None:
        found = self.instances(parts)
        return found[0] if found else None

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        names: set[str] = set()
        hidden: set[str] = set()
        for path, st in self.instances(parts):
            if not stat.S_ISDIR(st.st_mode):
                break
            for name in os.listdir(path):
                if name in names or name in hidden:
                    continue
                if _is_whiteout(os.lstat(os.path.join(path, name))):
                    hidden.add(name)
                else:
                    names.add(name)
        return sorted(names)

    def resolve(self, path: str, follow_last: bool = True) -> tuple[str, ...]:
        """``path`` (absolute, in the image) as components with every symlink followed inside the root
        (the last one only when ``follow_last``)."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            found = self.lstat(tuple(done + [name]))
            if found is None or not stat.S_ISLNK(found[1].st_mode) or (not todo and not follow_last):
                done.append(name)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise BuildError(f"too many levels of symbolic links in {path}")
            target = os.readlink(found[0])
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
        return tuple(done)

    def read_text(self, path: str, limit: int = 1 << 20) -> str:
        """A small text file of the image (``/etc/passwd``), "" when it is missing."""
        found = self.lstat(self.resolve(path))
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return ""
        with open(found[0], "rb") as f:
            return f.read(limit).decode("utf-8", "replace")

    def walk(self, parts: tuple[str, ...]):
        """(relative components below ``parts``, real path, lstat) of everything in the merged directory
        ``parts``, parents first, sorted."""
        for name in self.listdir(parts):
            child = parts + (name,)
            found = self.lstat(child)
            if found is None:
                continue
            yield child[len(parts):], found[0], found[1]
            if stat.S_ISDIR(found[1].st_mode):
                for rel, real, st in self.walk(child):
                    yield (name,) + rel, real, st


def lookup_ids(view: MergedView, user: str) -> tuple[int, int]:
    """``--chown`` value (``name``, ``uid``, ``name:group``, ``uid:gid``) as numbers, looked up in the image's
    /etc/passwd and /etc/group as Docker does; a missing name is a build error."""
    user_arg, sep, group_arg = user.partition(":")
    uid = _find_id(view, "/etc/passwd", user_arg, "user")
    if sep:
        gid = _find_id(view, "/etc/group", group_arg, "group")
    else:
        gid = uid  # Docker: --chown=uid alone gives the same number as gid
        if not user_arg.isdigit():
            for line in view.read_text("/etc/passwd").splitlines():
                fields = line.split(":")
                if len(fields) >= 4 and fields[0] == user_arg and fields[3].isdigit():
                    gid = int(fields[3])
    return uid, gid


def _find_id(view: MergedView, path: str, name: str, what: str) -> int:
    if name.isdigit():
        return int(name)
    for line in view.read_text(path).splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise BuildError(f"unable to find {what} {name}: no matching entries in {path}",
                     hint=f"use a numeric id, or a {what} that exists in the image")
