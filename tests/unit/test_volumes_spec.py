"""Docker's mount syntaxes (-v, --mount, --tmpfs), restart policies, healthchecks and filters, as pure data."""

import pytest

from runner.engine import filters, health, restart
from runner.engine.runtime import oci
from runner.errors import UsageError
from runner.spec import ContainerSpec, Mount, parse_duration, restart_policy


def test_v_forms_bind_named_and_anonymous():
    assert Mount.parse("/h:/c:ro") == Mount("/h", "/c", True, "bind")
    assert Mount.parse("data:/c") == Mount("data", "/c", False, "volume")
    assert Mount.parse("my.vol_1-x:/c:ro,nocopy") == Mount("my.vol_1-x", "/c", True, "volume", nocopy=True)
    assert Mount.parse("/only/ctr") == Mount("", "/only/ctr", type="volume")


def test_mount_flag_csv():
    assert Mount.parse_mount("type=volume,source=v1,target=/d,readonly,volume-nocopy") == \
        Mount("v1", "/d", True, "volume", nocopy=True)
    assert Mount.parse_mount("type=bind,src=/h,dst=/c,ro=false") == Mount("/h", "/c", False, "bind")
    assert Mount.parse_mount("type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=1770") == \
        Mount("", "/t", type="tmpfs", size=1024 * 1024, mode=0o1770)
    assert Mount.parse_mount("target=/anon") == Mount("", "/anon", type="volume")  # Docker's default type
    for bad in ("type=nfs,target=/x", "type=bind,target=/x", "type=tmpfs,src=a,target=/x", "type=volume",
                "type=volume,target=/x,bogus=1", "type=tmpfs,target=/x,tmpfs-mode=99"):
        with pytest.raises(UsageError):
            Mount.parse_mount(bad)


def test_tmpfs_flag():
    assert Mount.parse_tmpfs("/run") == Mount("", "/run", type="tmpfs")
    assert Mount.parse_tmpfs("/run:rw,size=64m,mode=1777") == Mount("", "/run", type="tmpfs",
                                                                    size=64 << 20, mode=0o1777)
    with pytest.raises(UsageError):
        Mount.parse_tmpfs("/run:size=lots")


def test_spec_validation_of_mounts_restart_and_health():
    ok = ContainerSpec("img", mounts=[Mount("v1", "/d", type="volume")], restart="on-failure:3",
                       healthcheck={"Test": ["CMD-SHELL", "true"], "Interval": 10 ** 9})
    assert ContainerSpec.from_dict(ok.to_dict()).validate() == ok
    bad = [ContainerSpec("img", mounts=[Mount("../x", "/d", type="volume")]),
           ContainerSpec("img", mounts=[Mount("", "/", type="tmpfs")]),
           ContainerSpec("img", mounts=[Mount("", "/d/../e", type="tmpfs")]),
           ContainerSpec("img", mounts=[Mount("a1", "/d", type="volume"), Mount("", "/d/", type="tmpfs")]),
           ContainerSpec("img", restart="sometimes"), ContainerSpec("img", restart="always:3"),
           ContainerSpec("img", restart="always", auto_remove=True),
           ContainerSpec("img", healthcheck={"Test": ["SHELL", "x"]}),
           ContainerSpec("img", healthcheck={"Test": ["CMD"]}),
           ContainerSpec("img", healthcheck={"Interval": -1}),
           ContainerSpec("img", labels={"": "x"})]
    for spec in bad:
        with pytest.raises(UsageError):
            spec.validate()


