"""--platform natively: an image of the other CPU architecture runs through the host's binfmt_misc emulator
(Debian's qemu-user-static registers it with the F flag), and a local image of another platform than the one
asked for is refused in one line (with --pull missing the CLI would pull the requested platform)."""

import json
import os

import pytest

from runner.images.platform import host_platform
from tests.helpers import cli, err, out
from tests.platform_images import UNAME, busybox_archive

pytestmark = pytest.mark.root
FOREIGN = "arm64" if host_platform().architecture == "amd64" else "amd64"
IMAGE = f"localhost/busybox-{FOREIGN}"


@pytest.fixture(scope="module")
def foreign_image(native_root, tmp_path_factory):
    tar = busybox_archive(FOREIGN, IMAGE, str(tmp_path_factory.mktemp("platform") / "image.tar"))
    proc = cli(["load", "-i", tar], root=native_root)
    assert proc.returncode == 0, err(proc)
    yield IMAGE
    cli(["rmi", "-f", IMAGE], root=native_root)


def test_foreign_image_runs_through_the_hosts_emulator(native_root, foreign_image):
    if not os.path.exists(f"/proc/sys/fs/binfmt_misc/qemu-{UNAME[FOREIGN]}"):
        pytest.fail(f"no binfmt_misc handler for {UNAME[FOREIGN]} on this host (scripts/setup installs "
                    "qemu-user-static)", pytrace=False)
    proc = cli(["run", "--rm", "--network", "none", "--platform", f"linux/{FOREIGN}", foreign_image, "uname", "-m"],
               root=native_root)
    assert proc.returncode == 0, err(proc)
    assert out(proc).strip() == UNAME[FOREIGN]
    inspect = cli(["inspect", foreign_image], root=native_root)
    assert json.loads(out(inspect))[0]["Architecture"] == FOREIGN


def test_another_platform_than_the_local_image_is_refused(native_root, foreign_image):
    native = host_platform().architecture
    proc = cli(["run", "--rm", "--pull", "never", "--platform", f"linux/{native}", foreign_image, "true"],
               root=native_root)
    assert proc.returncode == 125
    assert f"not the requested platform linux/{native}" in err(proc)
    assert cli(["ps", "-a", "-q"], root=native_root).stdout == b""  # nothing created


def test_invalid_platform_is_a_usage_error(native_root):
    proc = cli(["run", "--rm", "--platform", "linux/sparc", "localhost/busybox", "true"], root=native_root)
    assert proc.returncode == 125 and "unknown architecture 'sparc'" in err(proc)
