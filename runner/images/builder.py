"""The state of one image build (runner.images.build drives it): stages, ARG scope, the cache and commits.

Shape, as Docker's classic builder (moby ``builder/dockerfile``): every instruction is a *step* that starts from
the image of the step before and commits a new image (its config changed, and for RUN, COPY, ADD and a new
WORKDIR a new layer on top). Each committed step image is kept in the store as an *intermediate* image
(hidden from ``images``) and remembered in the build cache under the key Docker uses:

    sha256(parent image ID + the step's history text ("created_by") + for COPY/ADD the content hash of its
    sources)

so a rebuild with nothing changed commits nothing and runs no container (" ---> Using cache"), and a change
to one COPY source reruns that step and every step after it (their parents change). The cache is a directory of
small files (``<store>/build-cache/<key>`` holding an image ID and how often the build used it, for ``system
df``'s build cache records), each written atomically, so concurrent builds need no lock (two hits at once may
count one); an entry whose image was removed since is a miss.

Who does what: this module is the Dockerfile's meaning (stages, ARG scoping, substitution, COPY/ADD rules,
config and history); a RUN step's container comes from the ``run`` callable the engine passes
(runner.engine.build: a real container of the engine), and returns the container's overlay upper directory,
which runner.images.layertar turns into the layer. Progress goes to ``progress`` as the JSON events of Docker's
``POST /build`` stream (``{"stream": ...}``, ``{"aux": {"ID": ...}}``) plus ``{"step": {...}}`` events for the
CLI's ``--progress plain`` view (an API server drops those). Standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import json
import os
import stat
import time

from runner.errors import BuildError, NotFound, RunnerError, UsageError
from runner.images import dockerfile as df
from runner.images.fsview import MergedView, lookup_ids
from runner.images.layertar import LayerWriter, write_upper
from runner.images.rootfs import DEFAULT_PATH, canonical_json, host_platform, rfc3339
from runner.images.store import MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST

# Build args every build accepts without an ARG line (Docker's list); used by RUN, never recorded in history.
PREDEFINED_ARGS = frozenset(a for n in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
                            for a in (n, n.lower()))
# The files a build container gets bind-mounted: their mount points are not part of a RUN's layer (Docker's rule).
MOUNTED_FILES = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf"})
OPTION_TYPES = {"tags": list, "dockerfile": str, "buildargs": dict, "target": str, "nocache": bool,
                "labels": dict, "quiet": bool, "platform": str, "network": str, "rm": bool, "forcerm": bool}
NOP = "/bin/sh -c #(nop) "


def check_options(options: dict) -> dict:
    """``options`` (JSON from the CLI, the agent or ``POST /build``) checked: known keys, JSON types, names."""
    from runner.images.reference import Reference
    if not isinstance(options, dict):
        raise UsageError("build options must be an object")
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None:
            raise UsageError(f"unknown build option {key!r}")
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
            raise UsageError(f"build option {key!r} must be a {kind.__name__}")
    opts = {k: v for k, v in options.items() if v is not None}
    for tag in opts.get("tags", []):
        if not isinstance(tag, str):
            raise UsageError("build tags must be strings")
        if Reference.parse(tag).digest:
            raise UsageError(f"invalid tag {tag!r}: a build result is named NAME[:TAG], not by digest")
    for key in ("buildargs", "labels"):
        for k, v in opts.get(key, {}).items():
            if not isinstance(k, str) or not k or not (v is None or isinstance(v, str)):
                raise UsageError(f"invalid {key} entry {k!r}: names and values are strings")
    name = opts.get("dockerfile", "Dockerfile")
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise UsageError(f"invalid Dockerfile path {name!r}: it must be a path inside the context")
    platform = opts.get("platform")
    if platform and platform.split("/")[:2] != [host_platform()["os"], host_platform()["architecture"]]:
        raise UsageError(f"cannot build for platform {platform!r} here",
                         hint=f"this engine builds for {host_platform()['os']}/{host_platform()['architecture']}")
    return opts


def read_cache_entry(path: str) -> tuple[str, int]:
    """A build cache entry: (the step image's ID, how many builds made or used it; 1 for an entry written
    before the count was kept)."""
    with open(path) as f:
        words = f.read().split()
    if not words:
        raise ValueError(f"empty build cache entry {path}")
    return words[0], int(words[1]) if len(words) > 1 and words[1].isdigit() else 1


def check_cancelled(cancel) -> None:
    """Raise the cancelled build's error once its :class:`runner.stdio.Cancel` is set (None: never)."""
    if cancel is not None and cancel.is_set():
        raise BuildError("the build was cancelled: its client went away",
                         hint="nothing was tagged; run the build again (finished steps are cached)")


