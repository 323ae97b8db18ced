"""A machine's CPU architecture (``runner vm start --arch``): chosen at creation, stored, refused when another
one is asked of an existing machine. No QEMU: the refusal happens before anything is launched."""

import json

import pytest

from runner.errors import Conflict, PlatformError, UsageError
from runner.vm import accel
from runner.vm.machine import Machine
from runner.vm.qemu_cmd import MachineConfig, normalize_arch


def other(arch: str) -> str:
    return "aarch64" if arch == "x86_64" else "x86_64"


def test_config_keeps_the_arch_and_reads_docker_spellings():
    config = MachineConfig(arch="aarch64")
    assert config.to_dict()["arch"] == "aarch64"
    assert MachineConfig.from_dict(config.to_dict()) == config
    assert MachineConfig.from_dict({"cpus": 1, "memory_mib": 512, "disk_size": "2G", "arch": "arm64"}).arch == "aarch64"
    assert MachineConfig.from_dict({"cpus": 1, "memory_mib": 512, "disk_size": "2G", "arch": "amd64"}).arch == "x86_64"
    assert "arch" not in MachineConfig().to_dict()  # older machines: no key, the host's architecture


def test_unknown_arch_is_refused():
    with pytest.raises(PlatformError, match="unsupported CPU architecture 'riscv64'"):
        normalize_arch("riscv64")
    with pytest.raises(UsageError, match="--arch"):
        MachineConfig(arch="sparc").validate()


def test_new_machine_takes_the_asked_arch_else_the_hosts(tmp_path):
    assert Machine("fresh", root=tmp_path).guest_arch == accel.host_arch()
    assert Machine("fresh", guest_arch="arm64", root=tmp_path).guest_arch == "aarch64"
    assert Machine("fresh", root=tmp_path).existing_arch() is None


def _created(tmp_path, name: str, arch: str | None) -> Machine:
    m = Machine(name, root=tmp_path)
    m.paths.dir.mkdir(parents=True)
    m.paths.config.write_text(json.dumps(MachineConfig(arch=arch).to_dict()))
    return m


def test_existing_machine_keeps_its_arch(tmp_path):
    arch = other(accel.host_arch())
    _created(tmp_path, "arm", arch)
    m = Machine("arm", root=tmp_path)  # a later CLI call: no --arch
    assert m.guest_arch == arch and m.existing_arch() == arch
    assert m.status()["guest_arch"] == arch


def test_machine_without_stored_arch_is_the_hosts(tmp_path):
    _created(tmp_path, "old", None)
    assert Machine("old", root=tmp_path).existing_arch() == accel.host_arch()


def test_start_with_another_arch_is_refused_before_anything_starts(tmp_path):
    host = accel.host_arch()
    m = _created(tmp_path, "default", host)
    with pytest.raises(Conflict) as info:
        Machine("default", root=tmp_path).start(arch=other(host), wait=False)
    assert info.value.message == f"machine 'default' is an {host} machine, not {other(host)}"
    assert f"runner vm start --name {other(host)} --arch {other(host)}" in info.value.hint
    assert not m.paths.run.exists() and not m.paths.data_disk.exists()
    assert json.loads(m.paths.config.read_text())["arch"] == host  # untouched
