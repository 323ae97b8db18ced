"""What a Windows host imports works without Unix-only modules (tests/winsim.py takes them away).

Proves on Linux: the registry client, the guest pull, the named-pipe listener, every CLI, Engine API server and
VM host module import in a process where fcntl, termios, pty, tty, grp, pwd and resource are unimportable, os
lacks pread, pwrite, fchmod, O_CLOEXEC, O_NOFOLLOW, O_DIRECTORY, O_PATH, getuid & co., and select, socket and
signal lack poll, AF_UNIX and SIGKILL & co. (tests/winsim.py). And that the simulation bites: it refuses
what Windows refuses (renaming an open file), so the guest-pull test under it can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO

WINSIM = os.path.join(REPO, "tests", "winsim.py")

PROBE = r"""
import importlib, json, os, pkgutil, sys
sys.path.insert(0, os.path.join(REPO, "tests"))
import winsim
winsim.install()
sys.path.pop(0)
import runner.cli
names = ["runner.images.registry", "runner.images.pull", "runner.vm.artifact_pull", "runner.vm.artifact_push",
         "runner.api.server", "runner.api.npipe", "runner.cli.main"]
names += ["runner.cli." + m.name for m in pkgutil.iter_modules(runner.cli.__path__)]
import runner.api, runner.vm
names += ["runner.api." + m.name for m in pkgutil.iter_modules(runner.api.__path__)]  # what `runner serve` loads
names += ["runner.vm." + m.name for m in pkgutil.iter_modules(runner.vm.__path__)]
names += ["runner.backends.vm", "runner.backends.agent", "runner.backends.select", "runner.agent.client"]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
try:
    import fcntl
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"names": names, "failed": failed, "fcntl_blocked": blocked,
                  "pread": hasattr(os, "pread"), "loaded_fcntl": "fcntl" in sys.modules and sys.modules["fcntl"] is not None}))
"""


def _probe(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", f"REPO = {REPO!r}\n" + code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_host_side_modules_import_without_unix_only_modules():
    result = _probe(PROBE)
    assert result["fcntl_blocked"] and not result["pread"] and not result["loaded_fcntl"]
    assert len(result["names"]) > 10
    assert result["failed"] == {}


def test_the_simulation_refuses_renaming_an_open_file_as_windows_does(tmp_path):
    code = rf"""
import json, os, sys
sys.path.insert(0, os.path.join(REPO, "tests"))
import winsim
winsim.install()
src, dst = {str(tmp_path / 'a')!r}, {str(tmp_path / 'b')!r}
open(dst, "w").close()
f = open(src, "w")
try:
    os.replace(src, dst)
    held = "renamed"
except PermissionError:
    held = "refused"
f.close()
try:
    os.rename(src, dst)
    over = "renamed"
except FileExistsError:
    over = "refused"
os.replace(src, dst)
print(json.dumps({{"held": held, "over": over, "after": os.path.exists(dst) and not os.path.exists(src)}}))
"""
    assert _probe(code) == {"held": "refused", "over": "refused", "after": True}