class Stage:
    """One ``FROM`` and the instructions after it."""

    def __init__(self, index: int, inst: df.Instruction, base: str, name: str | None):
        self.index, self.inst, self.base, self.name = index, inst, base, name
        self.instructions: list[df.Instruction] = []
        self.image_id: str | None = None  # once built


class State:
    """Where a stage's build is: the current image (ID, full config document) and the ARGs in scope."""

    def __init__(self, image_id: str | None, doc: dict):
        self.image_id, self.doc = image_id, doc
        self.args: dict[str, str] = {}
        self.cmd_set = False

    @property
    def config(self) -> dict:
        return self.doc.setdefault("config", {})

    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in self.config.get("Env") or [])

    def words_env(self) -> dict[str, str]:
        """What ``$VAR`` sees in an instruction: the ARGs, overridden by ENV (Docker's order)."""
        return {**self.args, **self.env()}


class Builder:
    """One build. ``run(image_id, argv, env, user, workdir, network, output) -> (exit code, upper dir, done)``
    runs a RUN step's container; ``base(ref) -> Image`` resolves a FROM or COPY --from image."""

    def __init__(self, store, context: str, options: dict, progress, run, base, run_step):
        self.store, self.context, self.opts = store, context, options
        self.run_step = run_step  # runner.images.steps.run_step: what each instruction does
        self.progress = progress or (lambda event: None)
        self.run_container, self.base_image = run, base
        self.cache_dir = os.path.join(store.root, "build-cache")
        self.stages: list[Stage] = []
        self.meta_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.step, self.total = 0, 0
        self.escape = "\\"
        self.cancel = None  # a runner.stdio.Cancel: set when the build's client went away

    # -- events
    def say(self, text: str) -> None:
        self.progress({"stream": text})

    def step_event(self, status: str, text: str, **extra) -> None:
        self.progress({"step": {"n": self.step, "total": self.total, "text": text, "status": status, **extra}})

    # -- the whole build
    def build(self, text: str) -> str:
        """Build the Dockerfile ``text`` (its directory is :attr:`context`); returns the image ID."""
        instructions, notes = _parse(text)
        for note in notes:
            self.say(f"[Note] {note}\n")
        self._stages(instructions)
        target = self._target()
        order = self._needed(target)
        self.total = sum(len(s.instructions) + 1 for s in order) + (1 if self.opts.get("labels") else 0)
        for stage in order:
            self._build_stage(stage, labels=self.opts.get("labels") if stage is target else None)
        image_id = target.image_id
        check_cancelled(self.cancel)  # nothing is named for a client that left
        unused = sorted(set(self.opts.get("buildargs", {})) - self.used_args - PREDEFINED_ARGS)
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        image = self.store.resolve(image_id)
        tags = self.opts.get("tags") or []
        for tag in tags or [None]:
            self.store.add(tag, image.manifest_digest, intermediate=False)
        self.progress({"aux": {"ID": image_id}})
        self.say(f"Successfully built {image_id.split(':', 1)[1][:12]}\n")
        for tag in tags:
            from runner.images.reference import Reference
            self.say(f"Successfully tagged {Reference.parse(tag).familiar}\n")
        return image_id

    def _stages(self, instructions: list[df.Instruction]) -> None:
        for inst in instructions:
            if inst.keyword == "FROM":
                flags, rest = df.split_flags(inst, ("platform",))
                parts = rest.split()
                if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].lower() != "as"):
                    raise _error(inst, "expected FROM IMAGE [AS NAME]")
                meta = {k: v for k, v in self.meta_args.items() if v is not None}
                base = _expand(inst, parts[0], meta, self.escape)
                name = parts[2].lower() if len(parts) == 3 else None
                if name is not None and (name.isdigit() or any(s.name == name for s in self.stages)):
                    raise _error(inst, f"invalid or duplicate stage name {parts[2]!r}")
                self.stages.append(Stage(len(self.stages), inst, base, name))
            elif not self.stages:
                if inst.keyword != "ARG":
                    raise _error(inst, "only ARG may come before the first FROM")
                for key, default in self._arg_pairs(inst, {}):
                    given = self.opts.get("buildargs", {})
                    if key in given:
                        self.used_args.add(key)
                    self.meta_args[key] = given[key] if given.get(key) is not None else default
            else:
                self.stages[-1].instructions.append(inst)

    def _target(self) -> Stage:
        name = self.opts.get("target")
        if not name:
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == name.lower():
                return stage
        raise BuildError(f"target stage {name!r} could not be found",
                         hint="name a stage of the Dockerfile (FROM IMAGE AS NAME)")

    def stage_ref(self, ref: str, before: int) -> Stage | None:
        """The earlier stage ``ref`` (a name or an index) names, or None (then it is an image)."""
        for stage in self.stages[:before]:
            if stage.name == ref.lower() or str(stage.index) == ref:
                return stage
        return None

    def _needed(self, target: Stage) -> list[Stage]:
        """The stages ``target`` depends on (FROM a stage, COPY --from), in Dockerfile order: only those run."""
        needed: set[int] = set()
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            dep = self.stage_ref(stage.base, stage.index)
            if dep is not None:
                todo.append(dep)
            for inst in stage.instructions:
                if inst.keyword in ("COPY", "ADD"):
                    ref = dict(df.split_flags(inst, _COPY_FLAGS)[0]).get("from")
                    dep = self.stage_ref(ref, stage.index) if ref else None
                    if ref and dep is None and ref.isdigit():
                        raise _error(inst, f"invalid --from={ref}: no earlier stage has that index")
                    if dep is not None:
                        todo.append(dep)
        return [s for s in self.stages if s.index in needed]

    # -- one stage
    def _build_stage(self, stage: Stage, labels: dict | None) -> None:
        run_step = self.run_step
        state = self._from(stage)
        self._run_triggers(stage, state)
        for inst in stage.instructions:
            check_cancelled(self.cancel)
            self.step += 1
            self.say(f"Step {self.step}/{self.total} : {inst.keyword} {inst.rest}\n")
            run_step(self, stage, state, inst)
        if labels:
            self.step += 1
            text = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v or '')}" for k, v in sorted(labels.items()))
            self.say(f"Step {self.step}/{self.total} : {text}\n")
            run_step(self, stage, state, df.Instruction("LABEL", text[6:]))
        stage.image_id = state.image_id or self.commit_empty(state)

    def _from(self, stage: Stage) -> State:
        self.step += 1
        text = f"FROM {stage.inst.rest}"
        self.say(f"Step {self.step}/{self.total} : {text}\n")
        self.step_event("start", text)
        started = time.monotonic()
        dep = self.stage_ref(stage.base, stage.index)
        if dep is not None:
            image_id = dep.image_id
            doc = copy.deepcopy(self.store.resolve(image_id).config)
        elif stage.base == "scratch":
            image_id, doc = None, {**host_platform(), "config": {}, "rootfs": {"type": "layers", "diff_ids": []},
                                   "history": []}
        else:
            try:
                image = self.base_image(stage.base)
            except RunnerError as exc:
                raise BuildError(f"line {stage.inst.line}: FROM {stage.base}: {exc.message}", hint=exc.hint) from exc
            image_id, doc = image.id, copy.deepcopy(image.config)
        state = State(image_id, doc)
        state.doc.pop("container_config", None)
        for key, value in self.meta_args.items():  # global ARGs are visible in a stage only once re-declared
            state.args.pop(key, None)
        if image_id:
            self.say(f" ---> {image_id.split(':', 1)[1][:12]}\n")
        self.step_event("done", text, seconds=round(time.monotonic() - started, 3))
        return state

    def _run_triggers(self, stage: Stage, state: State) -> None:
        """The base image's ONBUILD triggers run first, as the classic builder does: each is parsed as a
        Dockerfile line and dispatched in this build (its context, its ARGs), and the triggers leave the config
        so the child image does not run them again downstream. Errors name the FROM line."""
        triggers = list(state.config.get("OnBuild") or [])
        if not triggers:
            return
        self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}...\n")
        state.config["OnBuild"] = []
        for text in triggers:
            try:
                instructions = df.parse(text, heredocs=True)
            except UsageError as exc:
                raise _error(stage.inst, f"ONBUILD trigger {text!r}: {exc.message}") from exc
            for inst in instructions:
                if inst.keyword == "ONBUILD":
                    raise _error(stage.inst, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
                if inst.keyword in ("MAINTAINER", "FROM"):
                    raise _error(stage.inst, f"{inst.keyword} isn't allowed as an ONBUILD trigger")
                inst.line = stage.inst.line
                self.run_step(self, stage, state, inst)

    def _arg_pairs(self, inst: df.Instruction, env: dict) -> list[tuple[str, str | None]]:
        pairs = []
        for word in df.words(inst.rest, env, self.escape):
            key, sep, value = word.partition("=")
            if not key or not (key[0].isalpha() or key[0] == "_"):
                raise _error(inst, f"invalid ARG name {key!r}")
            pairs.append((key, value if sep else None))
        return pairs

    # -- images and the cache
    def cache_key(self, parent: str | None, created_by: str, content: str = "") -> str:
        return hashlib.sha256(f"{parent or 'scratch'}\n{created_by}\n{content}".encode()).hexdigest()

    def cached(self, key: str) -> str | None:
        """The image ID the cache holds for ``key`` if that image still exists, else None."""
        if self.opts.get("nocache"):
            return None
        try:
            image_id, _ = read_cache_entry(os.path.join(self.cache_dir, key))
            self.store.resolve(image_id)
        except (OSError, NotFound, UsageError):
            return None
        return image_id

    def take_cached(self, state: State, key: str) -> bool:
        """Take the cached image for ``key`` into ``state`` (" ---> Using cache"); False on a miss."""
        image_id = self.cached(key)
        if image_id is None:
            return False
        state.image_id = image_id
        state.doc = copy.deepcopy(self.store.resolve(image_id).config)
        self.say(" ---> Using cache\n")
        with contextlib.suppress(OSError, ValueError):  # the count is for system df: never fail a build on it
            _, uses = read_cache_entry(os.path.join(self.cache_dir, key))
            self.remember(key, image_id, uses + 1, durable=False)
        return True

    def remember(self, key: str, image_id: str, uses: int = 1, durable: bool = True) -> None:
        from runner.procs import write_atomic
        os.makedirs(self.cache_dir, exist_ok=True)
        write_atomic(os.path.join(self.cache_dir, key), f"{image_id}\n{uses}\n".encode(), durable=durable)

    def commit(self, state: State, created_by: str, layer: tuple[str, int] | None, key: str) -> str:
        """A new image: ``state``'s config with one more history entry (and ``layer`` (diff_id, size) on top)."""
        doc = copy.deepcopy(state.doc)
        stamp = rfc3339(time.time())
        doc["created"] = stamp
        entry = {"created": stamp, "created_by": created_by}
        if layer is None:
            entry["empty_layer"] = True
        doc.setdefault("history", []).append(entry)
        rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        parent = self.store.resolve(state.image_id) if state.image_id else None
        layers = [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in parent.layers] \
            if parent else []
        if layer is not None:
            rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [layer[0]]
            layers.append({"mediaType": MEDIA_OCI_LAYER, "digest": layer[0], "size": layer[1]})
        config_bytes = canonical_json(doc)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                    "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": self.store.put_bytes(config_bytes),
                               "size": len(config_bytes)}, "layers": layers}
        image = self.store.add(None, self.store.put_bytes(canonical_json(manifest)), intermediate=True)
        self.remember(key, image.id)
        state.image_id, state.doc = image.id, copy.deepcopy(image.config)
        return image.id

    def commit_empty(self, state: State) -> str:
        """A stage that is only ``FROM scratch``: an image without layers."""
        return self.commit(state, NOP + "FROM scratch", None, self.cache_key(None, "FROM scratch"))

    def view(self, image_id: str | None) -> MergedView:
        """The merged file tree of an image (empty for scratch)."""
        if not image_id:
            return MergedView([])
        return MergedView(self.store.layer_dirs(self.store.resolve(image_id)))

    def new_layer(self) -> LayerWriter:
        return LayerWriter(self.store)

    def lookup_ids(self, state: State, user: str) -> tuple[int, int]:
        return lookup_ids(self.view(state.image_id), user)


