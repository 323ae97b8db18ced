"""`runner cp`: copy files between a container and this machine, as ``docker cp`` does, through tar streams.

The engine side (runner.engine.archive) never leaves the container's root. This side never leaves the
destination: the tar coming out of a container is untrusted (the container wrote it), so every member is
checked before it is written: no absolute names, no ``..``, no writing through a symlink (a symlink member is
created as a link and never followed later), no device nodes; hard links only to members inside. Owners
become the caller's unless ``-a``, as with docker cp.

Docker's path rules kept: ``CTR:/dir/.`` copies a directory's content; a destination that exists and is a
directory receives the source under its own name; otherwise the source is created under the destination's
name. Copying into a container, files are owned by root (uid 0) unless ``-a``.
"""

from __future__ import annotations

import os
import posixpath
import sys
import tarfile
import tempfile

import typer

from runner.errors import NotFound, UsageError

_SPOOL = 16 * 1024 * 1024  # kept in memory up to this size, then in a temp file


def split(arg: str) -> tuple[str | None, str]:
    """``CTR:PATH`` -> (CTR, PATH); a local path (absolute, ``./x``, or without a colon) -> (None, path)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    ctr, _, path = arg.partition(":")
    if not ctr:
        raise UsageError(f"invalid container reference in {arg!r}")
    return ctr, path or "/"


def cp(src: str = typer.Argument(..., help="CONTAINER:SRC_PATH or a local path (- for a tar on stdin)"),
       dest: str = typer.Argument(..., help="CONTAINER:DEST_PATH or a local path (- for a tar on stdout)"),
       archive: bool = typer.Option(False, "-a", "--archive", help="keep the files' owners (uid/gid)"),
       follow_link: bool = typer.Option(False, "-L", "--follow-link", help="follow a symlink given as SRC_PATH")):
    """Copy files between a container and the local filesystem (docker cp)."""
    from runner.cli.context import backend
    (sctr, spath), (dctr, dpath) = split(src), split(dest)
    if sctr and dctr:
        raise UsageError("copying between containers is not supported", hint="copy to the host, then back in")
    if not sctr and not dctr:
        raise UsageError("must specify at least one container source", hint="e.g. runner cp CTR:/etc/hosts .")
    if sctr:
        from_container(backend(), sctr, _abs(spath), dpath, archive, follow_link)
    else:
        into_container(backend(), spath, dctr, _abs(dpath), archive, follow_link)


def _abs(path: str) -> str:
    return path if path.startswith("/") else "/" + path


# ------------------------------------------------------------------------------------------------ container -> host

def from_container(be, ctr: str, path: str, dest: str, keep_owner: bool, follow: bool) -> None:
    st = be.archive_stat(ctr, path)
    if follow and st.get("linkTarget"):
        target = st["linkTarget"]
        path = target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
        st = be.archive_stat(ctr, path)
    with tempfile.SpooledTemporaryFile(_SPOOL) as spool:
        be.archive_get(ref=ctr, path=path, stream=spool)
        spool.seek(0)
        if dest == "-":
            while True:
                chunk = spool.read(1 << 16)
                if not chunk:
                    return
                sys.stdout.buffer.write(chunk)
        contents_only = path.endswith("/.") and st["mode"] & (1 << 31)
        if os.path.isdir(dest) and not contents_only:
            target_dir, top = dest, st["name"]
        elif contents_only:
            os.makedirs(dest, exist_ok=True)
            target_dir, top = dest, None
        else:
            parent = os.path.dirname(os.path.abspath(dest))
            if not os.path.isdir(parent):
                raise NotFound(f"destination directory {parent} does not exist")
            if dest.endswith("/") and not st["mode"] & (1 << 31):
                raise UsageError(f"destination {dest} is not a directory")
            target_dir, top = parent, os.path.basename(os.path.abspath(dest))
        with tarfile.open(fileobj=spool, mode="r|") as tar:
            safe_extract(tar, target_dir, st["name"], top, keep_owner)


def _rename(name: str, top_from: str, top_to: str | None) -> str | None:
    """The member's path below the destination (None: skip it, the top directory when copying contents)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return None
    if parts[0] == top_from:
        parts = ([top_to] if top_to else []) + parts[1:]
    if not parts:
        return None
    return "/".join(parts)


def _inside(root: str, rel: str) -> str:
    """``root/rel`` after checking that ``rel`` stays below root and no directory on the way is a symlink."""
    if rel.startswith("/") or ".." in rel.split("/"):
        raise UsageError(f"refusing archive member {rel!r}: it points outside the destination")
    path = root
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise UsageError(f"refusing archive member {rel!r}: {path} is a symbolic link")
    return os.path.join(root, rel)


def safe_extract(tar: tarfile.TarFile, root: str, top_from: str, top_to: str | None, keep_owner: bool) -> None:
    """Extract members of an untrusted tar below ``root`` (see the module docstring)."""
    uid, gid = os.getuid(), os.getgid()
    for member in tar:
        rel = _rename(member.name, top_from, top_to)
        if rel is None or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            continue  # device nodes, fifos: not made on this machine
        path = _inside(root, rel)
        if member.islnk():
            link = _rename(member.linkname, top_from, top_to)
            if link is None:
                continue
            member.linkname = os.path.relpath(_inside(root, link), root)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            os.unlink(path)  # a file or link of that name is replaced, never written through
        member.name = rel
        if not keep_owner:
            member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
        member.mode &= 0o7777 if keep_owner else 0o777
        tar.extract(member, root, set_attrs=True, numeric_owner=True)


# ------------------------------------------------------------------------------------------------ host -> container

def into_container(be, src: str, ctr: str, path: str, keep_owner: bool, follow: bool) -> None:
    if src == "-":
        be.archive_put(stream=sys.stdin.buffer, ref=ctr, path=path)
        return
    if not os.path.lexists(src):
        raise NotFound(f"could not find the file {src} on this machine")
    if follow and os.path.islink(src):
        src = os.path.realpath(src)
    contents_only = src.endswith("/.") and os.path.isdir(src)
    try:
        st = be.archive_stat(ctr, path)
        is_dir = bool(st["mode"] & (1 << 31))
    except NotFound:
        st, is_dir = None, False
    if contents_only:
        if st is None:
            raise NotFound(f"destination {ctr}:{path} does not exist", hint="create the directory first")
        target_dir, name = path, None
    elif is_dir:
        target_dir, name = path, os.path.basename(os.path.abspath(src))
    else:
        if path.endswith("/"):
            raise NotFound(f"destination directory {ctr}:{path} does not exist")
        target_dir, name = posixpath.dirname(path.rstrip("/")) or "/", posixpath.basename(path.rstrip("/"))
    with tempfile.SpooledTemporaryFile(_SPOOL) as spool:
        with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
                if not keep_owner:
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                return info
            if name is None:
                for entry in sorted(os.listdir(src)):
                    tar.add(os.path.join(src, entry), arcname=entry, filter=owner)
            else:
                tar.add(src, arcname=name, filter=owner)
        spool.seek(0)
        be.archive_put(stream=spool, ref=ctr, path=target_dir)


def register(app: typer.Typer) -> None:
    app.command("cp")(cp)
