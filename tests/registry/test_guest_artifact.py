"""The guest image as an OCI artifact (issue 17), against a real docker-registry on loopback.

Small stand-in artifacts (random kernel/initrd/rootfs bytes with a real manifest.json) travel the same
push/pull code as the real guest; tests/vm/test_guest_pull.py boots the real one. Every test has its own
guest cache (RUNNER_VMIMAGE_DIR), so the shared ~/.cache/runner is never touched.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.errors import RunnerError, VMError
from runner.images.registry import RegistryClient
from runner.vm import artifact, artifact_pull, artifact_push, image
from test_resume import CountingProxy
from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.registry

FILES = {"kernel": "kernel", "initrd": "initrd.img", "rootfs": "rootfs.ext4"}
SIZES = {"kernel": 300_000, "initrd": 40_000, "rootfs": 3_000_000}


def fake_guest(root: Path, arch: str, version: str = image.IMAGE_VERSION, seed: bytes = b"") -> dict:
    """A guest cache dir whose files are half zeros (compressible) and half random, with its manifest.json."""
    directory = root / version / arch
    directory.mkdir(parents=True, exist_ok=True)
    arts = {}
    for role, name in FILES.items():
        size = SIZES[role]
        data = bytes(size // 2) + os.urandom(size - size // 2) + seed
        (directory / name).write_bytes(data)
        arts[role] = {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"image_version": version, "arch": arch, "kernel_version": f"6.1.0-test-{arch}",
                "cmdline": "console=ttyS0", "recipe": "ab" * 32, "artifacts": arts}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """(publisher's cache, user's cache); the user's is the active RUNNER_VMIMAGE_DIR after the push."""
    publisher, user = tmp_path / "publisher", tmp_path / "user"
    for arch in image.ARCHES:
        fake_guest(publisher, arch)
    monkeypatch.setenv(image.CACHE_ENV, str(publisher))
    monkeypatch.delenv(artifact.ENV, raising=False)
    monkeypatch.setenv("RUNNER_CONFIG", str(tmp_path / "no-config.json"))
    return publisher, user


@pytest.fixture
def pushed(registry, caches, monkeypatch):
    """Both arches pushed as ``<registry>/runner/guest:1``; then the user's (empty) cache is active."""
    publisher, user = caches
    ref = f"{registry.host}/runner/guest:{image.IMAGE_VERSION}"
    digest = artifact_push.push(ref)
    monkeypatch.setenv(image.CACHE_ENV, str(user))
    return ref, digest


def bootable(arch: str) -> bool:
    try:
        image.verify(image.cache_dir(arch), arch)
        return True
    except VMError:
        return False


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / image.IMAGE_VERSION).iterdir()) if (root / image.IMAGE_VERSION).exists() \
        else []


def test_one_index_holds_both_arches_with_runner_types_and_annotations(registry, pushed, caches, monkeypatch):
    ref, digest = pushed
    client = RegistryClient(registry.host)
    index = client.get_manifest("runner/guest", digest)
    body = index.json()
    assert body["mediaType"] == artifact.OCI_INDEX and body["artifactType"] == "application/vnd.runner.guest.v1"
    assert {(m["platform"]["os"], m["platform"]["architecture"]) for m in body["manifests"]} == \
        {("linux", "amd64"), ("linux", "arm64")}
    for entry in body["manifests"]:
        arch = {"amd64": "x86_64", "arm64": "aarch64"}[entry["platform"]["architecture"]]
        notes = entry["annotations"]
        assert notes[artifact.ANN_IMAGE_VERSION] == image.IMAGE_VERSION
        assert notes[artifact.ANN_KERNEL] == f"6.1.0-test-{arch}" and notes[artifact.ANN_RECIPE] == "ab" * 32
        manifest = client.get_manifest("runner/guest", entry["digest"]).json()
        assert manifest["artifactType"] == artifact.ARTIFACT_TYPE
        assert manifest["config"]["mediaType"] == "application/vnd.runner.guest.config.v1+json"
        assert [layer["mediaType"] for layer in manifest["layers"]] == [
            f"application/vnd.runner.guest.{role}.v1+gzip" for role in ("kernel", "initrd", "rootfs")]
        assert [layer["annotations"][artifact.ANN_TITLE] for layer in manifest["layers"]] == list(FILES.values())
        rootfs = manifest["layers"][2]
        assert rootfs["size"] < SIZES["rootfs"] * 0.6  # the zero half compressed away
    # Pushing the same build again gives the same digest (gzip without timestamps): a release can be re-pushed.
    publisher, _ = caches
    monkeypatch.setenv(image.CACHE_ENV, str(publisher))
    assert artifact_push.push(ref) == digest


