"""Pure parts of the runtime: config.json generation (Docker rules), user lookup, cgroup parsing and values.

No root, no namespaces: these run on every OS (the few that need Linux's O_PATH are marked).
"""

from __future__ import annotations

import os
import sys

import pytest

from runner.engine.runtime import caps, cgroups, oci
from runner.errors import ContainerStartError
from runner.spec import ContainerSpec, ExecSpec, Limits, Mount

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (O_PATH, dir_fd)")


def _cfg(spec=None, image=None, **kw):
    spec = spec or ContainerSpec(image="busybox")
    args = dict(rootfs="/r", container_id="abc", hostname="abc123", etc_files={}, cgroups_path="/runner/abc",
                uid=0, gid=0, additional_gids=[], nofile=4096)
    args.update(kw)
    return oci.make_config(spec, image if image is not None else {"Cmd": ["sh"]}, **args)


# ------------------------------------------------------------------------------------------------ args

@pytest.mark.parametrize("entry, cmd, image, expected", [
    (None, None, {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/ep", "a"]),
    (None, ["b"], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/ep", "b"]),
    (["/x"], None, {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/x"]),        # --entrypoint clears the image Cmd
    (["/x"], ["y"], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/x", "y"]),
    ([], ["y"], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["y"]),            # --entrypoint "" resets it
    (None, None, {"Cmd": ["sh"]}, ["sh"]),
    (None, ["ls", "-l"], {"config": {"Cmd": ["sh"]}}, ["ls", "-l"]),       # whole image config accepted too
])
def test_args_follow_docker(entry, cmd, image, expected):
    spec = ContainerSpec(image="i", entrypoint=entry, command=cmd)
    assert _cfg(spec, image)["process"]["args"] == expected


def test_no_command_is_an_error():
    with pytest.raises(ContainerStartError, match="no command"):
        _cfg(ContainerSpec(image="i"), {})


# ------------------------------------------------------------------------------------------------ process

def test_env_order_and_overrides():
    spec = ContainerSpec(image="i", tty=True, env=["FOO=user", "NEW=1", "NOVALUE"])
    env = _cfg(spec, {"Cmd": ["sh"], "Env": ["PATH=/img/bin", "FOO=image"]})["process"]["env"]
    assert env == ["PATH=/img/bin", "HOSTNAME=abc123", "TERM=xterm", "FOO=user", "NEW=1", "HOME=/root"]


def test_env_defaults_without_image_env():
    env = _cfg()["process"]["env"]
    assert env[0] == f"PATH={oci.DEFAULT_PATH}"
    assert "TERM=xterm" not in env
    assert env[-1] == "HOME=/root"
    assert _cfg(uid=1000)["process"]["env"][-1] == "HOME=/"
    assert _cfg(uid=1000, home="/home/u")["process"]["env"][-1] == "HOME=/home/u"


def test_cwd_user_terminal_rlimits_caps():
    p = _cfg(ContainerSpec(image="i", command=["x"]), {"WorkingDir": "/app"}, uid=1000, gid=100,
             additional_gids=[5, 6])["process"]
    assert p["cwd"] == "/app"
    assert p["terminal"] is False
    assert p["user"] == {"uid": 1000, "gid": 100, "additionalGids": [5, 6]}
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    assert p["noNewPrivileges"] is True
    c = p["capabilities"]
    assert c["bounding"] == c["effective"] == c["permitted"] == caps.DOCKER_DEFAULT_CAPS
    assert c["inheritable"] == c["ambient"] == []
    assert caps.mask(c["bounding"]) == 0xA80425FB
    assert _cfg(ContainerSpec(image="i", command=["x"], workdir="/w"), {"WorkingDir": "/app"})["process"]["cwd"] == "/w"
    assert _cfg()["process"]["cwd"] == "/"


def test_caps_names_and_masks():
    assert len(caps.DOCKER_DEFAULT_CAPS) == 14
    assert caps.names(caps.mask(["CAP_KILL", "chown", "CAP_BOGUS"])) == ["CAP_CHOWN", "CAP_KILL"]
    assert caps.CAP_NUMBERS["CAP_CHECKPOINT_RESTORE"] == 40


# ------------------------------------------------------------------------------------------------ root, mounts

def test_root_and_default_mounts():
    cfg = _cfg(ContainerSpec(image="i", command=["x"], read_only=True))
    assert cfg["ociVersion"] == "1.0.2"
    assert cfg["root"] == {"path": "/r", "readonly": True}
    assert cfg["hostname"] == "abc123"
    dests = [m["destination"] for m in cfg["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    by = {m["destination"]: m for m in cfg["mounts"]}
    assert "newinstance" in by["/dev/pts"]["options"] and "ptmxmode=0666" in by["/dev/pts"]["options"]
    assert "size=67108864" in by["/dev/shm"]["options"]
    assert "ro" in by["/sys"]["options"] and "ro" in by["/sys/fs/cgroup"]["options"]
    assert by["/sys/fs/cgroup"]["type"] == "cgroup"


def test_etc_files_and_user_mounts_sorted_by_depth():
    """All by depth (a volume on /etc must not hide /etc/hosts); at equal depth the user's mount comes later,
    so a user's -v on /etc/hosts wins over runner's own."""
    spec = ContainerSpec(image="i", command=["x"], mounts=[Mount("/h/deep", "/a/b/c"), Mount("/h/top", "/a", True),
                                                            Mount("/h/hosts", "/etc/hosts")])
    cfg = _cfg(spec, etc_files={"/etc/hosts": "/state/hosts", "/etc/resolv.conf": "/state/resolv"})
    tail = cfg["mounts"][7:]
    assert [(m["destination"], m["source"]) for m in tail] == [
        ("/a", "/h/top"), ("/etc/hosts", "/state/hosts"), ("/etc/resolv.conf", "/state/resolv"),
        ("/etc/hosts", "/h/hosts"), ("/a/b/c", "/h/deep")]
    assert tail[1] == {"destination": "/etc/hosts", "type": "bind", "source": "/state/hosts",
                       "options": ["rbind", "rprivate"]}
    assert tail[0]["options"] == ["rbind", "rprivate", "ro"]
    assert "ro" not in tail[4]["options"]
    spec = ContainerSpec(image="i", command=["x"], mounts=[Mount("etcvol", "/etc", type="volume")])
    dests = [m["destination"] for m in _cfg(spec, etc_files={"/etc/hosts": "/s/h"})["mounts"][7:]]
    assert dests == ["/etc", "/etc/hosts"]


def test_masked_and_readonly_paths():
    lin = _cfg()["linux"]
    assert set(lin["maskedPaths"]) == {
        "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
    assert lin["readonlyPaths"] == ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


# ------------------------------------------------------------------------------------------------ linux

@pytest.mark.parametrize("network, has_net", [("none", True), ("bridge", True), ("host", False)])
def test_namespaces(network, has_net):
    types = [n["type"] for n in _cfg(ContainerSpec(image="i", command=["x"], network=network))["linux"]["namespaces"]]
    assert {"pid", "ipc", "uts", "mount", "cgroup"} <= set(types)
    assert ("network" in types) is has_net


def test_resources():
    spec = ContainerSpec(image="i", command=["x"], limits=Limits(memory=32 << 20, cpus=0.5, pids=20))
    lin = _cfg(spec)["linux"]
    assert lin["cgroupsPath"] == "/runner/abc"
    res = lin["resources"]
    assert res["memory"] == {"limit": 32 << 20, "swap": 32 << 20}
    assert res["cpu"] == {"quota": 50000, "period": 100000}
    assert res["pids"] == {"limit": 20}
    assert res["devices"][0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in res["devices"]
    assert "memory" not in _cfg()["linux"]["resources"]


def test_config_is_json_serialisable_and_deterministic():
    import json
    a, b = _cfg(), _cfg()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_exec_process():
    base = _cfg(ContainerSpec(image="i", command=["x"], env=["A=1"]), {"WorkingDir": "/app"})
    p = oci.exec_process(ExecSpec(["sh", "-c", "id"], env=["A=2", "B=3"], tty=True), base, 1000, 1000, [7])
    assert p["args"] == ["sh", "-c", "id"]
    assert p["cwd"] == "/app"
    assert p["terminal"] is True
    assert "A=2" in p["env"] and "B=3" in p["env"] and "TERM=xterm" in p["env"] and "A=1" not in p["env"]
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [7]}
    assert p["capabilities"] == base["process"]["capabilities"]
    assert p["noNewPrivileges"] is True
    assert oci.exec_process(ExecSpec(["ls"], workdir="/tmp"), base, 0, 0)["cwd"] == "/tmp"


# ------------------------------------------------------------------------------------------------ users

@pytest.fixture
def image_root(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n"
                                "app:x:1000:1000::/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nwww:x:33:\napp:x:1000:\nstaff:x:50:app,www\naudio:x:29:app\n")
    return tmp_path


@linux_only
@pytest.mark.parametrize("user, expected", [
    (None, (0, 0, [])),
    ("root", (0, 0, [])),
    ("app", (1000, 1000, [50, 29])),
    ("1000", (1000, 1000, [50, 29])),
    ("app:staff", (1000, 50, [])),
    ("app:33", (1000, 33, [])),
    ("4242", (4242, 0, [])),          # numeric uid without passwd entry: gid 0, like Docker
    ("4242:4343", (4242, 4343, [])),
])
def test_resolve_user(image_root, user, expected):
    assert oci.resolve_user(user, str(image_root)) == expected


@linux_only
def test_resolve_user_errors(image_root):
    with pytest.raises(ContainerStartError, match="unable to find user nobody"):
        oci.resolve_user("nobody", str(image_root))
    with pytest.raises(ContainerStartError, match="unable to find group wheel"):
        oci.resolve_user("app:wheel", str(image_root))
    assert oci.home_dir(1000, str(image_root)) == "/home/app"
    assert oci.home_dir(5, str(image_root)) == "/"


@linux_only
def test_resolve_user_never_reads_outside_rootfs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink(str(outside / "passwd"), root / "etc" / "passwd")    # absolute link: resolves inside root
    with pytest.raises(ContainerStartError):
        oci.resolve_user("evil", str(root))
    os.unlink(root / "etc" / "passwd")
    os.symlink("../../outside/passwd", root / "etc" / "passwd")     # relative link climbing out: clamped at /
    with pytest.raises(ContainerStartError):
        oci.resolve_user("evil", str(root))
    (root / "etc" / "real").write_text("ok:x:7:7::/:/bin/sh\n")
    os.unlink(root / "etc" / "passwd")
    os.symlink("/etc/./real", root / "etc" / "passwd")              # a link inside root is followed
    assert oci.resolve_user("ok", str(root)) == (7, 7, [])


@linux_only
def test_open_in_root_creates_targets_inside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/", root / "up")
    fd = oci.open_in_root(str(root), "/up/../up/new/dir", os.O_PATH, create="dir")
    os.close(fd)
    assert (root / "new" / "dir").is_dir()
    fd = oci.open_in_root(str(root), "/up/etc/file", os.O_PATH, create="file")
    os.close(fd)
    assert (root / "etc" / "file").is_file()
    with pytest.raises(NotADirectoryError):
        oci.open_in_root(str(root), "/etc/file/x", os.O_PATH, create="dir")


# ------------------------------------------------------------------------------------------------ cgroups

HYBRID_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

DEBIAN_V1_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,pids
"""

V2_MOUNTINFO = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_hybrid_host_is_v1_and_ignores_the_unified_mount():
    mounts = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    layout = cgroups.choose_layout(mounts, {"/sys/fs/cgroup/unified": ("hugetlb",)})
    assert layout.version == 1
    assert [h.mountpoint.rsplit("/", 1)[1] for h in layout.hierarchies] == ["cpu", "memory", "devices", "pids"]
    assert cgroups.dirs_for(layout, "/runner/abc")[1] == "/sys/fs/cgroup/memory/runner/abc"


def test_comounted_and_escaped_v1_hierarchies():
    mounts = cgroups.parse_mountinfo(DEBIAN_V1_MOUNTINFO)
    assert mounts[0].controllers == ("cpu", "cpuacct") and mounts[0].options == "cpu,cpuacct"
    assert mounts[2].mountpoint == "/sys/fs/cgroup/my dir"
    layout = cgroups.choose_layout(mounts, {})
    assert len(layout.hierarchies) == 3


def test_pure_v2_with_controllers():
    layout = cgroups.choose_layout(cgroups.parse_mountinfo(V2_MOUNTINFO),
                                   {"/sys/fs/cgroup": ("cpuset", "cpu", "io", "memory", "pids")})
    assert layout.version == 2
    assert cgroups.dirs_for(layout, "/runner/x") == ["/sys/fs/cgroup/runner/x"]
    with pytest.raises(ContainerStartError):
        cgroups.dirs_for(layout, "/runner/../../etc")


def test_parse_proc_cgroup():
    text = "9:name=systemd:/\n4:memory:/process_api/165e\n2:cpu,cpuacct:/x\n0::/\n"
    got = cgroups.parse_proc_cgroup(text)
    assert got["memory"] == "/process_api/165e" and got["cpuacct"] == "/x" and got[""] == "/"
    assert got["name=systemd"] == "/"


def test_limit_values():
    res = {"memory": {"limit": 33554432, "swap": 33554432}, "cpu": {"quota": 50000, "period": 100000},
           "pids": {"limit": 20}, "devices": [{"allow": False, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 136, "minor": None,
                                              "access": "rwm"}]}
    assert cgroups.v2_files(res) == [("memory.max", "33554432"), ("memory.swap.max", "0"),
                                     ("cpu.max", "50000 100000"), ("pids.max", "20")]
    v1 = cgroups.v1_files(res)
    assert v1[:5] == [("memory", "memory.limit_in_bytes", "33554432", True),
                      ("memory", "memory.memsw.limit_in_bytes", "33554432", False),
                      ("cpu", "cpu.cfs_period_us", "100000", True),
                      ("cpu", "cpu.cfs_quota_us", "50000", True),
                      ("pids", "pids.max", "20", True)]
    assert v1[5:] == [("devices", "devices.deny", "a", True), ("devices", "devices.allow", "c 1:3 rwm", True),
                      ("devices", "devices.allow", "c 136:* rwm", True)]
    assert cgroups.v2_files({"pids": {"limit": -1}}) == [("pids.max", "max")]
    assert cgroups.v2_files({}) == []


def test_oom_counters_parse():
    assert cgroups.parse_flat_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")["oom_kill"] == 1
    assert cgroups.parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")["oom_kill"] == 0


@linux_only
def test_mount_option_parsing():
    from runner.engine.runtime import builtin, linux
    flags, prop, data = builtin.parse_mount_options(["nosuid", "noexec", "newinstance", "ptmxmode=0666", "rbind",
                                                     "rprivate", "ro", "rw"])
    assert flags == linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_BIND | linux.MS_REC
    assert prop == linux.MS_PRIVATE | linux.MS_REC
    assert data == "newinstance,ptmxmode=0666"
