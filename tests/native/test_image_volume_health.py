"""An image's own VOLUME and HEALTHCHECK (config ``Volumes``/``Healthcheck``): an image made by rewriting the
default image's config in a `docker save` archive, then loaded, run and inspected."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from tests.helpers import cli, wait_for

pytestmark = pytest.mark.root
NAME = "localhost/vr-imgcfg:1"


def _image_with(root: str, tmp_path, **config) -> None:
    p = cli(["save", "localhost/busybox", "-o", str(tmp_path / "bb.tar")], root=root)
    assert p.returncode == 0, p.stderr.decode()
    with tarfile.open(tmp_path / "bb.tar") as src:
        manifest = json.load(src.extractfile("manifest.json"))[0]
        cfg = json.load(src.extractfile(manifest["Config"]))
        layers = {name: src.extractfile(name).read() for name in manifest["Layers"]}
    cfg["config"].update(config)
    raw = json.dumps(cfg).encode()
    cfg_name = hashlib.sha256(raw).hexdigest() + ".json"
    files = {cfg_name: raw, **layers,
             "manifest.json": json.dumps([{"Config": cfg_name, "Layers": manifest["Layers"],
                                           "RepoTags": [NAME]}]).encode()}
    with tarfile.open(tmp_path / "new.tar", "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    p = cli(["load", "-i", str(tmp_path / "new.tar")], root=root)
    assert p.returncode == 0, p.stderr.decode()


def test_image_volume_is_an_anonymous_volume_filled_from_the_image(native_root, tmp_path):
    _image_with(native_root, tmp_path, Volumes={"/etc": {}})
    before = set(cli(["volume", "ls", "-q"], root=native_root).stdout.split())
    try:
        p = cli(["run", "--name", "vr-imgvol", NAME, "sh", "-c", "cat /etc/passwd | head -1; echo new > /etc/x"],
                root=native_root)
        assert p.returncode == 0 and p.stdout.startswith(b"root:"), p.stderr.decode()
        info = json.loads(cli(["inspect", "vr-imgvol"], root=native_root).stdout)[0]
        (mount,) = [m for m in info["Mounts"] if m["Destination"] == "/etc"]
        assert mount["Type"] == "volume" and len(mount["Name"]) == 64
        assert info["Config"]["Volumes"] == {"/etc": {}}
        assert set(cli(["volume", "ls", "-q"], root=native_root).stdout.decode().split()) - \
            {v.decode() for v in before} == {mount["Name"]}
        # -v over the image's VOLUME path replaces the anonymous volume
        p = cli(["run", "--rm", "-v", "vr-etc2:/etc", NAME, "ls", "/etc"], root=native_root)
        assert b"passwd" in p.stdout
        assert cli(["rm", "-v", "vr-imgvol"], root=native_root).returncode == 0
        assert mount["Name"].encode() not in cli(["volume", "ls", "-q"], root=native_root).stdout
    finally:
        cli(["rm", "-f", "-v", "vr-imgvol"], root=native_root)
        cli(["volume", "rm", "-f", "vr-etc2"], root=native_root)
        cli(["rmi", NAME], root=native_root)


def test_image_healthcheck_runs_and_flags_override_it(native_root, tmp_path):
    _image_with(native_root, tmp_path, Healthcheck={"Test": ["CMD-SHELL", "test -e /tmp/up"],
                                                    "Interval": 200_000_000, "Retries": 1})
    try:
        assert cli(["run", "-d", "--name", "vr-imghc", NAME, "sleep", "300"], root=native_root).returncode == 0

        def status(name):
            return cli(["inspect", "-f", "{{.State.Health.Status}}", name], root=native_root).stdout.decode().strip()
        wait_for(lambda: status("vr-imghc") == "unhealthy", 30, "the image's check to fail")
        assert cli(["exec", "vr-imghc", "touch", "/tmp/up"], root=native_root).returncode == 0
        wait_for(lambda: status("vr-imghc") == "healthy", 30, "the image's check to pass")
        hc = json.loads(cli(["inspect", "-f", "{{json .Config.Healthcheck}}", "vr-imghc"], root=native_root).stdout)
        assert hc["Test"] == ["CMD-SHELL", "test -e /tmp/up"]
        # a flag replaces one field, the rest stays the image's; --no-healthcheck turns it off
        assert cli(["run", "-d", "--name", "vr-imghc2", "--health-cmd", "true", NAME, "sleep", "300"],
                   root=native_root).returncode == 0
        wait_for(lambda: status("vr-imghc2") == "healthy", 30, "the overriding check to pass")
        assert cli(["run", "-d", "--name", "vr-imghc3", "--no-healthcheck", NAME, "sleep", "300"],
                   root=native_root).returncode == 0
        assert status("vr-imghc3") == "<no value>"
        assert "(healthy)" in cli(["ps", "--filter", "name=vr-imghc2", "--format", "{{.Status}}"],
                                  root=native_root).stdout.decode()
    finally:
        for name in ("vr-imghc", "vr-imghc2", "vr-imghc3"):
            cli(["rm", "-f", name], root=native_root)
        cli(["rmi", NAME], root=native_root)