@pytest.mark.parametrize("arch", image.ARCHES)
def test_pull_chooses_the_arch_verifies_and_unpacks_the_exact_files(pushed, caches, arch):
    ref, digest = pushed
    publisher, user = caches
    events = []
    result = artifact_pull.pull(ref, arch, progress=events.append)
    assert result["digest"] == digest and result["downloaded"] > 0
    for name in [*FILES.values(), "manifest.json"]:
        assert (user / image.IMAGE_VERSION / arch / name).read_bytes() == \
            (publisher / image.IMAGE_VERSION / arch / name).read_bytes()
    assert bootable(arch)
    assert cache_entries(user) == [".pull-" + arch + ".lock", arch]  # no download store, no unpack dir left
    downloading = [e for e in events if e.get("status") == "Downloading" and e.get("speed")]
    assert downloading and all(e["total"] > 0 for e in downloading)
    assert any(str(e.get("status", "")).startswith("Downloaded ") and "MB/s" in e["status"] for e in events)
    again = artifact_pull.pull(ref, arch)
    assert again["downloaded"] == 0  # up to date: nothing fetched but the manifests


def test_a_tampered_layer_is_refused_and_the_cache_stays_empty(registry, pushed, caches):
    ref, digest = pushed
    publisher, user = caches
    client = RegistryClient(registry.host)
    entry = artifact.choose(client.get_manifest("runner/guest", digest).json(), "x86_64", ref)
    layer = client.get_manifest("runner/guest", entry["digest"]).json()["layers"][2]
    data_file = registry.blob_file(layer["digest"])
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(VMError, match=f"refused the guest image {ref}: .*does not match its digest"):
        artifact_pull.pull(ref, "x86_64")
    assert cache_entries(user) == [".pull-x86_64.lock"] and not bootable("x86_64")
    # The user sees it in one line with a hint, never a traceback; the cache stays as it was.
    proc = start_pull(ref, user, "x86_64")
    out, err = proc.communicate(timeout=120)
    lines = err.decode().splitlines()
    assert proc.returncode == 125 and lines[0].startswith(f"Error: refused the guest image {ref}: "), lines
    assert lines[1].startswith("Hint: nothing of it was kept") and len(lines) == 2, lines
    assert cache_entries(user) == [".pull-x86_64.lock"]


class SubstitutingRegistry:
    """A loopback front of a real registry that answers one manifest request with other bytes: a hostile
    registry or mirror handing out another guest under the pinned digest."""

    def __init__(self, upstream: str, path: str, body: bytes):
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == path:
                    self.send_response(200)
                    self.send_header("Content-Type", artifact.OCI_INDEX)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                front.forward(self)

        self.upstream = upstream
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def forward(self, req):
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request("GET", req.path, headers={k: v for k, v in req.headers.items() if k.lower() != "host"})
            reply = conn.getresponse()
            body = reply.read()
            req.send_response(reply.status)
            for key, value in reply.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    req.send_header(key, value)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        finally:
            conn.close()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_registry_cannot_substitute_the_pinned_digest(registry, pushed, caches, monkeypatch, tmp_path):
    ref, digest = pushed
    publisher, user = caches
    # Another guest (other bytes) pushed under another tag: what a hostile registry would rather serve.
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path / "other"))
    fake_guest(tmp_path / "other", "x86_64", seed=b"evil")
    other = artifact_push.push(f"{registry.host}/runner/guest:evil", ["x86_64"])
    evil = RegistryClient(registry.host).get_manifest("runner/guest", other).data
    monkeypatch.setenv(image.CACHE_ENV, str(user))
    front = SubstitutingRegistry(registry.host, f"/v2/runner/guest/manifests/{digest}", evil)
    try:
        pinned = f"{front.host}/runner/guest:{image.IMAGE_VERSION}@{digest}"
        with pytest.raises(RunnerError, match="does not match its digest"):
            artifact_pull.pull(pinned, "x86_64")
        assert not bootable("x86_64")
        # The pin of a digest the registry does not have: refused naming the reference, cache unchanged.
        missing = f"{registry.host}/runner/guest@sha256:{'0' * 64}"
        with pytest.raises(VMError, match=f"cannot pull the guest image {missing}"):
            artifact_pull.pull(missing, "x86_64")
        assert not bootable("x86_64")
        # The honest registry with the same pin: accepted.
        assert artifact_pull.pull(f"{registry.host}/runner/guest:1@{digest}", "x86_64")["digest"] == digest
        assert bootable("x86_64")
    finally:
        front.close()


