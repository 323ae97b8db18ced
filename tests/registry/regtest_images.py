"""Test images built with the project's own store, and OCI layouts of them for skopeo.

``build_image`` writes real gzip (or plain) tar layers, a config with matching ``diff_ids`` and an
OCI or Docker schema2 manifest into a Store and names it. ``oci_layout`` exports images (optionally
as an index of several platforms) to an OCI image layout directory, which ``skopeo copy`` pushes as
an independent producer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from runner.images.registry import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(store, name: str | None, layer_files: list[dict[str, bytes]], *, arch: str = "amd64",
                variant: str = "", docker: bool = False, compress: bool = True) -> dict:
    """Put an image into ``store`` (named ``name`` if given); returns its manifest bytes and digests."""
    descriptors, diff_ids = [], []
    for files in layer_files:
        tar = make_tar(files)
        diff_ids.append(digest_of(tar))
        blob = gzip.compress(tar, mtime=0) if compress else tar
        media = (DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP) if compress else OCI_LAYER
        descriptors.append({"mediaType": media, "digest": store.put_bytes(blob), "size": len(blob)})
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                           "digest": store.put_bytes(config_bytes), "size": len(config_bytes)},
                "layers": descriptors}
    data = json.dumps(manifest, indent=3).encode()
    digest = store.put_bytes(data)
    store.add(name, digest)
    return {"manifest": data, "digest": digest, "config": manifest["config"]["digest"],
            "layers": [d["digest"] for d in descriptors], "arch": arch, "variant": variant}


def oci_layout(store, path: Path, images: list[dict], *, tag: str = "latest", as_index: bool = False,
               docker_list: bool = False) -> Path:
    """Write ``images`` (from :func:`build_image`) as an OCI layout; several or ``as_index`` → an index."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> str:
        digest = digest_of(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    for image in images:
        for digest in [image["config"], *image["layers"]]:
            shutil.copyfile(store.blob_path(digest), blobs / digest.split(":")[1])
        put(image["manifest"])
    entries = []
    for image in images:
        media = json.loads(image["manifest"])["mediaType"]
        entry = {"mediaType": media, "digest": image["digest"], "size": len(image["manifest"])}
        platform = {"architecture": image["arch"], "os": "linux"}
        if image["variant"]:
            platform["variant"] = image["variant"]
        entries.append({**entry, "platform": platform})
    if as_index or len(images) > 1:
        index = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker_list else OCI_INDEX, "manifests": entries}
        data = json.dumps(index).encode()
        top = {"mediaType": index["mediaType"], "digest": put(data), "size": len(data)}
    else:
        top = {key: entries[0][key] for key in ("mediaType", "digest", "size")}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return path


def skopeo_copy(src: str, dst: str, *extra: str) -> None:
    """Run skopeo between two transports with TLS verification off for the loopback registry."""
    # An empty auth file of our own: never the user's credentials, never a stale login.
    auth = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    auth.write("{}")
    auth.close()
    env = {**os.environ, "REGISTRY_AUTH_FILE": auth.name}
    flags = [f"--{side}-tls-verify=false" for side, ref in (("src", src), ("dest", dst))
             if ref.startswith("docker://")]
    try:
        done = subprocess.run(["skopeo", "copy", "--quiet", *flags, *extra, src, dst], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(auth.name)
    if done.returncode != 0:
        raise AssertionError(f"skopeo copy {src} {dst} failed: {done.stderr.strip()}")
