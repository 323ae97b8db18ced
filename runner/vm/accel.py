"""Choosing the accelerator: HVF on macOS, WHPX on Windows, KVM on Linux, TCG when none works.

A device node or a sysctl saying "supported" is not proof: on this project's CI hosts /dev/kvm opens fine but
KVM guests hang after the kernel decompressor (broken nested virtualisation), or QEMU aborts setting an MSR.
So a hardware accelerator is used only after a *probe boot* succeeded: the real guest kernel is booted with
that accelerator and a short timeout (see :func:`runner.vm.qemu_cmd.build_probe_argv`). The verdict is cached
in ``<state>/accel.json``, keyed by accelerator, guest arch, host kernel and QEMU version, so the probe costs
once per host upgrade, not once per start.

``RUNNER_ACCEL=kvm|hvf|whpx|tcg`` forces a choice without probing (to debug, or when the probe is wrong).
Falling back to TCG prints one warning line: everything works, just several times slower.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.errors import PlatformError
from runner.vm import layout
from runner.vm.qemu_cmd import ACCELS, NATIVE_ACCEL, build_probe_argv, normalize_arch, qemu_binary

ACCEL_ENV = "RUNNER_ACCEL"
PROBE_TIMEOUT = 6.0  # a working KVM/HVF boots the kernel to its root-mount panic in well under a second
PROBE_MARKER = "Linux version"


@dataclass(frozen=True)
class Verdict:
    """Whether an accelerator can run the guest here, and why not if it cannot."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Choice:
    """The accelerator picked for a boot, and how it was decided (shown by `runner vm status`)."""

    accel: str
    why: str


Probe = Callable[[str], Verdict]


def host_os() -> str:
    """``linux``, ``darwin`` or ``windows``."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "darwin"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    raise PlatformError(f"unsupported host OS {sys.platform!r}")


def host_arch() -> str:
    return normalize_arch(platform.machine())


def candidates(os_name: str, arch: str, guest_arch: str) -> list[str]:
    """Accelerators worth trying, best first. Hardware acceleration only runs guests of the host's arch."""
    if normalize_arch(arch) == normalize_arch(guest_arch):
        return [NATIVE_ACCEL[os_name], "tcg"]
    return ["tcg"]