def test_a_guest_of_another_image_version_or_arch_is_refused(registry, caches, monkeypatch, tmp_path):
    publisher, user = caches
    monkeypatch.setattr(image, "IMAGE_VERSION", "99")
    monkeypatch.setattr(artifact, "IMAGE_VERSION", "99")
    fake_guest(publisher, "aarch64", version="99")
    future = f"{registry.host}/runner/guest:99"
    artifact_push.push(future, ["aarch64"])
    monkeypatch.undo()
    monkeypatch.setenv(image.CACHE_ENV, str(user))
    monkeypatch.setenv("RUNNER_CONFIG", str(tmp_path / "no-config.json"))
    with pytest.raises(VMError, match=f"guest image version 99 .*needs version {image.IMAGE_VERSION}") as info:
        artifact_pull.pull(future, "aarch64")
    assert "runner vm image build" in info.value.hint
    monkeypatch.setenv(image.CACHE_ENV, str(publisher))
    only_arm = f"{registry.host}/runner/guest:arm-only"
    artifact_push.push(only_arm, ["aarch64"])
    monkeypatch.setenv(image.CACHE_ENV, str(user))
    with pytest.raises(VMError, match=r"has no guest image for linux/amd64 \(it has: linux/arm64\)"):
        artifact_pull.pull(only_arm, "x86_64")
    assert not bootable("x86_64") and not bootable("aarch64")


def test_a_container_image_is_not_taken_for_a_guest(registry, store, caches, monkeypatch):
    from regtest_images import build_image
    from runner.images.push import push

    name = f"{registry.host}/library/app:1"
    build_image(store, name, [{"hello": b"hi\n"}])
    push(store, name)
    monkeypatch.setenv(image.CACHE_ENV, str(caches[1]))
    with pytest.raises(VMError, match="is not a runner guest image"):
        artifact_pull.pull(name, "x86_64")


def test_an_unreachable_registry_names_the_reference_and_how_to_build(caches, monkeypatch):
    from regtest_servers import free_port

    monkeypatch.setenv(image.CACHE_ENV, str(caches[1]))
    ref = f"127.0.0.1:{free_port()}/runner/guest:1"
    monkeypatch.setenv(artifact.ENV, ref)
    with pytest.raises(VMError) as info:
        artifact_pull.ensure("x86_64")
    assert info.value.message.startswith(f"cannot pull the guest image {ref} (from {artifact.ENV} environment")
    assert "runner vm image build" in info.value.hint
    assert not bootable("x86_64")


def test_the_config_file_names_the_guest_and_a_second_start_downloads_nothing(pushed, caches, monkeypatch,
                                                                              tmp_path):
    ref, digest = pushed
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"vm": {"image": ref}}))
    monkeypatch.setenv("RUNNER_CONFIG", str(config))
    lines = []
    arts = artifact_pull.ensure("x86_64", progress=artifact_pull.status_lines(lines.append))
    assert arts.kernel.is_file() and any(line.startswith(f"Pulling guest image {ref}") for line in lines)
    lines.clear()
    artifact_pull.ensure("x86_64", progress=artifact_pull.status_lines(lines.append))
    assert lines == []  # verified from the cache: no registry request, nothing said


