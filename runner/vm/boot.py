"""The boot plan: the one QEMU argv a machine's start runs, and whether it resumes a saved state. Pure.

Why apart from :mod:`runner.vm.machine`: deciding *what* to launch (argv, snapshot key, resume or cold boot)
is data in, data out, so it is unit-tested without QEMU; the machine only gathers the inputs (artifacts,
keys, accelerator) and runs the result. The argv is built once: resuming a saved state only appends
``-incoming`` (:func:`runner.vm.qemu_cmd.incoming_args`), and the snapshot key is the hash of the argv
without it (see :mod:`runner.vm.snapshot`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from runner.records import FrozenRecord
from runner.vm import snapshot
from runner.vm.qemu_cmd import Boot, MachineConfig, build_argv, incoming_args


class Plan(FrozenRecord):
    """``argv`` to run; ``boot`` as launched; ``snapshot``: the run record's snapshot fields (control socket,
    key, "resume" or "cold"), empty without the snapshot fast start."""

    _fields = ("argv", "boot", "snapshot")

    def __init__(self, argv: list[str], boot: Boot, snapshot: dict):
        self._init(argv=argv, boot=boot, snapshot=snapshot)


def plan(config: MachineConfig, host: tuple[str, str], guest_arch: str, accel: str, boot: Boot, qemu: str,
         state_inputs: dict[str, Any] | None = None,
         saved_state: Callable[[str], Any] = lambda key: None) -> Plan:
    """The launch of one boot. ``host`` is (os, arch); ``qemu`` the emulator's path (argv[0]).

    ``state_inputs`` None: no snapshot fast start. Otherwise ``boot.control`` is set and ``state_inputs`` are
    what the saved state depends on besides the argv (QEMU binary, image manifest, keys, agent version);
    ``saved_state(key)`` returns the saved state for that key, or None (then this boot saves one).
    """
    argv = build_argv(config, host[0], host[1], guest_arch, accel, boot)
    argv[0] = qemu
    if state_inputs is None:
        return Plan(argv, boot, {})
    key = snapshot.key(argv, boot.ssh_port, state_inputs)
    state = saved_state(key)
    fields = {"control": boot.control, "snapshot_key": key, "boot": "resume" if state else "cold"}
    if state:
        uri = snapshot.incoming_uri(state)
        boot = dataclasses.replace(boot, incoming=uri)
        argv = argv + incoming_args(uri)
    return Plan(argv, boot, fields)
