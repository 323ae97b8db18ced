"""The one Dockerfile instruction parser: ``runner import --change`` uses it now, ``runner build`` will.

Two layers, as in Docker's own parser (moby/buildkit ``frontend/dockerfile/parser`` and ``instructions``):

* **Reading** (:func:`parse`, :func:`parse_line`): a Dockerfile's text becomes :class:`Instruction` s. Parser
  directives (``# escape=``` `` before anything else), comment lines, blank lines and line continuations (the
  escape character, ``\\`` by default, at the end of a line; comment lines inside a continuation are dropped)
  are handled here; keywords are case-insensitive.
* **Arguments**: exec form vs shell form (:func:`command_form`: a JSON array of strings is the exec form;
  anything else, even text that starts with ``[`` but is not valid JSON, is shell form and later runs under
  ``/bin/sh -c``), and ``KEY=VALUE`` lists (:func:`key_values`: quotes and backslash escapes as in a shell
  word, or the legacy ``ENV KEY some value`` form with the rest of the line as the value).

:func:`apply_changes` gives the instructions Docker accepts for ``import``/``commit --change`` their meaning
on an image config: ENV and LABEL *merge* into the image's (an ``ENV`` replaces only the variables it
names), ``ENTRYPOINT`` resets a ``CMD`` inherited from before the changes (not one the changes set), EXPOSE
and VOLUME add entries. Not done (yet): ``$VAR`` substitution (build's job: it needs the build's ENV/ARG).
Standard library only (runs in the guest).
"""

from __future__ import annotations

import json
import re
import shlex

from runner.errors import UsageError

# What `docker import --change` / `docker commit --change` accept (ONBUILD aside: runner builds do not chain).
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


class Instruction:
    """One instruction: ``keyword`` upper-cased, ``rest`` the argument text as written (continuations
    joined), ``line`` where it starts (1-based) for error messages."""

    __slots__ = ("keyword", "rest", "line")

    def __init__(self, keyword: str, rest: str, line: int = 1):
        self.keyword, self.rest, self.line = keyword, rest, line

    def __repr__(self) -> str:
        return f"Instruction({self.keyword!r}, {self.rest!r}, line={self.line})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Instruction) and (self.keyword, self.rest) == (other.keyword, other.rest)

    def error(self, what: str, hint: str | None = None) -> UsageError:
        where = f"line {self.line}: " if self.line > 1 else ""
        return UsageError(f"{where}{self.keyword} {self.rest}: {what}".replace(" : ", ": "), hint=hint)


def parse_line(text: str, line: int = 1) -> Instruction:
    """One instruction, e.g. a ``--change`` value: ``KEYWORD arguments``."""
    keyword, rest = (re.split(r"\s+", text.strip(), maxsplit=1) + [""])[:2]
    if not keyword or not keyword.isalpha():
        raise UsageError(f"invalid instruction {text.strip()!r}", hint="write it as in a Dockerfile: KEYWORD args")
    inst = Instruction(keyword.upper(), rest.strip(), line)
    if not inst.rest:
        raise inst.error("needs an argument")
    return inst


def parse(text: str) -> list[Instruction]:
    """All instructions of a Dockerfile's ``text``."""
    lines = text.splitlines()
    escape = "\\"
    start = 0
    for start, raw in enumerate(lines):  # parser directives: only before any comment, blank line or instruction
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            break
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise UsageError(f"invalid escape directive {match.group(2)!r}", hint="use \\ or `")
            escape = match.group(2)
    else:
        start = len(lines)
    out: list[Instruction] = []
    pending, first = None, 0
    for number, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continuation (Docker drops both)
        body = raw.rstrip() if pending is not None else stripped
        if pending is None:
            first, pending = number, ""
        if body.endswith(escape):
            pending += body[:-1]  # the next line continues right here, its indentation included
            continue
        out.append(parse_line(pending + body, first))
        pending = None
    if pending:
        out.append(parse_line(pending, first))
    return out


def command_form(inst: Instruction) -> tuple[list[str], bool]:
    """(arguments, is_exec_form): a JSON array of strings, else the shell form's single text."""
    text = inst.rest
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value, True
    return [text], False


def command(inst: Instruction) -> list[str]:
    """CMD/ENTRYPOINT as an image config's list: the exec form as is, the shell form under ``/bin/sh -c``."""
    args, exec_form = command_form(inst)
    return args if exec_form else ["/bin/sh", "-c", args[0]]


def key_values(inst: Instruction) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``K=V K2="v 2"`` (shell-word quoting), or the legacy ``K some value``."""
    try:
        words = shlex.split(inst.rest)
    except ValueError as exc:
        raise inst.error(str(exc)) from exc
    if "=" not in words[0]:
        key, _, value = inst.rest.partition(" ")
        if not value.strip():
            raise inst.error("expected KEY=VALUE or KEY VALUE")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise inst.error(f"expected KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs


def apply_changes(config: dict, changes) -> dict:
    """Apply ``--change`` instructions (strings or Instructions) to an image's ``config`` section, in
    order, as Docker's import/commit do; returns ``config``. Raises UsageError for anything else."""
    cmd_set = False
    for change in changes:
        inst = change if isinstance(change, Instruction) else parse_line(change)
        _apply(config, inst, cmd_set)
        cmd_set = cmd_set or inst.keyword == "CMD"
    return config


def apply_change(config: dict, change: str) -> None:
    """One ``--change`` instruction on its own (an ENTRYPOINT resets the config's CMD)."""
    apply_changes(config, [change])


def check_changes(changes) -> list[Instruction]:
    """Parse and check ``--change`` values before anything is sent or read (the CLI's early, clear error)."""
    return [_check(parse_line(c)) for c in changes]


def _check(inst: Instruction) -> Instruction:
    _apply({}, inst, False)
    return inst


def _apply(config: dict, inst: Instruction, cmd_set: bool) -> None:
    keyword, rest = inst.keyword, inst.rest
    if keyword in ("CMD", "ENTRYPOINT"):
        config["Cmd" if keyword == "CMD" else "Entrypoint"] = command(inst)
        if keyword == "ENTRYPOINT" and not cmd_set:
            config.pop("Cmd", None)  # as in a Dockerfile: a new entrypoint resets the inherited CMD
    elif keyword == "ENV":
        env = {e.split("=", 1)[0]: e for e in config.get("Env") or []}
        env.update({k: f"{k}={v}" for k, v in key_values(inst)})
        config["Env"] = list(env.values())
    elif keyword == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **dict(key_values(inst))}
    elif keyword in ("WORKDIR", "USER", "STOPSIGNAL"):
        config[{"WORKDIR": "WorkingDir", "USER": "User", "STOPSIGNAL": "StopSignal"}[keyword]] = rest
    elif keyword == "EXPOSE":
        for port in rest.split():
            config.setdefault("ExposedPorts", {})[port if "/" in port else f"{port}/tcp"] = {}
    elif keyword == "VOLUME":
        args, exec_form = command_form(inst)
        for path in args if exec_form else rest.split():
            config.setdefault("Volumes", {})[path] = {}
    else:
        raise inst.error(f"{keyword} is not a valid change command", hint="use " + ", ".join(CHANGE_INSTRUCTIONS))