_COPY_FLAGS = ("from", "chown", "chmod", "link", "keep-git-dir", "checksum", "parents", "exclude")


def _parse(text: str) -> tuple[list[df.Instruction], list[str]]:
    try:
        return df.parse_dockerfile(text)
    except BuildError:
        raise
    except UsageError as exc:
        raise BuildError(f"Dockerfile parse error: {exc.message}", hint=exc.hint) from exc


def _error(inst: df.Instruction, what: str, hint: str | None = None) -> BuildError:
    err = inst.error(what, hint)
    return BuildError(err.message, hint=err.hint)


def _expand(inst: df.Instruction, text: str, env: dict, escape: str) -> str:
    try:
        return df.expand(text, env, escape)
    except UsageError as exc:
        raise _error(inst, exc.message) from exc


def _inside(root: str, rel: str) -> str:
    """``rel`` resolved inside the directory ``root`` (symlinks followed); refuses anything that leaves it."""
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, rel.lstrip("/")))
    if path != real_root and not path.startswith(real_root + os.sep):
        raise BuildError(f"forbidden path outside the build context: {rel}",
                         hint="COPY and ADD read only files inside the context directory")
    return path


def default_config(doc: dict) -> dict:
    """The config section a RUN sees: Docker's default PATH when the image sets none."""
    config = doc.get("config") or {}
    env = list(config.get("Env") or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    return {**config, "Env": env}


def glob_paths(root: str, pattern: str) -> list[str]:
    """Relative paths under ``root`` matching ``pattern`` (``*``, ``?``, ``[...]`` per path component; dot
    files included, as Go's filepath.Match); no wildcard: the path itself, whether or not it exists."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not any(ch in pattern for ch in "*?["):
        return ["/".join(parts)]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            full = os.path.join(root, base) if base else root
            if not any(ch in part for ch in "*?["):
                nxt.append(f"{base}/{part}" if base else part)
                continue
            with contextlib.suppress(OSError):
                for name in sorted(os.listdir(full)):
                    if fnmatch.fnmatchcase(name, part):
                        nxt.append(f"{base}/{name}" if base else name)
        found = nxt
    return [f for f in found if os.path.lexists(os.path.join(root, f))]


def content_hash(paths: list[tuple[str, str]]) -> str:
    """Docker's COPY cache input: the sources' names, types, modes, link targets and contents (not their
    times), for (name in the layer, real path) pairs; directories are walked."""
    h = hashlib.sha256()
    for name, path in paths:
        for rel, full, st in _walk_tree(path):
            h.update(f"{name}/{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def _walk_tree(path: str):
    """("", path, lstat) then every entry below a directory, sorted, parents first."""
    st = os.lstat(path)
    yield "", path, st
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, path)
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                yield (name if rel_dir == "." else f"{rel_dir}/{name}"), full, os.lstat(full)


def write_run_layer(builder: Builder, upper: str) -> tuple[str, int]:
    writer = builder.new_layer()
    try:
        write_upper(writer, upper, MOUNTED_FILES)
        return writer.commit()
    except BaseException:
        writer.discard()
        raise
