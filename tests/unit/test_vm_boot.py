"""The boot plan is pure: the argv is built once, the snapshot key ignores the per-boot SSH port, and a resume
only appends ``-incoming`` to the argv the key was computed over."""

import dataclasses
from pathlib import Path

from runner.vm import boot, snapshot
from runner.vm.qemu_cmd import Boot, MachineConfig, build_argv

CONFIG = MachineConfig(cpus=2, memory_mib=2048, disk_size="20G")
HOST = ("linux", "x86_64")
INPUTS = {"qemu": "1:2", "manifest": "ab", "keys": ["k1", "k2"], "agent": "0123456789abcdef"}


def spec(**kw):
    base = dict(kernel="/img/kernel", initrd="/m/initrd.img", data_disk="/m/data.qcow2",
                serial_log="/m/serial.log", ready_log="/m/ready.log", qmp="/m/qmp.sock", ssh_port=40022,
                name="default", control="/m/control.sock")
    base.update(kw)
    return Boot(**base)


def test_without_snapshot_the_plan_is_the_argv():
    plan = boot.plan(CONFIG, HOST, "x86_64", "tcg", spec(control=None), "/usr/bin/qemu")
    expected = build_argv(CONFIG, *HOST, "x86_64", "tcg", spec(control=None))
    assert plan.argv == ["/usr/bin/qemu", *expected[1:]] and plan.snapshot == {}


def test_cold_boot_names_its_key_and_resume_appends_incoming():
    asked = []
    cold = boot.plan(CONFIG, HOST, "x86_64", "tcg", spec(), "/q", INPUTS, lambda key: asked.append(key))
    assert cold.snapshot["boot"] == "cold" and asked == [cold.snapshot["snapshot_key"]]
    assert "-incoming" not in cold.argv and cold.snapshot["control"] == "/m/control.sock"
    state = Path("/m/snapshot.state")
    warm = boot.plan(CONFIG, HOST, "x86_64", "tcg", spec(ssh_port=40100), "/q", INPUTS, lambda key: state)
    assert warm.snapshot["boot"] == "resume"
    assert warm.snapshot["snapshot_key"] == cold.snapshot["snapshot_key"]  # another SSH port: same state
    assert warm.argv[-2:] == ["-incoming", snapshot.incoming_uri(state)]
    assert warm.boot.incoming == snapshot.incoming_uri(state)
    # What QEMU runs is exactly the argv the builder makes for that boot.
    assert warm.argv[1:] == build_argv(CONFIG, *HOST, "x86_64", "tcg", warm.boot)[1:]


def test_key_changes_with_what_the_state_depends_on():
    def key(config=CONFIG, inputs=INPUTS, **kw):
        return boot.plan(config, HOST, "x86_64", "tcg", spec(**kw), "/q", inputs).snapshot["snapshot_key"]

    base = key()
    assert key(config=dataclasses.replace(CONFIG, memory_mib=1024)) != base
    assert key(inputs={**INPUTS, "agent": "fedcba9876543210"}) != base
    assert key(kernel="/img/other") != base
