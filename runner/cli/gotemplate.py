"""A small evaluator of Go's text/template, the subset people pass to ``--format`` and ``inspect -f``.

Why not a library: no maintained Python package implements Go templates, and docker users only write a
small part of them. Supported: ``{{.Field}}``, nested ``{{.State.Running}}``, ``{{.}}``, ``{{json .}}``,
``{{index .Labels "k"}}``, ``{{.Label "k"}}`` (a field that is a function), pipelines (``{{.Names | upper}}``),
``{{range .X}}...{{else}}...{{end}}``, ``{{if ...}}``/``{{with ...}}`` with ``{{else}}``, ``{{- trim -}}``
markers, ``$`` (the whole value), string/number/bool literals, and the functions json, index, join, split,
upper, lower, title, len, print, printf, println, eq, ne, lt, le, gt, ge, not, and, or, truncate, pad.
Not supported (a clear error names them): variables other than ``$`` (``{{$x := ...}}``), ``define``/
``template``/``block``, ``range $i, $e :=``, comments, method calls on values other than the list rows'.
A ``table`` prefix (``table {{.ID}}\\t{{.Names}}``) prints a header and aligns columns, as docker does.
Values print as Go does: ``true``/``false``, ``<no value>`` for a missing key, ``map[k:v]``, ``[a b]``.
"""

from __future__ import annotations

import json
import re

from runner.errors import UsageError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
                    r'|(?P<field>(?:\$)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$)|(?P<pipe>\|)'
                    r'|(?P<lp>\()|(?P<rp>\))|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))')
NO_VALUE = "<no value>"


def error(message: str) -> UsageError:
    return UsageError(f"template parsing error: {message}",
                      hint="see 'runner --help' docs: fields like {{.Names}}, {{json .}}, {{index .Labels \"k\"}}")


# ------------------------------------------------------------------------------------------------ parsing

