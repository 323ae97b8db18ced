"""Registry authentication: challenges, bearer tokens and basic credentials.

Distribution-spec registries announce how to authenticate in the ``WWW-Authenticate`` header of a 401
reply. Two schemes matter in practice:

* ``Basic realm="..."`` (a plain htpasswd registry): send ``Authorization: Basic`` with the user's
  credentials on every request.
* ``Bearer realm="...",service="...",scope="..."`` (Docker Hub, GitLab, Harbor, distribution with
  ``auth: token``): ask the token server named by ``realm`` for a short-lived token for one *scope*
  (``repository:<name>:pull,push``), anonymously or with the user's credentials, and send that token.

Tokens are cached per (realm, service, scope, identity) until shortly before they expire, because
asking the token server before every blob request doubles the round trips of a pull.

This module does no I/O of its own: the registry client hands it a ``fetch`` callable, so the HTTP
rules (proxies, TLS, redirects) live in one place (:mod:`runner.images.registry`). Secrets never
appear in an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Mapping

from runner.errors import RegistryError

# Token servers may omit expires_in; the token spec says to assume 60 seconds then.
DEFAULT_TOKEN_LIFETIME = 60
# Renew this many seconds before expiry so a token never dies in the middle of a request.
EXPIRY_MARGIN = 10

_TOKEN_LOCK = threading.Lock()
_TOKENS: dict[tuple, tuple[str, float]] = {}

# fetch(method, url, headers, body) -> (status, body bytes)
Fetch = Callable[[str, str, Mapping[str, str], "bytes | None"], "tuple[int, bytes]"]


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge: scheme (lower-case) and its parameters."""

    scheme: str
    params: dict = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges.

    Handles quoted strings containing commas and escaped quotes (``scope="repository:a:pull,push"``),
    several challenges in one header (``Basic realm="x", Bearer realm="y"``) and token68 values.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    current: Challenge | None = None

    def skip_ws(pos: int) -> int:
        while pos < n and header[pos] in " \t,":
            pos += 1
        return pos

    while True:
        i = skip_ws(i)
        if i >= n:
            break
        start = i
        while i < n and header[i] not in " \t,=":
            i += 1
        token = header[start:i]
        j = i
        while j < n and header[j] in " \t":
            j += 1
        if j < n and header[j] == "=" and current is not None:
            # auth-param: name=value where value is a token or a quoted string.
            j += 1
            while j < n and header[j] in " \t":
                j += 1
            if j < n and header[j] == '"':
                j += 1
                value_chars = []
                while j < n and header[j] != '"':
                    if header[j] == "\\" and j + 1 < n:
                        j += 1
                    value_chars.append(header[j])
                    j += 1
                value = "".join(value_chars)
                j += 1  # closing quote
            else:
                vstart = j
                while j < n and header[j] not in " \t,":
                    j += 1
                value = header[vstart:j]
            current.params[token.lower()] = value
            i = j
        else:
            # A bare token starts a new challenge (the scheme name).
            current = Challenge(token.lower(), {})
            challenges.append(current)
    return challenges


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP basic auth."""
    raw = f"{username}:{password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _parse_issued_at(text: str | None) -> float | None:
    """RFC 3339 ``issued_at`` → epoch seconds; None when absent or unparsable (then: now)."""
    if not text:
        return None
    try:
        # fromisoformat in 3.10 rejects 'Z' and nanoseconds; normalise both.
        text = text.replace("Z", "+00:00")
        if "." in text:
            head, _, tail = text.partition(".")
            digits = "".join(c for c in tail if c.isdigit())
            zone = tail[len(digits):]
            text = f"{head}.{digits[:6]}{zone}"
        parsed = _dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed.timestamp()
    except ValueError:
        return None


class Authenticator:
    """Turns challenges into ``Authorization`` headers for one registry and one set of credentials.

    ``credentials`` is ``{"username", "password"}``, ``{"identitytoken"}`` or None (anonymous).
    Thread-safe: parallel layer downloads share one authenticator and its token cache.
    """

    def __init__(self, registry: str, credentials: Mapping[str, str] | None, fetch: Fetch):
        self.registry = registry
        self._credentials = dict(credentials) if credentials else None
        self._fetch = fetch
        # Tokens are shared by every client holding the same credentials (the resident agent serves
        # many pulls); the key holds a hash of the credentials, never the credentials themselves.
        self._identity = hashlib.sha256(json.dumps(self._credentials, sort_keys=True).encode()).hexdigest()
        self.challenge: Challenge | None = None

    def __repr__(self) -> str:  # never show credentials
        return f"Authenticator({self.registry!r}, anonymous={self._credentials is None})"

    def remember(self, header: str | None) -> Challenge | None:
        """Record the challenge a 401 reply offered; prefer Bearer over Basic like Docker does."""
        challenges = parse_challenges(header or "")
        by_scheme = {c.scheme: c for c in challenges}
        chosen = by_scheme.get("bearer") or by_scheme.get("basic")
        if chosen is not None:
            self.challenge = chosen
        return chosen

    def unauthorized(self) -> RegistryError:
        """The one error for refused credentials or refused anonymous access."""
        return RegistryError(f"unauthorized: authentication required for {self.registry}",
                             hint=f"runner login {self.registry}")

    def header(self, scopes: tuple[str, ...] = (), *, refresh: bool = False) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes``, or None before any challenge."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._credentials
            if not creds or "username" not in creds:
                raise self.unauthorized()
            return basic_authorization(creds["username"], creds.get("password", ""))
        if challenge.scheme != "bearer":
            raise RegistryError(f"{self.registry} asks for unsupported authentication scheme "
                                f"{challenge.scheme!r}")
        return "Bearer " + self.token(scopes, refresh=refresh)

    def token(self, scopes: tuple[str, ...], *, refresh: bool = False) -> str:
        """A bearer token for ``scopes``, from the cache while still valid."""
        challenge = self.challenge
        assert challenge is not None and challenge.scheme == "bearer"
        key = (self.registry, challenge.realm, challenge.params.get("service", ""),
               tuple(sorted(scopes)), self._identity)
        with _TOKEN_LOCK:
            cached = _TOKENS.get(key)
            if cached and not refresh and cached[1] - EXPIRY_MARGIN > time.time():
                return cached[0]
        token, expires_at = self._fetch_token(challenge, scopes)
        with _TOKEN_LOCK:
            # Drop expired entries so a long-running agent does not grow the cache forever.
            now = time.time()
            for stale in [k for k, (_, exp) in _TOKENS.items() if exp <= now]:
                del _TOKENS[stale]
            _TOKENS[key] = (token, expires_at)
        return token

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = challenge.realm
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{self.registry} named an invalid token realm {realm!r}")
        service = challenge.params.get("service")
        creds = self._credentials or {}
        if "identitytoken" in creds:
            # An identity token (from an OAuth login) is exchanged with the OAuth2 refresh-token grant.
            form = [("grant_type", "refresh_token"), ("refresh_token", creds["identitytoken"]),
                    ("client_id", "runner")]
            if service:
                form.append(("service", service))
            form += [("scope", " ".join(scopes))] if scopes else []
            body = urllib.parse.urlencode(form).encode()
            status, data = self._fetch("POST", realm,
                                       {"Content-Type": "application/x-www-form-urlencoded"}, body)
        else:
            query = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
            url = realm
            if query:
                url += ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
            headers = {}
            if "username" in creds:
                headers["Authorization"] = basic_authorization(creds["username"], creds.get("password", ""))
            status, data = self._fetch("GET", url, headers, None)
        if status in (401, 403):
            raise self.unauthorized()
        if status != 200:
            raise RegistryError(f"token server for {self.registry} replied HTTP {status}")
        try:
            reply = json.loads(data)
            token = reply.get("token") or reply.get("access_token")
        except (ValueError, AttributeError):
            token, reply = None, {}
        if not token or not isinstance(token, str):
            raise RegistryError(f"token server for {self.registry} sent no token")
        try:
            lifetime = int(reply.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        if lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        now = time.time()
        issued = _parse_issued_at(reply.get("issued_at"))
        # An issue time in the future can only be clock skew; count from now then.
        start = now if issued is None else min(issued, now)
        return token, start + lifetime
