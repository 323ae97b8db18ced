"""Registry credentials in Docker's own ``config.json``, so ``docker login`` and ``runner login`` share them.

The file is ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``) in Docker's format:

* ``auths``: ``{"<server>": {"auth": base64("user:password")}}`` or ``{"identitytoken": ...}``;
* ``credsStore``: a helper for every server, ``credHelpers``: ``{"<server>": "<helper>"}``; a helper is
  the program ``docker-credential-<name>`` speaking ``get``/``store``/``erase`` on stdin/stdout.

Keys in ``auths`` are written by many tools as host names or URLs (``https://host/v1/``); lookups
compare host names after normalising them with the reference rules, so Docker Hub's legacy key
matches ``docker.io``. Everything else in the file is preserved on writes. The file is written
atomically with mode 0600 because it holds secrets, and no secret is ever put in a message.

This runs on the host (the CLI); the engine, possibly in the VM, only receives the mapping returned by
:func:`credentials_for`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

from runner.errors import RegistryError, UsageError
from runner.procs import write_atomic
from runner.images.reference import Reference

_HELPER_PREFIX = "docker-credential-"
# Helpers answer "get" for an unknown server with exit 1 and this text (docker-credential-helpers).
_HELPER_NOT_FOUND = "credentials not found"
# A helper's Username of "<token>" means Secret is an identity token, not a password.
_IDENTITY_TOKEN_USER = "<token>"


def config_path() -> Path:
    """The Docker client config file this user's tools share."""
    root = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(root) / "config.json"


def registry_of(key: str) -> str:
    """The registry name a config key refers to (``https://host:5000/v1/`` → ``host:5000``)."""
    text = key.strip()
    if "://" in text:
        text = urllib.parse.urlsplit(text).netloc or text
    host = text.split("/", 1)[0].lower()
    try:
        # The reference rules know Docker Hub's aliases; a dummy repository makes the host a registry.
        return Reference.parse(f"{host}/x").registry
    except UsageError:  # not a valid registry name: compare it as written
        return host


def _load() -> dict:
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"{path} is not valid JSON", hint="fix or remove the file") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{path} is not a JSON object", hint="fix or remove the file")
    return data


def _save(data: dict) -> None:
    """Write the config atomically, mode 0600 from the first byte (it holds secrets)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(str(path), (json.dumps(data, indent="\t") + "\n").encode(), 0o600)


def _find_key(auths: dict, registry: str) -> str | None:
    """The existing ``auths`` key for ``registry``: exact first, then by normalised host."""
    if registry in auths:
        return registry
    for key in auths:
        if registry_of(key) == registry:
            return key
    return None


def _helper_for(config: dict, registry: str) -> str | None:
    helpers = config.get("credHelpers") or {}
    for key, helper in helpers.items():
        if registry_of(key) == registry and helper:
            return str(helper)
    store = config.get("credsStore")
    return str(store) if store else None


def _run_helper(helper: str, action: str, payload: str) -> str:
    program = shutil.which(_HELPER_PREFIX + helper)
    if program is None:
        raise RegistryError(f"credential helper {_HELPER_PREFIX + helper} is not installed",
                            hint="install it, or remove credsStore/credHelpers from " + str(config_path()))
    try:
        done = subprocess.run([program, action], input=payload, capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryError(f"credential helper {helper} failed to run: {exc}") from exc
    if done.returncode != 0:
        # Helpers print the reason on stdout; it never holds the secret we sent on stdin.
        reason = (done.stdout or done.stderr).strip().splitlines()
        raise RegistryError(f"credential helper {helper} {action} failed: "
                            f"{reason[0] if reason else 'exit ' + str(done.returncode)}")
    return done.stdout


def get(registry: str) -> dict | None:
    """Stored credentials for ``registry``: ``{"username","password"}``, ``{"identitytoken"}`` or None."""
    config = _load()
    helper = _helper_for(config, registry)
    auths = config.get("auths") or {}
    key = _find_key(auths, registry) or registry
    if helper:
        try:
            out = _run_helper(helper, "get", key)
        except RegistryError as exc:
            if _HELPER_NOT_FOUND in exc.message.lower():
                return None
            raise
        try:
            reply = json.loads(out)
            username, secret = reply.get("Username", ""), reply.get("Secret", "")
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"credential helper {helper} returned unreadable output") from exc
        if not secret:
            return None
        if username == _IDENTITY_TOKEN_USER:
            return {"identitytoken": secret}
        return {"username": username, "password": secret}
    entry = auths.get(key) if isinstance(auths, dict) else None
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return {"identitytoken": str(entry["identitytoken"])}
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"the stored credentials for {registry} in {config_path()} are corrupt",
                                hint=f"runner login {registry}") from exc
        return {"username": username, "password": password}
    if entry.get("username"):
        return {"username": str(entry["username"]), "password": str(entry.get("password", ""))}
    return None


def credentials_for(*registries: str) -> dict:
    """The mapping handed to the engine's pull/push: registry → credentials, only for those that have some."""
    found = {}
    for registry in registries:
        creds = get(registry)
        if creds:
            found[registry] = creds
    return found


def store(registry: str, username: str, password: str) -> None:
    """Save credentials for ``registry``, through the configured helper if there is one."""
    config = _load()
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise RegistryError(f"{config_path()} has an invalid 'auths' entry", hint="fix or remove the file")
    key = _find_key(auths, registry) or registry
    helper = _helper_for(config, registry)
    if helper:
        _run_helper(helper, "store", json.dumps({"ServerURL": key, "Username": username, "Secret": password}))
        # Docker leaves an empty entry so `docker info`/tools see which registries are logged in.
        auths[key] = {}
    else:
        raw = f"{username}:{password}".encode("utf-8")
        auths[key] = {"auth": base64.b64encode(raw).decode("ascii")}
    _save(config)


def erase(registry: str) -> bool:
    """Forget credentials for ``registry``; False when there were none."""
    config = _load()
    auths = config.get("auths") or {}
    key = _find_key(auths, registry)
    helper = _helper_for(config, registry)
    erased = False
    if helper:
        try:
            _run_helper(helper, "erase", key or registry)
            erased = True
        except RegistryError as exc:
            if _HELPER_NOT_FOUND not in exc.message.lower():
                raise
    if key is not None:
        del auths[key]
        _save(config)
        erased = True
    return erased
