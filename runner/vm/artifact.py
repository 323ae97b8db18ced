"""The guest image as an OCI artifact: its format, where its reference comes from, and what a pull accepts.

macOS and Windows hosts cannot build the guest (mmdebstrap is Linux-only), so a maintainer builds it on
Linux and pushes it to a registry; every host pulls it with runner's own registry client, the way podman
machine ships its VM images. The shape on the registry (OCI image-spec 1.1 artifacts)::

    index (application/vnd.oci.image.index.v1+json, artifactType application/vnd.runner.guest.v1)
      annotations: image version, kernel version, recipe hash (of the host arch pushed first), runner version
      ├─ manifest  platform linux/amd64, artifactType application/vnd.runner.guest.v1
      │    config  application/vnd.runner.guest.config.v1+json   = the guest's manifest.json, byte for byte
      │    layers  application/vnd.runner.guest.{kernel,initrd,rootfs}.v1+gzip, title annotation = file name
      └─ manifest  platform linux/arm64, the same for aarch64

Why these choices:

* **Own media types.** A registry or a client must never mistake the guest for a container image (docker
  pull would try to unpack a kernel as a tar layer); runner refuses anything without its artifactType.
* **The config is manifest.json.** It already names every file with size and sha256, so the chain of trust
  is: pinned index digest -> manifest digest -> config digest -> sha256 of each unpacked file, checked by
  :func:`runner.vm.image.verify` before anything boots.
* **gzip, level 6.** Measured here on the real artifacts (README, "The guest image"): x86_64 238 MB
  unpacked -> 55.9 MB gzip-6 / 55.6 MB gzip-9 / 52.2 MB zstd-3 / 41.1 MB zstd-19; pure-Python decompression
  0.7 s (zlib) vs 0.2-0.3 s (the zstandard C extension). zstd -19 saves ~15 MB per arch, but Python 3.11 has
  no zstd module, and a compiled dependency on every macOS/Windows host is a poor trade for it: gzip is far
  under the 100 MB target and its decompression is small beside the download. Level 9 saves <1 % for 4x
  the packing time. Written with gzip mtime 0, so a build always gives the same digests (a re-push uploads
  nothing). A ``+zstd`` layer type can join once the minimum Python has ``compression.zstd`` (3.14).
* **Pinning.** A release writes its index digest into :data:`runner.vm.release.GUEST_IMAGE`; a pull by
  digest is verified byte for byte by the registry client, so a registry cannot substitute another guest.

Pure: building and checking manifests only. Pushing and pulling live in artifact_push / artifact_pull.
"""

from __future__ import annotations

import json
import os

from runner.errors import UsageError, VMError

from vmimage.version import IMAGE_VERSION

ARTIFACT_TYPE = "application/vnd.runner.guest.v1"
CONFIG_TYPE = "application/vnd.runner.guest.config.v1+json"
LAYER_TYPES = {role: f"application/vnd.runner.guest.{role}.v1+gzip" for role in ("kernel", "initrd", "rootfs")}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_IMAGE_VERSION = "io.runner.guest.image-version"
ANN_KERNEL = "io.runner.guest.kernel-version"
ANN_RECIPE = "io.runner.guest.recipe"
ANN_RUNNER = "io.runner.guest.runner-version"

PLATFORMS = {"x86_64": "amd64", "aarch64": "arm64"}
ENV = "RUNNER_GUEST_IMAGE"
CONFIG_KEY = "vm.image"


def _annotations(guest: dict) -> dict:
    from runner import __version__

    return {ANN_VERSION: str(guest.get("image_version", "")), ANN_IMAGE_VERSION: str(guest.get("image_version", "")),
            ANN_KERNEL: str(guest.get("kernel_version", "")), ANN_RECIPE: str(guest.get("recipe", "")),
            ANN_RUNNER: __version__}


def descriptor(media_type: str, digest: str, size: int, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def build_manifest(guest: dict, config: dict, layers: dict[str, dict]) -> bytes:
    """One arch's artifact manifest: ``config`` describes manifest.json, ``layers`` maps role -> descriptor."""
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": config, "layers": [layers[role] for role in LAYER_TYPES if role in layers],
            "annotations": _annotations(guest)}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def build_index(entries: list[tuple[str, str, int, dict]]) -> bytes:
    """The index over ``(arch, manifest digest, manifest size, guest manifest.json)`` entries."""
    if not entries:
        raise VMError("no guest image to push")
    manifests = [descriptor(OCI_MANIFEST, digest, size, artifactType=ARTIFACT_TYPE,
                            platform={"os": "linux", "architecture": PLATFORMS[arch]},
                            annotations=_annotations(guest))
                 for arch, digest, size, guest in entries]
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_TYPE, "manifests": manifests,
            "annotations": _annotations(entries[0][3])}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _refuse_foreign(doc: dict, ref: str) -> None:
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise VMError(f"{ref} is not a runner guest image (artifactType {doc.get('artifactType')!r})",
                      hint=f"point {ENV} or the config's {CONFIG_KEY} at an image pushed by `runner vm image push`")
    version = (doc.get("annotations") or {}).get(ANN_IMAGE_VERSION)
    if version is not None and str(version) != IMAGE_VERSION:
        runner_version = (doc.get("annotations") or {}).get(ANN_RUNNER, "another runner")
        raise VMError(f"{ref} is guest image version {version} (made by runner {runner_version}); this runner "
                      f"needs version {IMAGE_VERSION}",
                      hint="use the guest image of this runner release, or build one: `runner vm image build` "
                           "(Linux, as root)")


