"""A docker context named ``runner`` pointing at ``runner serve``, as Colima and Docker Desktop offer theirs, so
``docker --context runner ps`` and ``docker context use runner`` work without DOCKER_HOST.

Written as the docker CLI stores contexts (its context store, which docker-py reads too): the directory
``$DOCKER_CONFIG`` (default ``~/.docker``) holds ``contexts/meta/<sha256 hex of the name>/meta.json``::

    {"Name": "runner", "Metadata": {"Description": "..."},
     "Endpoints": {"docker": {"Host": "unix:///run/runner/docker.sock", "SkipTLSVerify": false}}}

TLS material would live under ``contexts/tls/<same id>/``; runner serves no TLS, so there is none. Which
context is in use is the CLI's ``currentContext`` in ``config.json`` (``docker context use`` writes it); a
removal that takes away the context in use clears that key, as ``docker context rm --force`` does, so the CLI
falls back to its default instead of failing on a missing context. A context of that name that runner did not
write (another description) is never overwritten or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from runner.errors import Conflict, UsageError

NAME = "runner"
DESCRIPTION = "runner serve: the Docker Engine API of runner"


def config_dir(env: dict | None = None) -> Path:
    """The docker CLI's configuration directory: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    env = os.environ if env is None else env
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")


def meta_file(name: str, directory: Path) -> Path:
    return directory / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the docker context {path}: {exc}",
                         hint="remove it with `docker context rm`") from exc
    return data if isinstance(data, dict) else {}


def _ours(meta: dict) -> bool:
    return (meta.get("Metadata") or {}).get("Description") == DESCRIPTION


def write(host: str, directory: Path, name: str = NAME) -> Path:
    """Create or update the context ``name`` for ``host`` (a ``unix://``, ``tcp://`` or ``npipe://`` URL)."""
    path = meta_file(name, directory)
    existing = _read(path)
    if existing is not None and not _ours(existing):
        raise Conflict(f"a docker context named {name!r} exists and was not made by runner ({path})",
                       hint=f"remove it first: docker context rm {name}")
    from runner.procs import write_atomic

    meta = {"Name": name, "Metadata": {"Description": DESCRIPTION},
            "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(meta), mode=0o644)
    return path


def remove(directory: Path, name: str = NAME) -> tuple[bool, bool]:
    """Remove the context ``name`` if runner wrote it: (removed, it was the current context and is no more)."""
    path = meta_file(name, directory)
    existing = _read(path)
    if existing is None:
        return False, False
    if not _ours(existing):
        raise Conflict(f"the docker context {name!r} was not made by runner ({path}); leaving it alone",
                       hint=f"docker context rm {name}")
    shutil.rmtree(path.parent)
    return True, _forget_current(directory / "config.json", name)


def _forget_current(config: Path, name: str) -> bool:
    """Clear ``currentContext`` in the CLI's config.json when it names ``name``; every other key is kept."""
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False  # no config (or not ours to repair): the CLI then uses its default anyway
    if not isinstance(data, dict) or data.get("currentContext") != name:
        return False
    from runner.procs import write_atomic

    del data["currentContext"]
    mode = config.stat().st_mode & 0o777
    write_atomic(config, json.dumps(data, indent="\t"), mode=mode)
    return True
