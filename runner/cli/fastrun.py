"""The fast lane for `runner [global options] run ...`: parsed from runner.cli.runopts without Typer.

Only command lines made entirely of known options take this lane; anything else (help, a typo, another
command) returns None and goes through the full Typer CLI, which gives the same behaviour and its error
messages. The lane exists for speed alone: building the Typer app costs more than starting a container.
"""

from __future__ import annotations

from runner.cli.runopts import FLAG, MULTI, RUN_OPTIONS

_GLOBAL_VALUES = {"--backend": "backend_flag", "--machine": "machine"}
_GLOBAL_FLAGS = {"--vm", "--debug"}


def _parse_globals(args: list[str]) -> tuple[dict, int] | None:
    found: dict = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name, eq, value = args[i].partition("=")
        if name in _GLOBAL_FLAGS and not eq:
            found[name] = True
            i += 1
        elif name in _GLOBAL_VALUES:
            if not eq:
                if i + 1 >= len(args):
                    return None
                value, i = args[i + 1], i + 1
            found[_GLOBAL_VALUES[name]] = value
            i += 1
        else:
            return None
    return found, i


def parse_run(args: list[str]) -> dict | None:
    """Option values for `run` (the words after it), or None when Typer must handle the line."""
    by_flag = {flag: opt for opt in RUN_OPTIONS for flag in opt.flags}
    opts = {opt.dest: list(opt.default) if opt.kind == MULTI else opt.default for opt in RUN_OPTIONS}
    i = 0

    def take(opt, value: str) -> bool:
        try:
            converted = opt.type(value)
        except ValueError:
            return False  # let Typer report the bad value its own way
        if opt.kind == MULTI:
            opts[opt.dest].append(converted)
        else:
            opts[opt.dest] = converted
        return True

    def take_value(opt, inline: str | None, at: int) -> int | None:
        """Take the option's value, written inline or as the next word; the index of the last word used."""
        if inline is None:
            if at + 1 >= len(args):
                return None
            at += 1
            inline = args[at]
        return at if take(opt, inline) else None

    while i < len(args):
        word = args[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            opt = by_flag.get(name)
            if opt is None:
                return None
            if opt.kind == FLAG:
                if eq:
                    return None
                opts[opt.dest] = True
            else:
                i = take_value(opt, value if eq else None, i)
                if i is None:
                    return None
            i += 1
            continue
        # Short options, possibly bundled (-it, -dit) and the last one taking a value (-eK=V, -e K=V).
        j = 1
        while j < len(word):
            opt = by_flag.get("-" + word[j])
            if opt is None:
                return None
            if opt.kind == FLAG:
                opts[opt.dest] = True
                j += 1
                continue
            i = take_value(opt, word[j + 1:] or None, i)
            if i is None:
                return None
            break
        i += 1
    if i >= len(args):
        return None  # no image: Typer says so
    opts["image"], opts["command"] = args[i], args[i + 1:]
    return opts


def try_run(argv: list[str]) -> int | None:
    """Run `runner ... run ...` here if the line is plain enough; None means: use the Typer CLI."""
    parsed = _parse_globals(argv)
    if parsed is None:
        return None
    found, i = parsed
    if i >= len(argv) or argv[i] != "run":
        return None
    opts = parse_run(argv[i + 1:])
    if opts is None:
        return None
    from runner.cli import runopts
    from runner.cli.context import STATE
    STATE.backend_flag = "vm" if found.get("--vm") else found.get("backend_flag")
    STATE.machine = found.get("machine", "default")
    STATE.debug = bool(found.get("--debug"))
    return runopts.run(opts)