def test_durations_and_policies():
    assert parse_duration("1m30s") == 90 * 10 ** 9
    assert parse_duration("250ms") == 250 * 10 ** 6
    assert parse_duration("0") == 0
    for bad in ("5", "1x", "", "s"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    assert restart_policy("no") == ("no", 0)
    assert restart_policy("on-failure:5") == ("on-failure", 5)
    assert restart_policy("unless-stopped") == ("unless-stopped", 0)


def test_oci_mounts_for_volumes_and_tmpfs():
    spec = ContainerSpec("img", command=["true"], mounts=[Mount("vol1", "/data", True, "volume"),
                                        Mount("", "/t", type="tmpfs", size=1 << 20, mode=0o1777)])
    cfg = oci.make_config(spec, {}, rootfs="/r", container_id="c", hostname="h", cgroups_path="x",
                          volumes_root="/var/lib/runner/volumes")
    mine = {m["destination"]: m for m in cfg["mounts"] if m["destination"] in ("/data", "/t")}
    assert mine["/data"] == {"destination": "/data", "type": "bind", "source": "/var/lib/runner/volumes/vol1/_data",
                             "options": ["rbind", "rprivate", "ro"]}
    assert mine["/t"]["type"] == "tmpfs" and "size=1048576" in mine["/t"]["options"] and \
        "mode=1777" in mine["/t"]["options"] and "noexec" in mine["/t"]["options"]


class _Rec:
    def __init__(self, restart_text, count=0, manual=False):
        self.spec = {"restart": restart_text}
        self.extra = {"restart_count": count, **({"manual_stop": True} if manual else {})}


def test_restart_decisions():
    assert restart.next_delay(_Rec("no"), 1, 1, 0) is None
    assert restart.next_delay(_Rec("always"), 0, 1, 0) == restart.FIRST_DELAY
    assert restart.next_delay(_Rec("always"), 0, 1, 0.4) == 0.8  # doubles
    assert restart.next_delay(_Rec("always"), 0, 30, 0.4) == restart.FIRST_DELAY  # a long run resets it
    assert restart.next_delay(_Rec("always"), 0, 1, 50) == restart.MAX_DELAY
    assert restart.next_delay(_Rec("always", manual=True), 137, 1, 0) is None  # stopped by its user
    assert restart.next_delay(_Rec("on-failure"), 0, 1, 0) is None
    assert restart.next_delay(_Rec("on-failure:2", count=1), 1, 1, 0) is not None
    assert restart.next_delay(_Rec("on-failure:2", count=2), 1, 1, 0) is None
    assert restart.next_delay(_Rec("unless-stopped"), 0, 1, 0) is not None
    assert restart.wanted_at_start(_Rec("always", manual=True))
    assert not restart.wanted_at_start(_Rec("unless-stopped", manual=True))
    assert restart.wanted_at_start(_Rec("unless-stopped"))
    assert not restart.wanted_at_start(_Rec("on-failure"))


def test_health_judge_and_commands():
    h = {"Status": "starting", "FailingStreak": 0}
    assert health.judge(h, 1, True, 3)["Status"] == "starting"  # start period: failures do not count
    assert health.judge(h, 1, True, 3)["FailingStreak"] == 0
    h = health.judge(h, 1, False, 2)
    assert (h["Status"], h["FailingStreak"]) == ("starting", 1)
    h = health.judge(h, 1, False, 2)
    assert (h["Status"], h["FailingStreak"]) == ("unhealthy", 2)
    h = health.judge(h, 0, False, 2)
    assert (h["Status"], h["FailingStreak"]) == ("healthy", 0)
    assert health.command_of(["CMD-SHELL", "curl -f x || exit 1"]) == ["/bin/sh", "-c", "curl -f x || exit 1"]
    assert health.command_of(["CMD", "true", "x"]) == ["true", "x"]
    assert health.settings({"Interval": 2 * 10 ** 9, "Retries": 0}) == (2.0, 30.0, 3, 0.0)


def test_filters():
    entry = {"Id": "abc123", "Names": ["/web-1"], "Labels": {"a": "1", "b": ""}, "State": "running",
             "Image": "localhost/busybox", "ImageID": "sha256:ff00", "Health": "healthy",
             "Mounts": [{"Name": "v1", "Destination": "/d"}], "NetworkSettings": {"Networks": {"bridge": {}}}}

    def match(**f):
        return filters.container_match(entry, filters.normalize(f, filters.CONTAINER_KEYS), {"sha256:ff00"})
    assert match(label=["a"]) and match(label=["a=1", "b"]) and not match(label=["a=1", "c"])
    assert not match(label=["a=2"])
    assert match(name=["web"]) and match(name=["^web-1$"]) and not match(name=["db"])
    assert match(status=["exited", "running"]) and not match(status=["exited"])
    assert match(id=["abc"]) and not match(id=["abd"])
    assert match(ancestor=["localhost/busybox"])  # the engine resolved it to the entry's image (ancestor_ids)
    assert match(volume=["v1"]) and match(network=["bridge"]) and match(health=["healthy"])
    assert match(label=["a"], name=["web"]) and not match(label=["a"], name=["db"])  # keys ANDed
    with pytest.raises(UsageError):
        filters.normalize({"colour": ["red"]}, filters.CONTAINER_KEYS)
    with pytest.raises(UsageError):
        filters.normalize({"status": ["sleepy"]}, filters.CONTAINER_KEYS)
    assert filters.parse_cli(["label=a=b", "label=c", "name=x"]) == {"label": ["a=b", "c"], "name": ["x"]}
    with pytest.raises(UsageError):
        filters.parse_cli(["novalue"])
    assert filters.normalize({"label": {"a=1": True}}, filters.VOLUME_KEYS) == {"label": ["a=1"]}
    assert filters.named_match({"Name": "v1", "Labels": {"k": "v"}}, {"label": ["k=v"], "name": ["v"]})


def test_relative_v_sources_are_paths_from_here(tmp_path, monkeypatch):
    from runner.cli.runopts import parse_mounts
    monkeypatch.chdir(tmp_path)
    assert parse_mounts(["./data:/d:ro", ".:/all", "named:/n"]) == [
        Mount(str(tmp_path / "data"), "/d", True), Mount(str(tmp_path), "/all"), Mount("named", "/n", type="volume")]


def test_api_forms_for_the_api_server():
    from runner.spec import restart_text
    assert Mount.from_api({"Type": "volume", "Source": "v1", "Target": "/d", "ReadOnly": True,
                           "VolumeOptions": {"NoCopy": True}}) == Mount("v1", "/d", True, "volume", nocopy=True)
    assert Mount.from_api({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 0o1777}}) == \
        Mount("", "/t", type="tmpfs", size=1024, mode=0o1777)
    assert Mount.from_api({"Type": "bind", "Source": "/h", "Target": "/c"}) == Mount("/h", "/c")
    for bad in ({"Type": "npipe", "Target": "/x"}, {"Type": "bind", "Source": "rel", "Target": "/x"},
                {"Type": "volume", "Target": "x"}, "nope"):
        with pytest.raises(UsageError):
            Mount.from_api(bad)
    assert restart_text({"Name": "on-failure", "MaximumRetryCount": 3}) == "on-failure:3"
    assert restart_text({"Name": "", "MaximumRetryCount": 0}) == "no" and restart_text(None) == "no"
    assert restart_text({"Name": "unless-stopped"}) == "unless-stopped"
    with pytest.raises(UsageError):
        restart_text({"Name": "sometimes"})
