"""Docker's list filters (``--filter key=value``, the API's ``filters`` JSON), matched against list entries.

Why here: ``ps``, ``network ls`` and ``volume ls`` filter where the objects live (the engine, maybe in the VM),
as dockerd does, so the CLI and the Engine API server share one meaning. Docker's rules: values of the same
key are ORed, different keys are ANDed; ``label`` is the exception, each ``label=`` must hold (ANDed);
``label=k`` asks for the key, ``label=k=v`` for the value. Unknown keys are an error (Docker: "invalid filter").
Standard library only (runs in the guest).
"""

from __future__ import annotations

from runner.errors import UsageError

CONTAINER_KEYS = ("label", "name", "status", "ancestor", "id", "volume", "network", "health", "exited")
NETWORK_KEYS = ("label", "name", "id", "driver", "type", "scope")
VOLUME_KEYS = ("label", "name", "dangling", "driver")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def normalize(filters: dict | None, keys: tuple[str, ...]) -> dict[str, list[str]]:
    """``{"label": ["a=b"], ...}`` (also Docker's older ``{"label": {"a=b": true}}``) checked against ``keys``."""
    out: dict[str, list[str]] = {}
    for key, values in (filters or {}).items():
        if key not in keys:
            raise UsageError(f"invalid filter '{key}'", hint=f"the filters here are: {', '.join(keys)}")
        if isinstance(values, dict):
            values = [v for v, on in values.items() if on]
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UsageError(f"invalid filter values for '{key}'")
        out[key] = list(values)
    if "status" in out:
        for value in out["status"]:
            if value not in STATUSES:
                raise UsageError(f"invalid filter 'status={value}'", hint=f"a status is one of {', '.join(STATUSES)}")
    return out


def parse_cli(items: list[str]) -> dict[str, list[str]]:
    """``--filter key=value`` options -> the API's filters dict."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, eq, value = str(item).partition("=")
        if not eq or not key:
            raise UsageError(f"bad format of filter (expected name=value): {item}")
        out.setdefault(key.strip().lower(), []).append(value)
    return out


def labels_match(labels: dict | None, wanted: list[str]) -> bool:
    """Every ``k`` / ``k=v`` of ``wanted`` holds for ``labels`` (ANDed, as Docker)."""
    labels = labels or {}
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _name_match(names: list[str], wanted: list[str]) -> bool:
    """Docker matches names as a regular expression search; a plain word is a substring test."""
    import re
    for pattern in wanted:
        try:
            rx = re.compile(pattern)
        except re.error:
            rx = re.compile(re.escape(pattern))
        if any(rx.search(n) for n in names):
            return True
    return False


def container_match(summary: dict, f: dict[str, list[str]], image_ids: dict | None = None) -> bool:
    """Does a container list entry (views.container_summary) pass the filters ``f``?

    ``image_ids``: for ``ancestor``, image reference -> image id as the engine resolves it (or absent)."""
    if "label" in f and not labels_match(summary.get("Labels"), f["label"]):
        return False
    if "name" in f and not _name_match([n.lstrip("/") for n in summary.get("Names") or []], f["name"]):
        return False
    if "id" in f and not any(summary["Id"].startswith(v) for v in f["id"]):
        return False
    if "status" in f and summary.get("State") not in f["status"]:
        return False
    if "exited" in f and not (summary.get("State") == "exited"
                              and str(summary.get("ExitCode", "")) in f["exited"]):
        return False
    if "health" in f and summary.get("Health", "none") not in f["health"]:
        return False
    if "network" in f and not set(f["network"]) & set((summary.get("NetworkSettings") or {}).get("Networks") or {}):
        return False
    if "volume" in f and not any(m.get("Name") in f["volume"] or m.get("Destination") in f["volume"]
                                 for m in summary.get("Mounts") or []):
        return False
    if "ancestor" in f:
        ids = image_ids or {}
        refs = {summary.get("Image"), summary.get("ImageID")}
        if not any(a in refs or (ids.get(a) and ids.get(a) == summary.get("ImageID"))
                   or summary.get("ImageID", "").startswith("sha256:" + a) for a in f["ancestor"]):
            return False
    return True


def named_match(entry: dict, f: dict[str, list[str]]) -> bool:
    """For network and volume list entries: ``label``, ``name``, ``id``, ``driver`` (``dangling`` apart)."""
    if "label" in f and not labels_match(entry.get("Labels"), f["label"]):
        return False
    if "name" in f and not _name_match([entry.get("Name", "")], f["name"]):
        return False
    if "id" in f and not any(str(entry.get("Id", "")).startswith(v) for v in f["id"]):
        return False
    if "driver" in f and entry.get("Driver") not in f["driver"]:
        return False
    if "type" in f and "custom" not in f["type"] and "builtin" not in f["type"]:
        return False
    return True