def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise error(f"unexpected {text[pos:pos + 10]!r} in {{{{{text}}}}}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _pipeline(tokens: list[tuple[str, str]]) -> list[list]:
    """Commands separated by ``|``; each a list of operands (tokens, or a nested pipeline in parentheses)."""
    commands, current, stack = [], [], []
    for tok in tokens:
        if tok[0] == "lp":
            stack.append((commands, current))
            commands, current = [], []
        elif tok[0] == "rp":
            if not stack:
                raise error("unexpected )")
            inner = commands + [current]
            commands, current = stack.pop()
            current.append(("pipe_expr", inner))
        elif tok[0] == "pipe":
            if not current:
                raise error("missing command before |")
            commands.append(current)
            current = []
        else:
            current.append(tok)
    if stack:
        raise error("unclosed (")
    if not current:
        raise error("empty command")
    return commands + [current]


def parse(text: str) -> list:
    """The template as a tree: str (text), ("out", pipeline), ("if"|"with"|"range", pipeline, body, else)."""
    root: list = []
    stack: list = [(None, root)]
    pos = 0
    pieces = list(_ACTION.finditer(text))
    for i, m in enumerate(pieces):
        literal = text[pos:m.start()]
        if m.group(1):
            literal = literal.rstrip()
        if i > 0 and pieces[i - 1].group(3):
            literal = literal.lstrip()
        if literal:
            stack[-1][1].append(literal)
        pos = m.end()
        _action(m.group(2).strip(), stack)
    tail = text[pos:]
    if "{{" in tail:
        raise error(f"unclosed action in {tail[tail.index('{{'):][:40]!r}")
    if pieces and pieces[-1].group(3):
        tail = tail.lstrip()
    if tail:
        stack[-1][1].append(tail)
    if len(stack) > 1:
        raise error(f"unexpected EOF: {{{{{stack[-1][0][0]}}}}} without {{{{end}}}}")
    return root


def _action(body: str, stack: list) -> None:
    if body.startswith("/*"):
        raise error("comments are not supported")
    tokens = _tokens(body)
    if not tokens:
        raise error("missing value for command")
    word = tokens[0][1] if tokens[0][0] == "ident" else ""
    if word in ("if", "with", "range"):
        if len(tokens) > 1 and tokens[1][1].startswith("$"):
            raise error(f"{word} with variables is not supported")
        node = [word, _pipeline(tokens[1:]), [], None]
        stack[-1][1].append(node)
        stack.append((node, node[2]))
    elif word == "else":
        if len(stack) < 2 or stack[-1][0][3] is not None:
            raise error("unexpected {{else}}")
        node = stack.pop()[0]
        node[3] = []
        stack.append((node, node[3]))
    elif word == "end":
        if len(stack) < 2:
            raise error("unexpected {{end}}")
        stack.pop()
    elif word in ("define", "template", "block", "break", "continue"):
        raise error(f"{{{{{word}}}}} is not supported")
    else:
        stack[-1][1].append(["out", _pipeline(tokens)])


# ------------------------------------------------------------------------------------------------ values

def go_str(value) -> str:
    """A value as Go's fmt prints it with %v."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_str(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    return str(value)


def truthy(value) -> bool:
    return bool(value) and value != NO_VALUE


def _printf(fmt: str, *args) -> str:
    out, i = [], 0
    parts = re.split(r"(%[-+# 0]*\d*(?:\.\d+)?[vsdqtfx%])", fmt)
    for part in parts:
        if not part.startswith("%") or len(part) < 2:
            out.append(part)
            continue
        if part == "%%":
            out.append("%")
            continue
        arg = args[i] if i < len(args) else None
        i += 1
        verb = part[-1]
        if verb in "vst":
            out.append(("%" + part[1:-1] + "s") % go_str(arg))
        elif verb == "q":
            out.append(json.dumps(go_str(arg)))
        else:
            out.append(part % arg)
    return "".join(out)


def _index(value, *keys):
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, NO_VALUE if isinstance(key, str) else None)
        elif isinstance(value, (list, tuple)) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise error(f"index out of range: {key}")
            value = value[key]
        else:
            raise error(f"cannot index {go_str(value)} with {key!r}")
    return value


def _compare(op):
    def fn(a, *rest):
        if not rest:
            raise error("missing argument for comparison")
        return all(op(a, b) for b in rest)
    return fn


def json_text(value) -> str:
    """Go's ``json`` of a value: compact. A row's helper functions (``.Label "k"``) are methods in Go, not fields,
    so they are left out."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if not callable(v)}
    return json.dumps(value, separators=(",", ":"))


FUNCS = {
    "json": lambda v: json_text(v),
    "index": _index,
    "join": lambda items, sep: sep.join(go_str(i) for i in (items or [])),
    "split": lambda s, sep: str(s).split(sep),
    "upper": lambda s: go_str(s).upper(), "lower": lambda s: go_str(s).lower(),
    "title": lambda s: go_str(s).title(),
    "len": lambda v: len(v or []),
    "print": lambda *a: "".join(go_str(x) for x in a),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": _printf,
    "eq": _compare(lambda a, b: a == b), "ne": _compare(lambda a, b: a != b),
    "lt": _compare(lambda a, b: a < b), "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b), "ge": _compare(lambda a, b: a >= b),
    "not": lambda v: not truthy(v),
    "and": lambda *a: next((x for x in a if not truthy(x)), a[-1] if a else None),
    "or": lambda *a: next((x for x in a if truthy(x)), a[-1] if a else None),
    "truncate": lambda s, n: go_str(s)[:int(n)],
    "pad": lambda s, left, right: " " * int(left) + go_str(s) + " " * int(right),
}


# ------------------------------------------------------------------------------------------------ evaluation

def _field(dot, root, path: str):
    value = root if path.startswith("$") else dot
    for name in [p for p in path.lstrip("$").split(".") if p]:
        if isinstance(value, dict):
            if name not in value:
                return NO_VALUE
            value = value[name]
        elif value is None or value == NO_VALUE:
            return NO_VALUE
        else:
            raise error(f"can't evaluate field {name} in type {type(value).__name__}")
    return value


def _operand(tok, dot, root):
    kind, text = tok
    if kind == "pipe_expr":
        return _run_pipeline(tok[1], dot, root)
    if kind == "str":
        return json.loads(text)
    if kind == "raw":
        return text[1:-1]
    if kind == "num":
        return float(text) if "." in text else int(text)
    if kind == "field":
        return _field(dot, root, text)
    if kind == "ident" and text in ("true", "false", "nil"):
        return {"true": True, "false": False, "nil": None}[text]
    raise error(f"function {text!r} used as a value")


def _run_command(cmd: list, dot, root, piped: tuple):
    head = cmd[0]
    if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
        fn = FUNCS.get(head[1])
        if fn is None:
            raise error(f'function "{head[1]}" not defined')
        args = [_operand(t, dot, root) for t in cmd[1:]] + list(piped)
        try:
            return fn(*args)
        except UsageError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise error(f"error calling {head[1]}: {exc}") from exc
    value = _operand(head, dot, root)
    if callable(value):
        return value(*[_operand(t, dot, root) for t in cmd[1:]], *piped)
    if len(cmd) > 1 or piped:
        raise error(f"{head[1]} is not a function and takes no arguments")
    return value


def _run_pipeline(pipeline: list, dot, root):
    value, piped = None, ()
    for cmd in pipeline:
        value = _run_command(cmd, dot, root, piped)
        piped = (value,)
    return value


def _render(nodes: list, dot, root, out: list) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "out":
            value = _run_pipeline(node[1], dot, root)
            out.append(value if isinstance(value, str) else go_str(value))
        else:
            kind, pipeline, body, otherwise = node
            value = _run_pipeline(pipeline, dot, root)
            if kind == "range":
                items = list(value.values()) if isinstance(value, dict) else \
                    (value if isinstance(value, (list, tuple)) else [])
                if items:
                    for item in items:
                        _render(body, item, root, out)
                elif otherwise is not None:
                    _render(otherwise, dot, root, out)
            elif truthy(value):
                _render(body, value if kind == "with" else dot, root, out)
            elif otherwise is not None:
                _render(otherwise, dot, root, out)


def execute(template: str | list, value) -> str:
    """Render ``template`` (text, or what :func:`parse` made of it) for ``value``."""
    nodes = parse(template) if isinstance(template, str) else template
    out: list[str] = []
    _render(nodes, value, value, out)
    return "".join(out)


# ------------------------------------------------------------------------------------------------ docker's --format

def is_table(fmt: str) -> bool:
    return fmt.startswith("table")


def format_rows(fmt: str, rows: list[dict], headers: dict[str, str]) -> list[str]:
    """Docker's ``--format`` for a list: ``json`` (one JSON object a line), ``table [TEMPLATE]`` (a header from
    ``headers`` = field -> column title, then rows aligned as Go's tabwriter with padding 3), or a template
    (one line per row)."""
    rows = [dict(sorted(r.items())) for r in rows]  # docker marshals a row context as a map: keys sorted
    if fmt == "json":
        return [json_text(r) for r in rows]
    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")  # docker's CLI reads a typed \t as a tab
    if not is_table(fmt):
        nodes = parse(fmt)
        return [execute(nodes, r) for r in rows]
    body = fmt[len("table"):].strip() or "\t".join("{{." + k + "}}" for k in headers)
    nodes = parse(body)
    header = execute(parse(re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: headers.get(m.group(1), m.group(1).upper()),
                                  body)), {})
    lines = [header] + [execute(nodes, r) for r in rows]
    return align(lines)


def align(lines: list[str], padding: int = 3) -> list[str]:
    cells = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in cells:
        for i, c in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(c))
    return ["".join(c.ljust(widths[i] + padding) if i < len(row) - 1 else c for i, c in enumerate(row)).rstrip()
            for row in cells]
