"""Facts recorded with every benchmark result: the host machine and OS, runner, the guest and accelerator.

Best effort: a fact that cannot be read is left out, never guessed. Readers of /proc, sysctl and
``--version`` outputs only; the backends' own facts come from ``runner info --format json`` (suite.py).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _out(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def cpu_model() -> str | None:
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    if m:
        return m.group(1).strip()
    if sys.platform == "darwin":
        return _out(["sysctl", "-n", "machdep.cpu.brand_string"]) or None
    return platform.processor() or None


def memory_bytes() -> int | None:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read("/proc/meminfo"), re.M)
    if m:
        return int(m.group(1)) * 1024
    if sys.platform == "darwin":
        value = _out(["sysctl", "-n", "hw.memsize"])
        return int(value) if value.isdigit() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def os_name() -> str:
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.M)
    return m.group(1) if m else platform.platform()


def first_line(text: str) -> str | None:
    return text.splitlines()[0].strip() if text.strip() else None


def host() -> dict:
    data = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "memory_bytes": memory_bytes(),
            "os": os_name(), "kernel": platform.release(), "arch": platform.machine(),
            "python": platform.python_version()}
    qemu = shutil.which("qemu-system-" + ("aarch64" if platform.machine() in ("arm64", "aarch64") else "x86_64"))
    if qemu:
        data["qemu"] = first_line(_out([qemu, "--version"]))
    try:
        load = os.getloadavg()
        data["loadavg_at_start"] = [round(x, 2) for x in load]
    except (OSError, AttributeError):
        pass
    return {k: v for k, v in data.items() if v is not None}


def runc_version(runc: str) -> str | None:
    return first_line(_out([runc, "--version"]))


def vm_image_version() -> str | None:
    try:
        from runner.vm.image import IMAGE_VERSION
    except Exception:  # noqa: BLE001 - a fact we do without
        return None
    return IMAGE_VERSION


def human_bytes(n: int | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return "?"
