"""Boot a guest from image artifacts for tests and benchmarks: minimal QEMU argv, readiness, pinned SSH.

Deliberately small and test-only: the real machine lifecycle lives in runner/vm/machine.py. What this
helper shows is the guest contract in action (vmimage/README.md): config initramfs appended to the base
initrd, root disk serial ``runner-root``, data disk serial ``runner-data``, ``READY`` on the virtio-serial
port ``org.runner.ready``, then the ``SSH-`` banner, then paramiko with the pinned host key and RejectPolicy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.vm import initrd, keys
from runner.vm.image import Artifacts

QEMU = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
# qboot instead of SeaBIOS: direct kernel boot needs no BIOS services, and qboot reaches the kernel
# ~0.3-0.5 s sooner under TCG. It ships with QEMU (pc-bios/qboot.rom) on every host OS.
MACHINE = {"x86_64": ["-M", "q35,pit=off", "-cpu", "max", "-bios", "qboot.rom"],
           "aarch64": ["-M", "virt", "-cpu", "cortex-a72"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_argv(art: Artifacts, workdir: Path, initrd_path: Path, data_disk: Path | None, ssh_port: int,
              memory_mb: int = 1024, extra: tuple[str, ...] = ()) -> list[str]:
    """The argv this image is measured with (TCG, since KVM hangs on the test machines)."""
    argv = [QEMU[art.arch], "-accel", "tcg", *MACHINE[art.arch], "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(art.kernel), "-initrd", str(initrd_path), "-append", art.cmdline,
            "-serial", f"file:{workdir / 'serial.log'}",
            "-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-serial-pci",
            "-chardev", f"file,id=ready,path={workdir / 'ready.log'}",
            "-device", "virtserialport,chardev=ready,name=org.runner.ready",
            "-device", "virtio-rng-pci"]
    if art.rootfs is not None:
        argv += ["-drive", f"if=none,id=root,file={art.rootfs},format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=root,serial=runner-root"]
    if data_disk is not None:
        argv += ["-drive", f"if=none,id=data,file={data_disk},format=qcow2",
                 "-device", "virtio-blk-pci,drive=data,serial=runner-data"]
    return argv + list(extra)


def make_config(host_key: keys.KeyPair, client_key: keys.KeyPair, hostname: str = "runner") -> dict:
    return {"hostname": hostname, "ssh_host_key": host_key.private_pem,
            "authorized_keys": client_key.public + "\n", "agent_token": secrets.token_hex(32),
            "agent_port": 7070, "time": time.time(), "rng_seed": secrets.token_hex(64), "timezone": "UTC"}


@dataclass
class Guest:
    """A running guest. ``stop()`` always leaves no QEMU process behind."""

    arch: str
    workdir: Path
    proc: subprocess.Popen
    ssh_port: int
    client_key: keys.KeyPair
    host_key: keys.KeyPair
    config: dict
    timings: dict = field(default_factory=dict)

    def serial_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.workdir / "serial.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no serial log)"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """READY on the virtio-serial port, then an SSH banner (user-net accepts before the guest listens)."""
        t0 = self.timings["launch"]
        deadline = t0 + timeout
        ready = self.workdir / "ready.log"
        while not (ready.exists() and b"READY" in ready.read_bytes()):
            self._check_alive("before READY")
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest sent no READY in {timeout:.0f} s; serial log:\n{self.serial_tail()}")
            time.sleep(0.02)
        self.timings["ready"] = time.monotonic() - t0
        while True:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            self._check_alive("before the SSH banner")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SSH banner in {timeout:.0f} s; serial log:\n{self.serial_tail()}")
            time.sleep(0.05)
        self.timings["banner"] = time.monotonic() - t0

    def _check_alive(self, when: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with {self.proc.returncode} {when}; serial log:\n{self.serial_tail()}")

    def ssh(self, host_key_line: str | None = None):
        """A paramiko client that accepts only the pinned host key (``host_key_line`` overrides the pin)."""
        import paramiko

        line = host_key_line or self.host_key.public
        ktype, b64 = line.split()[:2]
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(f"[127.0.0.1]:{self.ssh_port}", ktype,
                                   paramiko.PKey.from_type_string(ktype, base64.b64decode(b64)))
        client.connect("127.0.0.1", port=self.ssh_port, username="root",
                       key_filename=str(self.client_key.private_path), look_for_keys=False,
                       allow_agent=False, timeout=30, banner_timeout=30, auth_timeout=30)
        return client

    def qmp(self, command: str) -> dict:
        """Send one QMP command (raw JSON over the unix socket; no qemu.qmp needed in tests)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rwb")
            json.loads(f.readline())
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(art: Artifacts, workdir: Path, data_disk: Path | None = None, config: dict | None = None,
          keys_dir: Path | None = None, extra: tuple[str, ...] = ()) -> Guest:
    """Launch QEMU for ``art`` (keys in ``keys_dir``, generated once and reused across boots)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("ready.log", "serial.log"):
        (workdir / stale).unlink(missing_ok=True)
    client_key, host_key = keys.ensure_keys(keys_dir or workdir / "keys", "test")
    boot_initrd = workdir / "initrd.img"
    config = config or make_config(host_key, client_key)
    initrd.combined_initrd(art.initrd, config, boot_initrd)
    port = free_port()
    argv = qemu_argv(art, workdir, boot_initrd, data_disk, port, extra=extra)
    log = open(workdir / "qemu.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    return Guest(art.arch, workdir, proc, port, client_key, host_key, config, timings={"launch": t0})


def make_data_disk(path: Path, size: str = "2G") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


@contextlib.contextmanager
def booted(art: Artifacts, workdir: Path, data_disk: Path | None = None, keys_dir: Path | None = None,
           timeout: float = 120.0, extra: tuple[str, ...] = ()):
    """Boot, wait until SSH works, yield (guest, paramiko client); always stop QEMU afterwards."""
    guest = start(art, workdir, data_disk, keys_dir=keys_dir, extra=extra)
    client = None
    try:
        guest.wait_ready(timeout)
        client = guest.ssh()
        guest.timings["ssh"] = time.monotonic() - guest.timings["launch"]
        yield guest, client
    finally:
        if client is not None:
            client.close()
        guest.stop()


def run(client, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run a shell command over SSH: (exit status, stdout, stderr)."""
    _, out, err = client.exec_command(command, timeout=timeout)
    status = out.channel.recv_exit_status()
    return status, out.read().decode(errors="replace"), err.read().decode(errors="replace")
