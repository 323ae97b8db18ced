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
and VOLUME add entries. For ``runner build`` (runner.images.build), :func:`parse_dockerfile` adds what only whole Dockerfiles
have: every keyword checked against :data:`BUILD_INSTRUCTIONS` (an unknown one is an error naming its line),
``# syntax=`` noted and ignored, heredocs (``RUN <<EOF`` ... ``EOF``, ``COPY <<EOF /file``) collected into the
instruction, ``--flag=value`` options (:func:`split_flags`), and ``$VAR`` / ``${VAR:-default}`` substitution
with Docker's quoting rules (:func:`expand`, :func:`words`: single quotes are literal, double quotes expand,
the escape character escapes).
Standard library only (runs in the guest).
"""

from __future__ import annotations

import json
import re
import shlex

from runner.errors import UsageError

# What `docker import --change` / `docker commit --change` accept (ONBUILD aside: runner builds do not chain).
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
# What a Dockerfile may say (Docker's classic builder's list; MAINTAINER is deprecated but still accepted).
BUILD_INSTRUCTIONS = frozenset(CHANGE_INSTRUCTIONS + (
    "FROM", "RUN", "COPY", "ADD", "ARG", "SHELL", "HEALTHCHECK", "ONBUILD", "MAINTAINER"))
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")


class Instruction:
    """One instruction: ``keyword`` upper-cased, ``rest`` the argument text as written (continuations
    joined), ``line`` where it starts (1-based) for error messages."""

    __slots__ = ("keyword", "rest", "line", "heredocs")

    def __init__(self, keyword: str, rest: str, line: int | None = None, heredocs: list | None = None):
        # line None: a --change value (no line to name); heredocs: [(name, content, expand)] in order
        self.keyword, self.rest, self.line, self.heredocs = keyword, rest, line, heredocs or []

    def __repr__(self) -> str:
        return f"Instruction({self.keyword!r}, {self.rest!r}, line={self.line})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Instruction) and (self.keyword, self.rest) == (other.keyword, other.rest)

    def error(self, what: str, hint: str | None = None) -> UsageError:
        where = f"line {self.line}: " if self.line else ""
        return UsageError(f"{where}{self.keyword} {self.rest}: {what}".replace(" : ", ": "), hint=hint)


def parse_line(text: str, line: int | None = None) -> Instruction:
    """One instruction, e.g. a ``--change`` value: ``KEYWORD arguments``."""
    keyword, rest = (re.split(r"\s+", text.strip(), maxsplit=1) + [""])[:2]
    if not keyword or not keyword.isalpha():
        raise UsageError(f"invalid instruction {text.strip()!r}", hint="write it as in a Dockerfile: KEYWORD args")
    inst = Instruction(keyword.upper(), rest.strip(), line)
    if not inst.rest:
        raise inst.error("needs an argument")
    return inst


def parse(text: str, heredocs: bool = False) -> list[Instruction]:
    """All instructions of a Dockerfile's ``text``; ``heredocs``: collect ``<<EOF`` bodies (build)."""
    lines = text.splitlines()
    escape, start = _directives(lines)
    out: list[Instruction] = []
    pending, first = None, 0
    number = start
    while number < len(lines):
        raw = lines[number]
        number += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continuation (Docker drops both)
        body = raw.rstrip() if pending is not None else stripped
        if pending is None:
            first, pending = number, ""
        if body.endswith(escape):
            pending += body[:-1]  # the next line continues right here, its indentation included
            continue
        inst = parse_line(pending + body, first)
        pending = None
        if heredocs and inst.keyword in _HEREDOC_KEYWORDS:
            number = _read_heredocs(inst, lines, number)
        out.append(inst)
    if pending:
        out.append(parse_line(pending, first))
    return out


def _directives(lines: list[str]) -> tuple[str, int]:
    """(escape character, index of the first line after the parser directives)."""
    escape = "\\"
    for start, raw in enumerate(lines):  # parser directives: only before any comment, blank line or instruction
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            return escape, start
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise UsageError(f"invalid escape directive {match.group(2)!r}", hint="use \\ or `")
            escape = match.group(2)
    return escape, len(lines)


