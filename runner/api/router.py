"""The route table: (HTTP method, path pattern) → handler, as Docker's router names its paths.

Patterns are literal segments and ``{name}`` placeholders for one segment; ``{name*}`` takes the rest of the
path up to a literal suffix, because image names contain slashes (``/images/localhost:5000/a/b:1/json``).
Handler modules register with :func:`route` at import time; :data:`ROUTES` is the one table.
"""

from __future__ import annotations

import re
from typing import Callable

from runner.records import FrozenRecord


class Route(FrozenRecord):
    _fields = ("method", "pattern", "regex", "handler")

    def __init__(self, method: str, pattern: str, handler: Callable):
        self._init(method=method, pattern=pattern, regex=_compile(pattern), handler=handler)


def _compile(pattern: str) -> re.Pattern:
    parts = []
    for piece in re.split(r"(\{[a-z_]+\*?\})", pattern):
        if piece.startswith("{"):
            name = piece.strip("{}*")
            parts.append(f"(?P<{name}>.+)" if piece.endswith("*}") else f"(?P<{name}>[^/]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("^" + "".join(parts) + "/?$")


ROUTES: list[Route] = []


def route(method: str, pattern: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as the handler of ``method pattern`` (``HEAD`` falls back to ``GET``)."""
    def register(handler: Callable) -> Callable:
        ROUTES.append(Route(method, pattern, handler))
        return handler
    return register


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a request and its path parameters; None when no pattern matches the path at all.

    Raises :class:`MethodNotAllowed` when the path exists for other methods only."""
    allowed = False
    for candidate in (method, "GET") if method == "HEAD" else (method,):
        for entry in ROUTES:
            found = entry.regex.match(path)
            if found is None:
                continue
            if entry.method == candidate:
                return entry, found.groupdict()
            allowed = True
    if allowed:
        raise MethodNotAllowed(method, path)
    return None


class MethodNotAllowed(Exception):
    def __init__(self, method: str, path: str):
        super().__init__(f"{method} is not allowed on {path}")