def choose(index: dict, arch: str, ref: str) -> dict:
    """The index entry for ``arch``; a foreign artifact, another image version or a missing arch is refused."""
    _refuse_foreign(index, ref)
    wanted = PLATFORMS[arch]
    available = []
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(plat, dict):
            continue
        available.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if plat.get("os") == "linux" and plat.get("architecture") == wanted:
            _refuse_foreign(entry, ref)
            return entry
    raise VMError(f"{ref} has no guest image for linux/{wanted} (it has: {', '.join(available) or 'none'})",
                  hint=f"push one built for {arch} (`runner vm image build --arch {arch}`), or build it locally")


def check_manifest(manifest: dict, ref: str) -> tuple[dict, dict[str, dict]]:
    """The config descriptor and role -> layer descriptor of one arch's manifest, checked before any download."""
    from runner.images.digest import validate_digest

    _refuse_foreign(manifest, ref)
    config = manifest.get("config")
    if not isinstance(config, dict) or config.get("mediaType") != CONFIG_TYPE:
        raise VMError(f"{ref}: the guest manifest has no {CONFIG_TYPE} config")
    layers: dict[str, dict] = {}
    for desc in [config, *(manifest.get("layers") or [])]:
        validate_digest(desc.get("digest"))
        if not isinstance(desc.get("size"), int) or isinstance(desc.get("size"), bool) or desc["size"] < 0:
            raise VMError(f"{ref}: descriptor {desc.get('digest')} has an invalid size")
        role = next((r for r, t in LAYER_TYPES.items() if t == desc.get("mediaType")), None)
        if desc is not config and role is None:
            raise VMError(f"{ref}: unknown guest layer type {desc.get('mediaType')!r}",
                          hint="a newer runner may be needed for this guest image")
        if role is not None:
            layers[role] = desc
    for role in ("kernel", "initrd"):
        if role not in layers:
            raise VMError(f"{ref}: the guest manifest has no {role} layer")
    return config, layers


def check_config(guest: dict, arch: str, layers: dict[str, dict], ref: str) -> None:
    """The guest's manifest.json must be for this arch and version and list a file for every layer."""
    if str(guest.get("image_version")) != IMAGE_VERSION:
        _refuse_foreign({"artifactType": ARTIFACT_TYPE,
                         "annotations": {ANN_IMAGE_VERSION: guest.get("image_version")}}, ref)
    if guest.get("arch") != arch:
        raise VMError(f"{ref}: the linux/{PLATFORMS[arch]} entry holds a guest for {guest.get('arch')!r}",
                      hint="the image was pushed wrongly; push it again with `runner vm image push`")
    arts = guest.get("artifacts")
    for role in layers:
        entry = arts.get(role) if isinstance(arts, dict) else None
        name = entry.get("file") if isinstance(entry, dict) else None
        # The file name becomes a path in the cache: a plain name only, never a path.
        if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
            raise VMError(f"{ref}: the guest manifest names no valid file for its {role} layer")
        size, sha = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(sha, str) \
                or len(sha) != 64 or sha.strip("0123456789abcdef"):
            raise VMError(f"{ref}: the guest manifest has no valid size and sha256 for its {role} file")


# -- where the reference comes from ----------------------------------------------------------------------------

def configured_ref(env: dict | None = None) -> tuple[str, str] | None:
    """(reference, where it came from): ``RUNNER_GUEST_IMAGE`` > config ``vm.image`` > this release's pin."""
    env = os.environ if env is None else env
    if env.get(ENV):
        return env[ENV], f"{ENV} environment variable"
    value = _from_config()
    if value:
        return value, f"{CONFIG_KEY} in the config file"
    from runner.vm.release import GUEST_IMAGE

    return (GUEST_IMAGE, "this runner release") if GUEST_IMAGE else None


def _from_config() -> str | None:
    from runner import userconfig

    value = userconfig.read(CONFIG_KEY, ("vm", "image"))
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{CONFIG_KEY} in {userconfig.config_path()} must be a string (an image reference)")
    return value or None