def _read_heredocs(inst: Instruction, lines: list[str], number: int) -> int:
    """Collect the bodies of the heredocs ``inst`` opens (``<<EOF``, ``<<-EOF`` strips leading tabs, a quoted
    name turns substitution off) from ``lines[number:]``; returns the index after the last terminator."""
    for match in _HEREDOC.finditer(inst.rest):
        strip_tabs, quoted, name = match.group(1) == "-", bool(match.group(2)), match.group(3)
        body = []
        while True:
            if number >= len(lines):
                raise inst.error(f"unterminated heredoc {name}", hint=f"end it with a line {name}")
            line = lines[number]
            number += 1
            if (line.lstrip("\t") if strip_tabs else line) == name:
                break
            body.append(line.lstrip("\t") if strip_tabs else line)
        inst.heredocs.append((name, "".join(b + "\n" for b in body), not quoted))
    return number


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[str]]:
    """A whole Dockerfile for a build: (instructions, notes). Unknown keywords are errors naming their line;
    ``# syntax=`` (a BuildKit frontend image) cannot be honoured offline and is noted, then ignored."""
    lines = text.splitlines()
    notes = []
    for raw in lines[:_directives(lines)[1]]:
        match = _DIRECTIVE.match(raw.strip())
        if match and match.group(1).lower() == "syntax":
            notes.append(f"ignoring the syntax directive {match.group(2)!r}: runner builds with its own parser")
    instructions = parse(text, heredocs=True)
    for inst in instructions:
        if inst.keyword not in BUILD_INSTRUCTIONS:
            raise inst.error(f"unknown instruction: {inst.keyword}",
                             hint="Dockerfile instructions are: " + ", ".join(sorted(BUILD_INSTRUCTIONS)))
    if not instructions:
        raise UsageError("the Dockerfile has no instructions", hint="start it with FROM IMAGE")
    if instructions[0].keyword not in ("FROM", "ARG"):
        raise instructions[0].error("a Dockerfile must begin with FROM (ARG may come before it)")
    return instructions, notes


def split_flags(inst: Instruction, allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """(``--name=value`` options at the start of the arguments, the rest); an option not in ``allowed`` is
    an error naming the line, as Docker's."""
    flags: dict[str, str] = {}
    rest = inst.rest
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        name, sep, value = word[2:].partition("=")
        if name not in allowed:
            raise inst.error(f"unknown flag: --{name}", hint="allowed here: " + ", ".join("--" + a for a in allowed)
                             if allowed else "this instruction takes no flags")
        flags[name] = value if sep else "true"
        rest = after.lstrip()
    return flags, rest


# ------------------------------------------------------------------ substitution (Docker's shell lexer rules)

_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z0-9_]*")


def expand(text: str, env: dict[str, str], escape: str = "\\") -> str:
    """``text`` as one word: variables substituted, quotes removed (WORKDIR, USER, a COPY source)."""
    return _lex(text, env, escape, split=False)[0] if text else ""


def words(text: str, env: dict[str, str], escape: str = "\\") -> list[str]:
    """``text`` split into words at unquoted blanks, each substituted and unquoted (ENV/LABEL/ARG pairs)."""
    return _lex(text, env, escape, split=True)


def _lex(text: str, env: dict[str, str], escape: str, split: bool) -> list[str]:
    out: list[str] = []
    word: list[str] = []
    started = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if split and ch in " \t\n" :
            if started:
                out.append("".join(word))
                word, started = [], False
            i += 1
            continue
        started = True
        if ch == escape and i + 1 < n:
            word.append(text[i + 1])
            i += 2
        elif ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise UsageError(f"unmatched single quote in {text!r}")
            word.append(text[i + 1:end])
            i = end + 1
        elif ch == '"':
            i = _double_quoted(text, i + 1, env, escape, word)
        elif ch == "$":
            i = _variable(text, i + 1, env, escape, word)
        else:
            word.append(ch)
            i += 1
    if started or not split:
        out.append("".join(word))
    return out


def _double_quoted(text: str, i: int, env: dict[str, str], escape: str, word: list[str]) -> int:
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return i + 1
        if ch == escape and i + 1 < len(text) and text[i + 1] in ('"', "$", escape):
            word.append(text[i + 1])
            i += 2
        elif ch == "$":
            i = _variable(text, i + 1, env, escape, word)
        else:
            word.append(ch)
            i += 1
    raise UsageError(f"unmatched double quote in {text!r}")


def _variable(text: str, i: int, env: dict[str, str], escape: str, word: list[str]) -> int:
    """After a ``$``: ``NAME``, ``{NAME}``, ``{NAME:-word}``, ``{NAME:+word}``, ``{NAME-word}``,
    ``{NAME+word}``, ``{NAME:?message}``; anything else leaves the ``$`` as it is."""
    if i < len(text) and text[i] == "{":
        end = text.find("}", i)
        if end < 0:
            raise UsageError(f"missing '}}' in {text!r}")
        inner = text[i + 1:end]
        match = _NAME.match(inner)
        name, op = match.group(0), inner[match.end():]
        if not name:
            raise UsageError(f"bad substitution ${{{inner}}}")
        value = env.get(name)
        for prefix in (":-", ":+", ":?", "-", "+", "?"):
            if op.startswith(prefix):
                arg = expand(op[len(prefix):], env, escape)
                unset = value is None or (prefix.startswith(":") and value == "")
                if prefix.endswith("-"):
                    value = arg if unset else value
                elif prefix.endswith("+"):
                    value = "" if unset else arg
                elif unset:
                    raise UsageError(f"{name}: {arg or 'is not set'}")
                break
        else:
            if op:
                raise UsageError(f"unsupported modifier ({op[:1]}) in substitution ${{{inner}}}")
        word.append(value or "")
        return end + 1
    match = _NAME.match(text, i) if i < len(text) and _NAME_START.match(text[i]) else None
    if match is None:
        word.append("$")
        return i
    word.append(env.get(match.group(0), ""))
    return match.end()


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
