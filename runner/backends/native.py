"""NativeBackend: the engine in this very process, for Linux hosts.

It adds nothing to the engine's behaviour: every operation is the Engine's own method. Its job is only to
construct the engine lazily (so ``runner --help`` imports no Linux-only code) and to report its abilities.
"""

from __future__ import annotations

import os
import sys

from runner.backends.base import Features
from runner.errors import NeedsRoot, PlatformError


class NativeBackend:
    name = "native"
    features = Features(bind_mounts=True, host_network=True, published_ports=True)

    def __init__(self, root: str | None = None):
        if not sys.platform.startswith("linux"):
            raise PlatformError(f"the native backend needs Linux; this host is {sys.platform}",
                                hint="use the VM backend: runner --backend vm ... (the default on this host)")
        if root is None and not os.environ.get("RUNNER_ROOT") and os.geteuid() != 0:
            # The default state root (/var/lib/runner) is root's, and containers need namespaces, mounts and
            # cgroups: checked here, before anything runs, so the CLI can re-run the whole command as root.
            raise NeedsRoot("the native backend needs root privileges",
                            hint="run it as root (sudo runner ...), or use the VM backend: runner --backend vm ...")
        from runner.engine.engine import Engine
        self._engine = Engine(root)

    def __getattr__(self, name: str):
        # Every Backend operation is the Engine's method of the same name (see runner.backends.base).
        return getattr(self._engine, name)

    def info(self) -> dict:
        data = self._engine.info()
        data["backend"] = self.name
        return data