def precheck(accel: str) -> str | None:
    """A cheap reason why ``accel`` certainly cannot work (None: worth a probe boot)."""
    if accel == "kvm":
        if not os.path.exists("/dev/kvm"):
            return "/dev/kvm does not exist"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "/dev/kvm is not readable and writable by this user (add yourself to the 'kvm' group)"
    if accel == "hvf":
        try:
            out = subprocess.run(["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"sysctl kern.hv_support failed: {exc}"
        if out != "1":
            return "the Hypervisor framework is not supported on this Mac (kern.hv_support != 1)"
    return None


def cache_key(accel: str, guest_arch: str, qemu_version: str) -> str:
    """A verdict holds until the host kernel or QEMU changes (either can fix or break an accelerator)."""
    return "|".join([accel, normalize_arch(guest_arch), platform.system(), platform.release(),
                     platform.version(), qemu_version])


def load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_verdict(path: Path, key: str, verdict: Verdict) -> None:
    data = load_cache(path)
    data[key] = {"ok": verdict.ok, "reason": verdict.reason, "checked_at": time.time()}
    layout.ensure_private_dir(path.parent)
    layout.write_private(path, json.dumps(data, indent=2, sort_keys=True))


def choose(guest_arch: str, probe: Probe, *, qemu_version: str, cache_path: Path | None = None,
           os_name: str | None = None, arch: str | None = None, env: dict | None = None,
           warn: Callable[[str], None] | None = None) -> Choice:
    """Pick the accelerator for ``guest_arch``: the override, else the first candidate whose probe passed.

    ``probe`` boots the guest with one accelerator and returns its Verdict; it is only called on a cache
    miss. ``warn`` receives the one-line TCG warning (the CLI prints it; dropped without a callback).
    """
    env = os.environ if env is None else env
    os_name = os_name or host_os()
    arch = arch or host_arch()
    warn = warn or (lambda line: None)
    forced = env.get(ACCEL_ENV, "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise PlatformError(f"{ACCEL_ENV}={forced} is not an accelerator",
                                hint=f"use one of {', '.join(ACCELS)}")
        return Choice(forced, f"forced by {ACCEL_ENV}")
    cache_path = cache_path or layout.accel_cache_path()
    reasons = []
    for accel in candidates(os_name, arch, guest_arch):
        if accel == "tcg":
            break
        reason = precheck(accel)
        if reason is None:
            key = cache_key(accel, guest_arch, qemu_version)
            cached = load_cache(cache_path).get(key)
            if isinstance(cached, dict) and "ok" in cached:
                verdict = Verdict(bool(cached["ok"]), str(cached.get("reason", "")))
            else:
                verdict = probe(accel)
                store_verdict(cache_path, key, verdict)
            if verdict.ok:
                return Choice(accel, "probe boot succeeded")
            reason = verdict.reason
        reasons.append(f"{accel}: {reason}")
    why = "; ".join(reasons) or f"no hardware accelerator runs {normalize_arch(guest_arch)} guests on this host"
    warn(tcg_warning(why))
    return Choice("tcg", why)


def tcg_warning(why: str) -> str:
    """The one TCG warning line: said when a machine starts and by ``runner info`` / ``vm status``, never by
    every command that merely uses a running machine."""
    return f"no hardware acceleration ({why}); the VM runs under TCG emulation and will be slow"


def host_tsc_khz(cpuinfo: str | None = None, cpufreq: bool | None = None) -> int | None:
    """The host's TSC rate in kHz when it can be read off ``/proc/cpuinfo`` (a Linux x86_64 host without a
    cpufreq driver: CI runners and other VMs, where "cpu MHz" is the kernel's calibrated clock, whole MHz so
    that the saved VM state's key stays stable), else None. An x86_64 guest's TSC ticks at this rate under
    TCG (see :func:`runner.vm.qemu_cmd.machine_type` and ``tsc_early_khz``)."""
    if cpuinfo is None:
        if not sys.platform.startswith("linux") or host_arch() != "x86_64":
            return None
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    if cpufreq is None:
        cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq").exists()
    if cpufreq:  # "cpu MHz" is then the current, varying clock, not the TSC's
        return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                mhz = round(float(value))
            except ValueError:
                return None
            return mhz * 1000 if 100 <= mhz <= 10000 else None
    return None


def find_qemu(guest_arch: str, os_name: str | None = None) -> str:
    """The QEMU system emulator for ``guest_arch`` on PATH, or a PlatformError saying how to install it."""
    name = qemu_binary(guest_arch, os_name or host_os())
    path = shutil.which(name)
    if not path:
        raise PlatformError(f"{name} was not found on PATH",
                            hint="install QEMU (macOS: brew install qemu; Debian/Ubuntu: apt install "
                                 "qemu-system-x86 or qemu-system-arm; Windows: qemu.org/download)")
    return path


def qemu_version(qemu: str) -> str:
    """QEMU's version line, part of the cache key."""
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PlatformError(f"cannot run {qemu} --version: {exc}") from exc
    return out.splitlines()[0].strip() if out else "unknown"


def probe_boot(accel: str, *, qemu: str, guest_arch: str, kernel: str,
               timeout: float = PROBE_TIMEOUT, os_name: str | None = None) -> Verdict:
    """Boot ``kernel`` under ``accel`` (no initrd, no disks) and report whether it got through its init.

    Success: QEMU exits on its own (the root-mount panic plus ``panic=-1 -no-reboot``) within ``timeout`` and
    the console shows the kernel banner. A hang is killed at the deadline; an early QEMU exit without the
    banner (e.g. KVM failing to set an MSR) is reported with QEMU's own last error line.
    """
    with tempfile.TemporaryDirectory(prefix="runner-accel-probe-") as tmp:
        serial = os.path.join(tmp, "serial.log")
        argv = [qemu, *build_probe_argv(os_name or host_os(), guest_arch, accel, kernel, serial)[1:]]
        with open(os.path.join(tmp, "qemu.log"), "w+b") as errlog:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return Verdict(False, f"probe boot did not finish within {timeout:g} s")
            errlog.seek(0)
            errors = [ln for ln in errlog.read().decode(errors="replace").splitlines() if ln.strip()]
        console = Path(serial).read_text(errors="replace") if os.path.exists(serial) else ""
    if PROBE_MARKER in console:
        return Verdict(True)
    detail = errors[0] if errors else f"exit status {proc.returncode}"
    return Verdict(False, f"probe boot failed: {detail}")
