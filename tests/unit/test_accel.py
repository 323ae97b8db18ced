"""Accelerator choice with a fake probe: candidates, the cache, the override, the TCG warning."""

import json

import pytest

from runner.errors import PlatformError
from runner.vm import accel
from runner.vm.accel import Verdict


class FakeProbe:
    def __init__(self, verdict):
        self.verdict, self.calls = verdict, []

    def __call__(self, name):
        self.calls.append(name)
        return self.verdict


@pytest.fixture
def kvm_device_ok(monkeypatch):
    monkeypatch.setattr(accel, "precheck", lambda a: None)


def choose(tmp_path, probe, warnings, **kw):
    kw.setdefault("os_name", "linux")
    kw.setdefault("arch", "x86_64")
    kw.setdefault("env", {})
    return accel.choose("x86_64", probe, qemu_version="QEMU 7.2", cache_path=tmp_path / "accel.json",
                        warn=warnings.append, **kw)


def test_working_kvm_is_chosen_and_cached(tmp_path, kvm_device_ok):
    probe, warnings = FakeProbe(Verdict(True)), []
    assert choose(tmp_path, probe, warnings).accel == "kvm"
    assert choose(tmp_path, probe, warnings).accel == "kvm"
    assert probe.calls == ["kvm"]  # second call answered from the cache
    assert warnings == []
    (entry,) = json.loads((tmp_path / "accel.json").read_text()).values()
    assert entry["ok"] is True


def test_failed_probe_falls_back_to_tcg_with_one_warning(tmp_path, kvm_device_ok):
    probe, warnings = FakeProbe(Verdict(False, "probe boot did not finish within 6 s")), []
    choice = choose(tmp_path, probe, warnings)
    assert choice.accel == "tcg" and "did not finish" in choice.why
    assert len(warnings) == 1 and "TCG" in warnings[0] and "slow" in warnings[0]
    assert choose(tmp_path, probe, []).accel == "tcg"
    assert probe.calls == ["kvm"]


def test_cache_key_changes_with_qemu_version(tmp_path, kvm_device_ok):
    probe = FakeProbe(Verdict(False, "hang"))
    choose(tmp_path, probe, [])
    accel.choose("x86_64", probe, qemu_version="QEMU 9.0", cache_path=tmp_path / "accel.json",
                 os_name="linux", arch="x86_64", env={}, warn=lambda s: None)
    assert probe.calls == ["kvm", "kvm"]


def test_precheck_failure_skips_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "precheck", lambda a: "/dev/kvm does not exist")
    probe, warnings = FakeProbe(Verdict(True)), []
    assert choose(tmp_path, probe, warnings).accel == "tcg"
    assert probe.calls == [] and "/dev/kvm does not exist" in warnings[0]


def test_cross_arch_guest_is_tcg_without_probe(tmp_path, kvm_device_ok):
    probe, warnings = FakeProbe(Verdict(True)), []
    choice = accel.choose("aarch64", probe, qemu_version="v", cache_path=tmp_path / "a.json", os_name="linux",
                          arch="x86_64", env={}, warn=warnings.append)
    assert choice.accel == "tcg" and probe.calls == []


@pytest.mark.parametrize("os_name,arch,expected", [
    ("darwin", "arm64", "hvf"), ("windows", "AMD64", "whpx"), ("linux", "aarch64", "kvm")])
def test_native_candidate_per_host(tmp_path, kvm_device_ok, os_name, arch, expected):
    probe = FakeProbe(Verdict(True))
    guest = "aarch64" if arch.lower() in ("arm64", "aarch64") else "x86_64"
    choice = accel.choose(guest, probe, qemu_version="v", cache_path=tmp_path / "a.json", os_name=os_name,
                          arch=arch, env={}, warn=lambda s: None)
    assert choice.accel == expected and probe.calls == [expected]


def test_env_override_skips_probe(tmp_path, kvm_device_ok):
    probe = FakeProbe(Verdict(True))
    assert choose(tmp_path, probe, [], env={"RUNNER_ACCEL": "tcg"}).accel == "tcg"
    assert choose(tmp_path, probe, [], env={"RUNNER_ACCEL": "KVM"}).accel == "kvm"
    assert probe.calls == []
    with pytest.raises(PlatformError, match="RUNNER_ACCEL"):
        choose(tmp_path, probe, [], env={"RUNNER_ACCEL": "xen"})


def test_corrupt_cache_is_ignored(tmp_path, kvm_device_ok):
    (tmp_path / "accel.json").write_text("not json")
    probe = FakeProbe(Verdict(True))
    assert choose(tmp_path, probe, []).accel == "kvm" and probe.calls == ["kvm"]


def test_precheck_kvm_needs_a_readable_writable_device(monkeypatch):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False)
    assert "does not exist" in accel.precheck("kvm")
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel.os, "access", lambda p, mode: False)
    assert "kvm" in accel.precheck("kvm")
    assert accel.precheck("tcg") is None
