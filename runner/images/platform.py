"""Platforms (os/architecture/variant): the host's, the user's ``--platform``, and choosing from an index.

Multi-arch images are an index (OCI image index or Docker manifest list) whose entries each carry a
``platform``. Containers run on Linux of the machine's own architecture (natively, or in the VM which
always matches the host CPU), so the default is ``linux/<host arch>``; ``--platform`` overrides it.

Names are normalised the way Docker and containerd do (``x86_64`` → ``amd64``, ``aarch64`` →
``arm64``, ``arm64`` means variant ``v8``, ``arm`` defaults to ``v7``), so an index entry written
by any tool matches. Entries without a usable platform (build attestations say ``unknown/unknown``)
are never chosen.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from runner.errors import NotFound, UsageError
from runner.images.registry import INDEX_TYPES

_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "armhf": "arm", "armel": "arm", "arm": "arm",
    "i386": "386", "i686": "386", "386": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}
# Variants implied when none is written, so "linux/arm64" equals "linux/arm64/v8".
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    """A normalised platform; ``variant`` is "" when the architecture has none."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_dict(self) -> dict:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


def normalize(os_name: str, arch: str, variant: str = "") -> Platform:
    """Canonical form of a platform as written by any tool (case, aliases, default variants)."""
    os_name = (os_name or "").lower()
    raw = (arch or "").lower()
    arch = _ARCH_ALIASES.get(raw, raw)
    variant = (variant or "").lower()
    if raw.startswith("armv") and not variant:  # "armv7l" as reported by uname
        arch, variant = "arm", "v" + raw[4:].rstrip("l")
    if arch == "arm64" and variant == "8":
        variant = "v8"
    variant = variant or _DEFAULT_VARIANT.get(arch, "")
    return Platform(os_name, arch, variant)


def host_platform() -> Platform:
    """The platform containers run on here: always Linux (natively or in the VM), host CPU."""
    return normalize("linux", _platform.machine())


def parse_platform(text: str) -> Platform:
    """Parse ``--platform`` (``linux/arm64``, ``linux/arm/v7``, ``arm64``) or raise UsageError."""
    parts = [p.strip() for p in (text or "").strip().split("/")]
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise UsageError(f"invalid platform {text!r}", hint="use OS/ARCH[/VARIANT], e.g. linux/arm64")
    if len(parts) == 1:
        # A bare architecture means Linux, the only OS containers run on here.
        parts.insert(0, "linux")
    result = normalize(*parts)
    if result.architecture not in _ARCH_ALIASES.values():
        raise UsageError(f"unknown architecture {parts[1]!r} in platform {text!r}",
                         hint="use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64")
    return result


def of_descriptor(descriptor: dict) -> Platform | None:
    """The platform of an index entry, or None when it has none."""
    plat = descriptor.get("platform")
    if not isinstance(plat, dict) or not plat.get("os") or not plat.get("architecture"):
        return None
    return normalize(str(plat["os"]), str(plat["architecture"]), str(plat.get("variant") or ""))


def matches(candidate: Platform, wanted: Platform) -> bool:
    """Whether an image built for ``candidate`` runs as ``wanted``."""
    if candidate.os != wanted.os or candidate.architecture != wanted.architecture:
        return False
    # amd64 variants (v2, v3) are CPU levels any amd64 image may carry; only arm variants must agree.
    if wanted.architecture == "amd64":
        return True
    return candidate.variant == wanted.variant


def choose(index: dict, wanted: Platform, name: str = "image") -> dict:
    """Pick the index entry for ``wanted``; raise NotFound listing what is available otherwise.

    An entry that is itself an index and has no platform is returned when nothing else matches, so
    the caller can fetch it and choose again. An exact variant match wins over a looser one (an amd64 image without a CPU level before a ``v3``
    one), and among equals the first entry wins, as in Docker.
    """
    entries = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
    ranked = []
    for position, entry in enumerate(entries):
        plat = of_descriptor(entry)
        if plat is not None and matches(plat, wanted):
            exact = plat.variant == wanted.variant
            ranked.append((not exact, position, entry))
    if ranked:
        return min(ranked, key=lambda item: item[:2])[2]
    # A nested index without a platform of its own groups more entries: the caller descends into it.
    for entry in entries:
        if entry.get("platform") is None and entry.get("mediaType") in INDEX_TYPES:
            return entry
    available = sorted({str(p) for p in map(of_descriptor, entries)
                        if p is not None and p.os != "unknown"})
    listing = ", ".join(available) or "none"
    raise NotFound(f"no matching manifest for {wanted} in {name} (available platforms: {listing})",
                   hint="choose one of them with --platform")
