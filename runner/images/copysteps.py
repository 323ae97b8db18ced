"""COPY and ADD: files from the context, another stage or an image, as one new layer, by Docker's rules.

Sources: paths relative to the context (``*``/``?``/``[...]`` globs, ``..`` or a symlink leaving the context
refused), ``<<NAME`` heredocs, or with ``--from=<stage|image>`` paths in that image's merged tree. A directory
source copies its *contents*; the destination is a directory when it ends in ``/``, when there are several
sources or a glob, or when it is a directory in the image already; a relative destination is relative to
WORKDIR. Ownership is 0:0 unless ``--chown`` (names looked up in the image's /etc/passwd and /etc/group);
``--chmod`` sets the mode; times are the sources'. Parent directories that exist in the image keep their
owner and mode in the layer (as an overlay copy-up would), missing ones are made 0755 with the ``--chown``
owner. ADD also unpacks a local tar archive (plain, gzip, bzip2, xz) into the destination, each member checked
like a layer entry; a remote URL is refused (builds here are offline, and a download is not reproducible).

The layer is written without a container (runner.images.layertar); the cache input is the sources' content
hash (names, types, modes, link targets, bytes; not times), as Docker's. Standard library only.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile

from runner.errors import BuildError, ImageError
from runner.images import dockerfile as df
from runner.images.builder import (NOP, Builder, Stage, State, _error, _expand, _inside, content_hash,
                                 glob_paths)
from runner.images.fsview import MergedView
from runner.images.layertar import LayerWriter

_ACCEPTED = ("from", "chown", "chmod", "link")
_REFUSED = ("keep-git-dir", "checksum", "parents", "exclude")


class Source:
    """One thing to copy: ``name`` (its base name), ``path`` (a real file or directory to read), ``view``
    and ``parts`` instead for a source in an image, ``data`` for a heredoc."""

    def __init__(self, name: str, path: str | None = None, view: MergedView | None = None,
                 parts: tuple = (), data: bytes | None = None):
        self.name, self.path, self.view, self.parts, self.data = name, path, view, parts, data

    def lstat(self) -> os.stat_result | None:
        if self.path is not None:
            return os.lstat(self.path)
        found = self.view.lstat(self.parts) if self.view is not None else None
        return found[1] if found else None


def copy_step(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    flags, rest = df.split_flags(inst, _ACCEPTED + _REFUSED)
    refused = sorted(set(flags) & set(_REFUSED))
    if refused or ("from" in flags and inst.keyword == "ADD"):
        what = f"--{refused[0]}" if refused else "--from"
        raise _error(inst, f"{inst.keyword} {what} is not supported by runner's builder")
    env = state.words_env()
    args, exec_form = df.command_form(df.Instruction(inst.keyword, rest, inst.line))
    items = [_expand(inst, a, env, b.escape) for a in args] if exec_form else df.words(rest, env, b.escape)
    if len(items) < 2:
        raise _error(inst, f"{inst.keyword} requires at least two arguments: source(s) and destination")
    srcs, dest = items[:-1], items[-1]
    chown = _expand(inst, flags["chown"], env, b.escape) if flags.get("chown") else None
    chmod = _mode(inst, flags.get("chmod"))
    sources, digest, many = _sources(b, stage, state, inst, srcs, flags.get("from"))
    flag_text = "".join(f"--{k}={flags[k]} " for k in ("chown", "chmod", "from") if flags.get(k))
    created_by = f"{NOP} {inst.keyword} {flag_text}{digest[:16]} in {dest} "
    key = b.cache_key(state.image_id, created_by, digest)
    if b.take_cached(state, key):
        return True
    view = b.view(state.image_id)
    uid, gid = b.lookup_ids(state, chown) if chown else (0, 0)
    dest_abs = posixpath.join(state.config.get("WorkingDir") or "/", dest)
    parts = view.resolve(dest_abs)
    found = view.lstat(parts)
    into_dir = dest.endswith("/") or dest in (".", "..") or many or bool(found and stat.S_ISDIR(found[1].st_mode))
    writer = b.new_layer()
    try:
        for source in sources:
            _write_source(b, inst, writer, view, source, parts, into_dir, (uid, gid, chmod))
        layer = writer.commit()
    except BaseException:
        writer.discard()
        raise
    b.commit(state, created_by, layer, key)
    return False


def _mode(inst: df.Instruction, text: str | None) -> int | None:
    if not text:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise _error(inst, f"invalid --chmod={text}", hint="give an octal mode such as 755")
    return mode


def _sources(b: Builder, stage: Stage, state: State, inst: df.Instruction, srcs: list[str],
             from_ref: str | None) -> tuple[list[Source], str, bool]:
    """(sources, their content hash, whether the destination must be a directory)."""
    import hashlib
    many = len(srcs) > 1
    if from_ref:
        image_id = _from_image(b, stage, inst, from_ref)
        view = b.view(image_id)
        out = []
        for src in srcs:
            if any(ch in src for ch in "*?["):
                raise _error(inst, f"wildcards are not supported with --from: {src}")
            parts = view.resolve("/" + src)
            if view.lstat(parts) is None:
                raise _error(inst, f"file not found in {from_ref}: {src}")
            out.append(Source(parts[-1] if parts else "", view=view, parts=parts))
        return out, hashlib.sha256(f"{image_id}\0{srcs}".encode()).hexdigest(), many
    out, pairs, extra = [], [], hashlib.sha256()
    for src in srcs:
        heredoc = df._HEREDOC.fullmatch(src)
        if heredoc:
            out.append(_heredoc(b, state, inst, heredoc.group(3)))
            extra.update(out[-1].data + b"\0")
            continue
        if src.startswith(("http://", "https://", "git@")) or "://" in src:
            raise _error(inst, f"{inst.keyword} from a URL is not supported: {src}",
                         hint="download it into the build context first, then COPY it")
        rel = posixpath.normpath(src.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            raise BuildError(f"line {inst.line}: forbidden path outside the build context: {src}",
                             hint="COPY and ADD read only files inside the context directory")
        matches = glob_paths(b.context, rel)
        many = many or any(ch in src for ch in "*?[")
        for match in matches:
            try:
                path = _inside(b.context, match)
            except BuildError as exc:
                raise BuildError(f"line {inst.line}: {exc.message}", hint=exc.hint) from exc
            if not os.path.lexists(path):
                matches = []
                break
            out.append(Source(posixpath.basename(match) or ".", path=path))
            pairs.append((match, path))
        if not matches:
            raise BuildError(f"line {inst.line}: {inst.keyword} failed: file not found in build context or "
                             f"excluded by .dockerignore: {src}", hint="check the path and .dockerignore")
    return out, content_hash(pairs) + extra.hexdigest(), many


def _heredoc(b: Builder, state: State, inst: df.Instruction, name: str) -> Source:
    for doc_name, body, expand in inst.heredocs:
        if doc_name == name:
            text = _expand(inst, body, state.words_env(), b.escape) if expand else body
            return Source(name, data=text.encode())
    raise _error(inst, f"no heredoc named {name}")


def _from_image(b: Builder, stage: Stage, inst: df.Instruction, ref: str) -> str:
    dep = b.stage_ref(ref, stage.index)
    if dep is not None:
        return dep.image_id
    try:
        return b.base_image(ref).id
    except BuildError:
        raise
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        raise _error(inst, f"--from={ref}: {message}", getattr(exc, "hint", None)) from exc


def add_parents(writer: LayerWriter, view: MergedView, parts: tuple, uid: int, gid: int) -> None:
    """The directories above ``parts``: as the image has them, or new (0755, ``uid``:``gid``)."""
    for i in range(1, len(parts)):
        sub = parts[:i]
        name = "/".join(sub)
        if name in writer.names:
            continue
        found = view.lstat(sub)
        if found is not None and stat.S_ISDIR(found[1].st_mode):
            writer.add_path(name, found[0], found[1])
        else:
            writer.add_dir(name, 0o755, uid, gid)


def _write_source(b: Builder, inst: df.Instruction, writer: LayerWriter, view: MergedView, source: Source,
                  dest: tuple, into_dir: bool, owner: tuple) -> None:
    uid, gid, chmod = owner
    if source.data is not None:
        target = dest + (source.name,) if into_dir else dest
        add_parents(writer, view, target, uid, gid)
        writer.add_bytes("/".join(target), source.data, 0o644 if chmod is None else chmod, uid, gid)
        return
    st = source.lstat()
    if st is None:
        raise _error(inst, f"source {source.name} vanished")
    if stat.S_ISDIR(st.st_mode):  # the directory's contents go into dest
        add_parents(writer, view, dest + ("x",), uid, gid)
        found = view.lstat(dest)
        if dest and (found is None or not stat.S_ISDIR(found[1].st_mode)):
            writer.add_dir("/".join(dest), 0o755 if chmod is None else chmod, uid, gid, st.st_mtime)
        for rel, path, sub in _tree(source):
            writer.add_path("/".join(dest + rel), path, sub, uid, gid, _mode_for(chmod, sub))
        return
    target = dest + (source.name,) if into_dir else dest
    if not target:
        raise _error(inst, "cannot copy a file onto /", hint="give a destination path")
    if inst.keyword == "ADD" and source.path is not None and _unpack_archive(writer, view, source.path, target[:-1]
                                                                              if into_dir else target, uid, gid):
        return
    add_parents(writer, view, target, uid, gid)
    writer.add_path("/".join(target), source.path or source.view.lstat(source.parts)[0], st, uid, gid,
                    _mode_for(chmod, st))


def _mode_for(chmod: int | None, st: os.stat_result) -> int | None:
    return None if chmod is None or stat.S_ISLNK(st.st_mode) else chmod


def _tree(source: Source):
    """(relative components, real path, lstat) below a directory source, parents first."""
    if source.view is not None:
        yield from source.view.walk(source.parts)
        return
    for dirpath, dirnames, filenames in os.walk(source.path):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, source.path)
        base = () if rel_dir == "." else tuple(rel_dir.split(os.sep))
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            yield base + (name,), full, os.lstat(full)


def _unpack_archive(writer: LayerWriter, view: MergedView, path: str, dest: tuple, uid: int, gid: int) -> bool:
    """ADD's auto-extraction: the members of the tar archive at ``path`` below ``dest``; False if it is not
    a tar archive (then ADD copies the file as it is)."""
    from runner.images.layers import clean_name, decompressed
    with open(path, "rb") as raw:
        try:
            tar = tarfile.open(fileobj=decompressed(raw), mode="r|")
        except (tarfile.TarError, ImageError, OSError, EOFError):
            return False
        add_parents(writer, view, dest + ("x",), uid, gid)
        if dest and "/".join(dest) not in writer.names:
            found = view.lstat(dest)
            if found is None:
                writer.add_dir("/".join(dest), 0o755, uid, gid)
        try:
            for member in tar:
                try:
                    parts = clean_name(member.name)
                except ImageError as exc:
                    raise BuildError(f"ADD {os.path.basename(path)}: {exc.message}") from exc
                if not parts:
                    continue
                if member.islnk():
                    member.linkname = "/".join(dest + clean_name(member.linkname))
                member.name = "/".join(dest + parts)
                writer.add(member, tar.extractfile(member) if member.isreg() else None)
        except tarfile.TarError as exc:
            raise BuildError(f"ADD {os.path.basename(path)}: the archive is corrupt: {exc}") from exc
    return True
