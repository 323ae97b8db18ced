"""Pure parts of the VM backend's shares, port forwards and loopback-registry mapping (no VM needed)."""

from __future__ import annotations

import pytest

from runner.backends import vm as vmb
from runner.cli import render
from runner.errors import UsageError
from runner.vm import shares
from runner.vm.qemu_cmd import MachineConfig


def test_normalize_drops_nested_and_duplicate_dirs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert shares.normalize([str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path / "a")]) == [
        str((tmp_path / "a").resolve())]


@pytest.mark.parametrize("path", ["/", "/root", "/root/src", "/var", "/var/lib/runner/x", "/usr/local", "/etc"])
def test_dirs_that_would_hide_the_guests_own_are_refused(path):
    assert shares.reserved_reason(path)
    if path not in ("/root/src", "/var/lib/runner/x"):
        with pytest.raises(UsageError, match="cannot share"):
            shares.check_dirs([path])


@pytest.mark.parametrize("path", ["/tmp", "/home/alice", "/Users/alice", "/private", "/var/folders", "/srv/x"])
def test_ordinary_dirs_may_be_shared(path):
    assert shares.reserved_reason(path) is None


def test_defaults_never_include_reserved_dirs():
    assert all(shares.reserved_reason(d) is None for d in shares.default_dirs())
    assert shares.default_dirs("windows") == []


def test_guest_config_names_each_share_by_tag_and_hex_path_with_a_large_msize():
    from runner.vm import initrd

    cfg = shares.guest_config(["/tmp", "/home/a b", "/x/it's \u00e9"])
    words = cfg["shares"].split(" ")
    assert words[0] == f"{shares.tag_for('/tmp')}={b'/tmp'.hex()}"
    assert [bytes.fromhex(w.split("=")[1]).decode() for w in words] == ["/tmp", "/home/a b", "/x/it's \u00e9"]
    assert "msize=512000" in cfg["share_options"] and "trans=virtio" in cfg["share_options"]
    # init reads config.json with one sed: the values must pass its validation (no quotes, ASCII)
    base = {"hostname": "h", "ssh_host_key": "k", "authorized_keys": "a", "agent_token": "ab",
            "agent_port": 1, "time": 1.0, "rng_seed": "00" * 64, "timezone": "UTC"}
    initrd.validate_config({**base, **cfg})
    assert shares.guest_config([]) == {}
    assert len(shares.tag_for("/x" * 200)) <= 31


def test_failed_mounts_are_read_from_the_readiness_lines():
    text = f"WAITING\nSHARE-FAILED {b'/home/a b'.hex()}\nSHARE-FAILED zz\nREADY\n"
    assert shares.failed_mounts(text) == ["/home/a b", "'zz'"]
    assert shares.failed_mounts("WAITING\nREADY\n") == []


def test_find_share_and_error_names_the_shares():
    assert shares.find_share("/home/a/src", ["/home/a"]) == "/home/a"
    assert shares.find_share("/home/ab", ["/home/a"]) is None
    err = shares.not_shared_error("/srv/x", ["/home/a", "/tmp"], "default")
    assert "/home/a, /tmp" in err.message and "--share" in err.hint and "\n" not in err.message


def test_machine_config_keeps_shares_only_when_set():
    assert "shares" not in MachineConfig().to_dict()
    config = MachineConfig(shares=("/tmp", "/home/a"))
    assert MachineConfig.from_dict(config.to_dict()) == config


def test_loopback_registries_are_mapped_to_the_host_address():
    m = vmb._endpoints("127.0.0.1:5000/x/y:1")["endpoints"]
    assert m["127.0.0.1:5000"] == "10.0.2.2:5000" and m["localhost"] == "10.0.2.2"
    assert vmb._endpoints("localhost:5000/x")["endpoints"]["localhost:5000"] == "10.0.2.2:5000"
    assert vmb._endpoints("[::1]:5000/x")["endpoints"]["[::1]:5000"] == "10.0.2.2:5000"
    assert vmb._endpoints("docker.io/library/busybox") == {}
    assert vmb._endpoints("registry.example.com:5000/x") == {}


def test_endpoints_pass_the_agent_protocols_checks():
    from runner.agent import protocol as P

    args = {"ref": "127.0.0.1:5000/x", **vmb._endpoints("127.0.0.1:5000/x")}
    P.parse_request(P.Frame(P.REQUEST, 1, P.json.dumps(P.request_payload("pull", args, None)).encode()))
    bad = {"ref": "x", "endpoints": {"a b": "c"}}
    with pytest.raises(Exception, match="invalid argument 'endpoints'"):
        P.parse_request(P.Frame(P.REQUEST, 1, P.json.dumps(P.request_payload("push", bad, None)).encode()))


def test_registry_client_maps_the_connection_but_keeps_the_name():
    from runner.images.registry import RegistryClient

    c = RegistryClient("127.0.0.1:5000", endpoints={"127.0.0.1:5000": "10.0.2.2:5000", "127.0.0.1": "10.0.2.2"})
    assert c._mapped("http://127.0.0.1:5000/v2/") == "http://10.0.2.2:5000/v2/"
    assert c._mapped("http://127.0.0.1:6000/token") == "http://10.0.2.2:6000/token"
    assert c._mapped("https://auth.docker.io/token") == "https://auth.docker.io/token"
    assert c.registry == "127.0.0.1:5000" and c._plain_allowed


def test_ports_are_shown_with_the_host_side_numbers():
    table = {("c1", "tcp", 41000): 35000}
    assert vmb._ports_on_host({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41000"}]}, "c1", table) == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "35000"}]}
    listed = [{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 41000, "Type": "tcp"},
              {"IP": "127.0.0.1", "PrivatePort": 81, "PublicPort": 8080, "Type": "tcp"}]
    assert render.ports_text(vmb._port_list_on_host(listed, "c1", table)) == \
        "127.0.0.1:35000->80/tcp, 127.0.0.1:8080->81/tcp"