def start_pull(ref: str, cache: Path, arch: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, **{image.CACHE_ENV: str(cache)})
    return subprocess.Popen([sys.executable, "-m", "runner", "vm", "image", "pull", "-q", "--arch", arch, ref],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_pull_halfway(registry, pushed, user: Path, start) -> tuple:
    """Pull the x86_64 guest through a proxy that holds its rootfs at half its size: ``start(ref)`` starts the
    pull (a Popen), which is SIGKILLed once exactly that half is on disk; nothing may be bootable then.
    Returns (proxy, the reference through it, the rootfs descriptor, the byte count kept); the proxy no longer
    stalls and has forgotten what it served; the caller closes it."""
    ref, digest = pushed
    client = RegistryClient(registry.host)
    entry = artifact.choose(client.get_manifest("runner/guest", digest).json(), "x86_64", ref)
    rootfs = client.get_manifest("runner/guest", entry["digest"]).json()["layers"][2]
    proxy = CountingProxy(registry.host)
    try:
        proxy.stall[rootfs["digest"]] = cut = rootfs["size"] // 2
        via = f"{proxy.host}/runner/guest:{image.IMAGE_VERSION}"
        partial = user / image.IMAGE_VERSION / ".download-x86_64/tmp" / ("partial-" + rootfs["digest"][7:])
        pull = start(via)
        try:
            assert wait_for(lambda: partial.exists() and partial.stat().st_size == cut, what="half the rootfs")
        finally:
            pull.send_signal(signal.SIGKILL)
            pull.communicate()
        assert not bootable("x86_64") and not (user / image.IMAGE_VERSION / "x86_64").exists()
        del proxy.stall[rootfs["digest"]]
        proxy.served.clear()
    except BaseException:
        proxy.close()
        raise
    return proxy, via, rootfs, cut


def test_a_killed_pull_leaves_nothing_bootable_and_the_next_start_resumes_it(registry, pushed, caches, monkeypatch):
    publisher, user = caches
    proxy, via, rootfs, cut = kill_pull_halfway(registry, pushed, user, lambda ref: start_pull(ref, user, "x86_64"))
    try:
        # The next machine start (what ensure() is) finds no bootable guest and completes the pull.
        monkeypatch.setenv(artifact.ENV, via)
        artifact_pull.ensure("x86_64")
        assert (rootfs["digest"], f"bytes={cut}-") in proxy.ranges
        assert proxy.served[rootfs["digest"]] == rootfs["size"] - cut  # resumed, not downloaded twice
        assert bootable("x86_64")
        assert cache_entries(user) == [".pull-x86_64.lock", "x86_64"]
        env = dict(os.environ, PYTHONPATH=REPO, **{image.CACHE_ENV: str(user)})
        listed = subprocess.run([sys.executable, "-m", "runner", "vm", "image", "ls", "--json"], check=True,
                                capture_output=True, env=env)
        rows = json.loads(listed.stdout)
        assert [(r["arch"], r["verified"], r["source"]) for r in rows] == [("x86_64", "yes", via)]
    finally:
        proxy.close()


def test_a_failure_while_unpacking_leaves_nothing_bootable_and_keeps_the_download(pushed, caches, monkeypatch):
    import errno

    ref, digest = pushed
    publisher, user = caches
    real = artifact_pull._gunzip
    calls = []

    def full_disk(src, dst, limit, what):
        calls.append(what)
        if len(calls) == 2:  # the second file: the first is complete in the unpack directory by now
            dst.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, limit, what)

    monkeypatch.setattr(artifact_pull, "_gunzip", full_disk)
    with pytest.raises(VMError, match="cannot store the guest image in .*: No space left on device"):
        artifact_pull.pull(ref, "x86_64")
    assert not bootable("x86_64")
    assert cache_entries(user) == [".download-x86_64", ".pull-x86_64.lock"]  # no unpack dir, download kept
    # A kill at the same point leaves an unpack directory: the next pull removes it before anything else.
    leftover = user / image.IMAGE_VERSION / ".unpack-x86_64-killed"
    leftover.mkdir()
    (leftover / "kernel").write_bytes(b"half")
    monkeypatch.setattr(artifact_pull, "_gunzip", real)
    result = artifact_pull.pull(ref, "x86_64")
    assert result["downloaded"] == 0  # every blob was still in the download store, verified
    assert bootable("x86_64") and cache_entries(user) == [".pull-x86_64.lock", "x86_64"]


def test_the_push_command_prints_the_digest_to_pin(pushed, caches):
    ref, digest = pushed
    publisher, _ = caches
    env = dict(os.environ, PYTHONPATH=REPO, **{image.CACHE_ENV: str(publisher)})
    proc = subprocess.run([sys.executable, "-m", "runner", "vm", "image", "push", ref], capture_output=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [f"pushed {ref}@{digest}",
                                                 f"pin it: RUNNER_GUEST_IMAGE={ref}@{digest}"]
    assert "Layer already exists" in proc.stderr.decode()  # same build, same blobs: nothing uploaded again
    bad = subprocess.run([sys.executable, "-m", "runner", "vm", "image", "push", f"{ref}@{digest}"],
                         capture_output=True, env=env, timeout=60)
    assert bad.returncode == 125 and bad.stderr.decode().startswith("Error: cannot push to ")
