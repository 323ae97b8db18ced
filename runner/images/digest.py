"""Content digests: the one check every blob name passes before it becomes a path.

Digests arrive from manifests, archives and registries, i.e. from untrusted input, and the store turns
them into file names. Accepting only ``sha256:`` followed by exactly 64 lower-case hex digits makes a
name like ``sha256:../../etc/x`` impossible before any path is built. Standard library only.
"""

from __future__ import annotations

import re

from runner.errors import ImageError

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def validate_digest(digest: object) -> str:
    """Return ``digest`` unchanged if it is ``sha256:<64 lower-case hex>``, else raise ImageError."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid digest {str(digest)[:100]!r}: expected sha256: and 64 lower-case hex digits")
    return digest


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    import hashlib  # here: hashlib loads OpenSSL (~5 ms), which merely reading the store never needs
    return "sha256:" + hashlib.sha256(data).hexdigest()
