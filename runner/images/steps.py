"""What each Dockerfile instruction does in a build step (runner.images.build runs them in order).

Every step follows the same pattern, Docker's classic builder's: the step's history text (``created_by``,
with variables already substituted, so a changed ARG or ENV value changes it) and, for COPY/ADD, the content
hash of the sources make the cache key together with the parent image ID; a hit takes the cached image
(" ---> Using cache"), a miss does the work and commits a new image. What a step changes besides the image
(ARGs in scope, whether CMD was set in this stage) is applied on both paths. Standard library only.
"""

from __future__ import annotations

import json
import posixpath
import re
import time

from runner.errors import BuildError, UsageError
from runner.images import dockerfile as df
from runner.images.builder import (NOP, PREDEFINED_ARGS, Builder, Stage, State, _error, _expand, default_config,
                                   write_run_layer)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10 ** 6, "s": 10 ** 9, "m": 60 * 10 ** 9, "h": 3600 * 10 ** 9}


def run_step(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> None:
    text = f"{inst.keyword} {inst.rest}"
    b.step_event("start", text)
    started = time.monotonic()
    handler = _HANDLERS.get(inst.keyword)
    if handler is None:
        raise _error(inst, f"{inst.keyword} is not allowed here")
    try:
        cached = handler(b, stage, state, inst)
    except UsageError as exc:  # a substitution or argument error: the build's error, naming the line
        if isinstance(exc, BuildError):
            raise
        raise _error(inst, exc.message, exc.hint) from exc
    b.say(f" ---> {state.image_id.split(':', 1)[1][:12]}\n")
    b.step_event("cached" if cached else "done", text, seconds=round(time.monotonic() - started, 3))


def metadata(b: Builder, state: State, text: str, apply) -> bool:
    """A step that changes only the config: ``apply(config)`` on a miss, then commit without a layer."""
    created_by = NOP + " " + text
    key = b.cache_key(state.image_id, created_by)
    if b.take_cached(state, key):
        return True
    apply(state.config)
    b.commit(state, created_by, None, key)
    return False


# ------------------------------------------------------------------ metadata instructions

def _env(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    pairs = _pairs(b, state, inst)

    def apply(config: dict) -> None:
        env = {e.split("=", 1)[0]: e for e in config.get("Env") or []}
        env.update({k: f"{k}={v}" for k, v in pairs})
        config["Env"] = list(env.values())
    return metadata(b, state, "ENV " + " ".join(f"{k}={v}" for k, v in pairs), apply)


def _label(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    pairs = _pairs(b, state, inst)

    def apply(config: dict) -> None:
        config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs)}
    return metadata(b, state, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs), apply)


