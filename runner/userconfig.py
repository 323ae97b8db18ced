"""The user's config file (JSON): where it is and reading one setting, for every host-side module.

Its own module so that readers at any layer (backend choice, the VM guest image reference) share one rule
for the path without importing each other: ``RUNNER_CONFIG`` wins, else platformdirs' config dir.
"""

from __future__ import annotations

import json
import os
import sys


def config_path() -> str:
    """The user's config file (platformdirs' config dir), overridable with RUNNER_CONFIG."""
    if os.environ.get("RUNNER_CONFIG"):
        return os.environ["RUNNER_CONFIG"]
    fast = _linux_config_dir()
    if fast is not None:
        return os.path.join(fast, "config.json")
    from platformdirs import user_config_dir
    return os.path.join(user_config_dir("runner"), "config.json")


def _linux_config_dir() -> str | None:
    """platformdirs' ``user_config_dir("runner")`` on Linux, without importing it (~20 ms, every call).

    Only the plain XDG cases that every platformdirs version answers alike: ``$XDG_CONFIG_HOME/runner`` when
    that is an absolute path, else ``$HOME/.config/runner`` with an absolute ``$HOME``. Anything unusual
    (a relative XDG_CONFIG_HOME, no HOME, Android) returns None and platformdirs decides.
    """
    env = os.environ
    if not sys.platform.startswith("linux") or "ANDROID_DATA" in env:
        return None
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg.strip():
        return os.path.join(xdg, "runner") if xdg.startswith("/") else None
    home = env.get("HOME", "")
    if not home.startswith("/"):
        return None
    return os.path.join(os.path.expanduser("~/.config"), "runner")


def read(key: str, dotted: tuple[str, str] | None = None) -> object:
    """The value of ``key`` (or of ``{dotted[0]: {dotted[1]: ...}}``) in the config file; None if unset/unreadable."""
    try:
        with open(config_path()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if key in data:
        return data[key]
    if dotted and isinstance(data.get(dotted[0]), dict):
        return data[dotted[0]].get(dotted[1])
    return None
