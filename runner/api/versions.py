"""Engine API versions: which are accepted, and how a request path names one.

Docker clients prefix every path with the API version they speak (``/v1.41/containers/json``), or send the
bare path before they have negotiated (``/_ping``). runner advertises 1.44 (docker CLI 29.x refuses servers
below it) and accepts any version from 1.24 up to that, replying in the shape the request's version expects.
"""

from __future__ import annotations

import re

from runner.errors import UsageError

API_VERSION = "1.44"
MIN_API_VERSION = "1.24"

_PREFIX = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(?=/)")


def as_tuple(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def split_path(path: str) -> tuple[str, str]:
    """``/v1.41/containers/json`` → (``"1.41"``, ``"/containers/json"``); a bare path speaks the newest version.

    A version outside the supported range is a :class:`UsageError` with Docker's own wording, which clients
    show as is."""
    match = _PREFIX.match(path)
    if match is None:
        if re.match(r"^/v\d[^/]*/", path):  # /v1/..., /v1.x/...: a version, but not one we can read
            raise UsageError(f"malformed API version in {path.split('/')[1]!r}")
        return API_VERSION, path
    version = f"{int(match.group(1))}.{int(match.group(2))}"
    if as_tuple(version) > as_tuple(API_VERSION):
        raise UsageError(f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
    if as_tuple(version) < as_tuple(MIN_API_VERSION):
        raise UsageError(f"client version {version} is too old. Minimum supported API version is "
                         f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    return version, path[match.end():]


def at_least(version: str, wanted: str) -> bool:
    """Whether a request's API version is ``wanted`` or newer (reply shapes changed at some versions)."""
    return as_tuple(version) >= as_tuple(wanted)