def _pairs(b: Builder, state: State, inst: df.Instruction) -> list[tuple[str, str]]:
    """ENV/LABEL pairs, substituted: ``K=V ...`` or the legacy ``K value with spaces``."""
    env = state.words_env()
    words = df.words(inst.rest, env, b.escape)
    if not words:
        raise _error(inst, "needs KEY=VALUE")
    if "=" not in words[0]:
        key, _, value = inst.rest.partition(" ")
        if not value.strip():
            raise _error(inst, "expected KEY=VALUE or KEY VALUE")
        return [(key, _expand(inst, value.strip(), env, b.escape))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise _error(inst, f"expected KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs


def _arg(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    given = b.opts.get("buildargs", {})
    shown = []
    for key, default in b._arg_pairs(inst, state.words_env()):
        if key in given and given[key] is not None:
            value = given[key]
            b.used_args.add(key)
        elif default is not None:
            value = default
        elif key in b.meta_args and b.meta_args[key] is not None:
            value = b.meta_args[key]  # a global ARG re-declared in the stage: its value comes along
        else:
            value = None  # declared without a value: "$KEY" stays empty, RUN gets no variable
            if key in given:
                b.used_args.add(key)
        if value is not None:
            state.args[key] = value
        else:
            state.args.pop(key, None)
        shown.append(key if default is None else f"{key}={default}")
    effective = json.dumps({k: state.args.get(k) for k in sorted(state.args)})
    created_by = NOP + " ARG " + " ".join(shown)
    key = b.cache_key(state.image_id, created_by, effective)
    if b.take_cached(state, key):
        return True
    b.commit(state, created_by, None, key)
    return False


def _simple(field: str, expand: bool = True):
    def handler(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
        value = _expand(inst, inst.rest, state.words_env(), b.escape) if expand else inst.rest
        return metadata(b, state, f"{inst.keyword} {value}", lambda config: config.__setitem__(field, value))
    return handler


def _workdir(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    value = _expand(inst, inst.rest, state.words_env(), b.escape)
    path = posixpath.normpath(posixpath.join(state.config.get("WorkingDir") or "/", value))
    created_by = NOP + " WORKDIR " + path
    key = b.cache_key(state.image_id, created_by)
    if b.take_cached(state, key):
        return True
    view = b.view(state.image_id)
    parts = view.resolve(path)
    layer = None
    if view.lstat(parts) is None:  # Docker creates a missing WORKDIR, as root, in a layer of its own
        writer = b.new_layer()
        try:
            from runner.images.copysteps import add_parents
            add_parents(writer, view, parts + ("x",), 0, 0)
            layer = writer.commit()
        except BaseException:
            writer.discard()
            raise
    state.config["WorkingDir"] = path
    b.commit(state, created_by, layer, key)
    return False


def _command(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    args, exec_form = df.command_form(inst)
    value = args if exec_form else list(state.config.get("Shell") or ["/bin/sh", "-c"]) + [args[0]]
    field = "Cmd" if inst.keyword == "CMD" else "Entrypoint"
    reset_cmd = inst.keyword == "ENTRYPOINT" and not state.cmd_set
    state.cmd_set = state.cmd_set or inst.keyword == "CMD"

    def apply(config: dict) -> None:
        config[field] = value
        if reset_cmd:
            config.pop("Cmd", None)  # a new entrypoint resets a CMD inherited from the base image
    return metadata(b, state, f"{inst.keyword} {json.dumps(value)}", apply)


def _shell(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    args, exec_form = df.command_form(inst)
    if not exec_form or not args:
        raise _error(inst, "SHELL requires the arguments to be in JSON form", hint='write SHELL ["/bin/sh", "-c"]')
    return metadata(b, state, f"SHELL {json.dumps(args)}", lambda config: config.__setitem__("Shell", args))


def _expose(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    ports = []
    for word in df.words(inst.rest, state.words_env(), b.escape):
        port, _, proto = word.partition("/")
        if not port.replace("-", "").isdigit() or proto not in ("", "tcp", "udp", "sctp"):
            raise _error(inst, f"invalid port {word!r}", hint="write EXPOSE 80 or EXPOSE 53/udp")
        ports.append(f"{port}/{proto or 'tcp'}")

    def apply(config: dict) -> None:
        config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{p: {} for p in ports}}
    return metadata(b, state, "EXPOSE " + " ".join(ports), apply)


def _volume(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    args, exec_form = df.command_form(inst)
    paths = args if exec_form else df.words(inst.rest, state.words_env(), b.escape)
    if not paths or any(not p for p in paths):
        raise _error(inst, "VOLUME needs a path")

    def apply(config: dict) -> None:
        config["Volumes"] = {**(config.get("Volumes") or {}), **{p: {} for p in paths}}
    return metadata(b, state, f"VOLUME {json.dumps(paths)}", apply)


def _healthcheck(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    flags, rest = df.split_flags(inst, ("interval", "timeout", "start-period", "start-interval", "retries"))
    keyword, _, command = rest.partition(" ")
    if keyword.upper() == "NONE":
        check = {"Test": ["NONE"]}
    elif keyword.upper() == "CMD" and command.strip():
        args, exec_form = df.command_form(df.Instruction("CMD", command.strip(), inst.line))
        check = {"Test": ["CMD"] + args if exec_form else ["CMD-SHELL", args[0]]}
    else:
        raise _error(inst, "expected HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command")
    for flag, field in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                        ("start-interval", "StartInterval")):
        if flag in flags:
            check[field] = _duration(inst, flags[flag])
    if "retries" in flags:
        if not flags["retries"].isdigit():
            raise _error(inst, f"invalid --retries {flags['retries']!r}")
        check["Retries"] = int(flags["retries"])
    return metadata(b, state, f"HEALTHCHECK {json.dumps(check, sort_keys=True)}",
                    lambda config: config.__setitem__("Healthcheck", check))


def _duration(inst: df.Instruction, text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in nanoseconds."""
    total, pos = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(float(match.group(1)) * _NS[match.group(2)])
        pos = match.end()
    if pos != len(text) or not text:
        raise _error(inst, f"invalid duration {text!r}", hint="write it as 30s, 1m30s or 500ms")
    return total


def _onbuild(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    trigger = df.parse_line(inst.rest, inst.line)
    if trigger.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
        raise _error(inst, f"{trigger.keyword} isn't allowed as an ONBUILD trigger")
    if trigger.keyword not in df.BUILD_INSTRUCTIONS:
        raise _error(inst, f"unknown instruction: {trigger.keyword}")
    text = f"{trigger.keyword} {trigger.rest}"

    def apply(config: dict) -> None:
        config["OnBuild"] = list(config.get("OnBuild") or []) + [text]
    return metadata(b, state, "ONBUILD " + text, apply)


def _maintainer(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    created_by = NOP + " MAINTAINER " + inst.rest
    key = b.cache_key(state.image_id, created_by)
    if b.take_cached(state, key):
        return True
    state.doc["author"] = inst.rest
    b.commit(state, created_by, None, key)
    return False


# ------------------------------------------------------------------ RUN

def _run(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    argv = run_argv(state, inst)
    args = {k: v for k, v in sorted(state.args.items())}
    recorded = {k: v for k, v in args.items() if k not in PREDEFINED_ARGS}
    created_by = " ".join(argv)
    if recorded:
        created_by = f"|{len(recorded)} " + " ".join(f"{k}={v}" for k, v in recorded.items()) + " " + created_by
    key = b.cache_key(state.image_id, created_by)
    if b.take_cached(state, key):
        return True
    config = default_config(state.doc)
    image_env = dict(e.split("=", 1) if "=" in e else (e, "") for e in config["Env"])
    env = config["Env"] + [f"{k}={v}" for k, v in args.items() if k not in image_env]
    tail: list[str] = []

    def output(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        b.progress({"stream": text, "output": True})  # "output": a RUN's own, for --progress plain
        tail.extend(text.splitlines())
        del tail[:-10]

    code, upper, done = b.run_container(state.image_id, argv, env, config.get("User") or None,
                                        config.get("WorkingDir") or None, output, b.say)
    try:
        if code != 0:
            last = "\n".join("    " + line for line in tail[-5:])
            raise BuildError(f"step {b.step}/{b.total} ({inst.keyword} {inst.rest[:60]}): The command "
                             f"'{' '.join(argv)[:200]}' returned a non-zero code: {code}",
                             hint=("its last output lines:\n" + last) if last else "it printed nothing")
        layer = write_run_layer(b, upper)
    finally:
        done()
    b.commit(state, created_by, layer, key)
    return False


def run_argv(state: State, inst: df.Instruction) -> list[str]:
    """What a RUN executes: the exec form as is; the shell form under SHELL (``/bin/sh -c``); a heredoc alone
    (``RUN <<EOF``) is the script itself, a heredoc after a command is left for the shell to feed it."""
    args, exec_form = df.command_form(inst)
    if exec_form:
        if not args:
            raise _error(inst, "RUN needs a command")
        return args
    shell = list(state.config.get("Shell") or ["/bin/sh", "-c"])
    script = args[0]
    if inst.heredocs:
        first = inst.heredocs[0]
        if df._HEREDOC.fullmatch(script.strip()) and len(inst.heredocs) == 1:
            script = first[1]
        else:
            script = script + "\n" + "".join(f"{body}{name}\n" for name, body, _ in inst.heredocs)
    return shell + [script]


def _copy(b: Builder, stage: Stage, state: State, inst: df.Instruction) -> bool:
    from runner.images.copysteps import copy_step
    return copy_step(b, stage, state, inst)


_HANDLERS = {"ENV": _env, "LABEL": _label, "ARG": _arg, "USER": _simple("User"), "WORKDIR": _workdir,
             "STOPSIGNAL": _simple("StopSignal"), "CMD": _command, "ENTRYPOINT": _command, "SHELL": _shell,
             "EXPOSE": _expose, "VOLUME": _volume, "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
             "MAINTAINER": _maintainer, "RUN": _run, "COPY": _copy, "ADD": _copy}
