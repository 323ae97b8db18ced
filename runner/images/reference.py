"""Image references, parsed by Docker's rules so a name means here exactly what it means to ``docker``.

``busybox`` is ``docker.io/library/busybox:latest``; the first path component is a registry only when it
contains ``.`` or ``:``, is ``localhost`` or has upper-case letters (as in Docker's
``splitDockerDomain``); repositories are lower case; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a
digest pins the content (``name@sha256:<64 hex>``). Only sha256 digests are accepted because the store
accepts nothing else. :func:`api_host` is the single place that knows Docker Hub's API host differs from
its name. Standard library only.
"""

from __future__ import annotations

import re

from runner.errors import UsageError
from runner.records import FrozenRecord

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_OFFICIAL_PREFIX = "library/"
_MAX_NAME = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY_RE = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def api_host(registry: str) -> str:
    """The host that serves the registry API for ``registry`` (Docker Hub's differs from its name)."""
    return "registry-1.docker.io" if registry == DEFAULT_REGISTRY else registry


class Reference(FrozenRecord):
    """A parsed image reference. ``tag`` is None only when a digest is given without a tag."""

    _fields = ("registry", "repository", "tag", "digest")

    def __init__(self, registry: str, repository: str, tag: str | None = DEFAULT_TAG, digest: str | None = None):
        self._init(registry=registry, repository=repository, tag=tag, digest=digest)

    @staticmethod
    def parse(text: str) -> "Reference":
        """Parse ``text`` by Docker's normalisation rules; raise UsageError saying what is wrong."""
        if not isinstance(text, str) or not text:
            raise UsageError("invalid image reference: empty name")

        def bad(reason: str) -> UsageError:
            return UsageError(f"invalid image reference {text!r}: {reason}")

        if _HEX64_RE.fullmatch(text):
            raise bad("a 64-character hexadecimal string is an image ID, not a name")
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST_RE.fullmatch(digest):
                raise bad("digest must be sha256: followed by 64 lower-case hex digits")
        slash = rest.find("/")
        first = rest[:slash]
        if slash == -1 or ("." not in first and ":" not in first and first != "localhost" and first == first.lower()):
            registry, remainder = DEFAULT_REGISTRY, rest
        else:
            registry, remainder = first, rest[slash + 1:]
            if not _REGISTRY_RE.fullmatch(registry):
                raise bad(f"invalid registry {registry!r}")
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
        tag = None
        colon = remainder.rfind(":")
        if colon != -1:
            remainder, tag = remainder[:colon], remainder[colon + 1:]
            if not _TAG_RE.fullmatch(tag):
                raise bad(f"invalid tag {tag!r}")
        if remainder != remainder.lower():
            raise bad("repository name must be lowercase")
        if not _REPOSITORY_RE.fullmatch(remainder):
            raise bad("repository name may contain only a-z, 0-9 and separators ('.', '_', '__', '-', '/') "
                      "between alphanumerics")
        if registry == DEFAULT_REGISTRY and "/" not in remainder:
            remainder = _OFFICIAL_PREFIX + remainder
        if len(registry) + 1 + len(remainder) > _MAX_NAME:
            raise bad(f"repository name must not be more than {_MAX_NAME} characters")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return Reference(registry, remainder, tag, digest)

    @property
    def base(self) -> str:
        """Registry and repository without tag or digest: ``docker.io/library/busybox``."""
        return f"{self.registry}/{self.repository}"

    @property
    def name(self) -> str:
        """The canonical full form: ``docker.io/library/busybox:latest``."""
        return self.base + self._suffix()

    @property
    def familiar_base(self) -> str:
        """The repository as Docker shows it: ``busybox``, ``user/app``, ``localhost/busybox``."""
        if self.registry == DEFAULT_REGISTRY:
            return self.repository.removeprefix(_OFFICIAL_PREFIX)
        return self.base

    @property
    def familiar(self) -> str:
        """The short form Docker shows: ``busybox:latest``, ``localhost/busybox:latest``."""
        return self.familiar_base + self._suffix()

    def with_tag(self, tag: str) -> "Reference":
        """The same repository with ``tag`` and no digest."""
        return Reference.parse(f"{self.base}:{tag}")

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name
