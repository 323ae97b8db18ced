"""One real `runner bench --quick` on both backends: every workload gives a number or a reasoned "unavailable".

Needs root (native containers, runc) and QEMU with the guest image artifacts (``$RUNNER_VMIMAGE_DIR`` or the
normal cache). Uses its own VM state dir, so it never touches the user's machines, and stops its VM even
when the benchmark fails. Slow under TCG (a boot, a cold start, a few dozen container runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.bench.results import validate

pytestmark = [pytest.mark.vm, pytest.mark.root]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MACHINE = "bench-test"


@pytest.fixture(scope="module")
def vm_env(tmp_path_factory, guest_image):
    # Private native state and VM state: the bench must not touch the user's default root or machine.
    root = str(tmp_path_factory.mktemp("benchroot"))
    env = dict(os.environ, RUNNER_VM_STATE_DIR=str(tmp_path_factory.mktemp("benchvm")), RUNNER_ROOT=root,
               PYTHONPATH=REPO)
    try:
        yield env
    finally:
        subprocess.run([sys.executable, "-m", "runner", "--backend", "vm", "--machine", MACHINE, "vm", "stop"],
                       env=env, cwd=REPO, capture_output=True, timeout=300)
        subprocess.run([sys.executable, "-m", "runner", "--backend", "native", "network", "rm", "bridge"],
                       env=env, cwd=REPO, capture_output=True, timeout=60)


def test_quick_bench_on_both_backends(vm_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "runner", "--machine", MACHINE, "bench", "--quick",
                           "--backend", "both", "--json", "--output", str(out)],
                          env=vm_env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert validate(data) == []
    assert data["mode"] == "quick" and data["backends"] == ["native", "vm"]
    assert (data["environment"]["vm"].get("machine") or {}).get("accel"), data["environment"]["vm"]
    keys = [w["key"] for w in data["workloads"]]
    assert keys == ["start", "cpu", "fork", "memory", "io-rootfs", "io-bind", "net", "cold-start"]
    for w in data["workloads"]:
        expected = {"vm"} if w["key"] == "cold-start" else {"native", "vm"}
        assert expected <= set(w["measurements"]), w["key"]
        for name, m in w["measurements"].items():
            where = f"{w['key']} on {name}"
            if m["status"] == "ok":
                assert m["wall"]["n"] >= 1 and m["wall"]["median"] > 0, where
                if w["key"] not in ("start", "cold-start") and name != "runc":
                    assert m["inner"] and m["inner"]["median"] > 0, f"{where}: no in-container time"
            else:
                assert m["status"] == "unavailable" and len(m["reason"]) > 10, f"{where}: {m}"
        if w["key"] not in ("io-bind", "net"):  # those two may wait for 9p shares and hostfwd on the VM
            assert all(m["status"] == "ok" for n, m in w["measurements"].items() if n != "runc"), w
    native_ok = [w for w in data["workloads"] if w["measurements"].get("native", {}).get("status") == "ok"]
    assert len(native_ok) == 7
    assert (out / "results.json").exists() and (out / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (out / "ratios.svg").read_text()
    assert "<svg" in svg[:400] and svg.rstrip().endswith("</svg>")
    # no container of the benchmark is left behind, natively or in the VM
    for backend in ("native", "vm"):
        ps = subprocess.run([sys.executable, "-m", "runner", "--backend", backend, "--machine", MACHINE, "ps", "-a",
                             "--format", "json"], env=vm_env, cwd=REPO, capture_output=True, text=True)
        assert "runner-bench-" not in ps.stdout, (backend, ps.stdout)
