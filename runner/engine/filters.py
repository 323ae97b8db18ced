"""Docker's list filters (``--filter key=value``, the API's ``filters`` JSON), matched against list entries.

Why here: ``ps``, ``network ls`` and ``volume ls`` filter where the objects live (the engine, maybe in the VM),
as dockerd does, so the CLI and the Engine API server share one meaning. Docker's rules: values of the same
key are ORed, different keys are ANDed; ``label`` is the exception, each ``label=`` must hold (ANDed);
``label=k`` asks for the key, ``label=k=v`` for the value. Unknown keys are an error (Docker: "invalid filter").
The Engine API's ``GET /containers/json`` passes its filters here too (runner.api.containers): one meaning.

What dockerd does, and so this module (read in moby's ``daemon/list.go`` and ``api/types/filters``, checked
against a dockerd 20.10): ``name`` is a value equal to the name, or a regular expression searched in it, with
and without its leading ``/``; a value that is not a valid expression is skipped (it matches only exactly),
not an error. ``ancestor`` resolves each value as an image reference or ID (a missing image matches nothing)
and keeps the containers whose image is that image or one built on it (see :func:`ancestor_ids`), so
``ancestor=busybox`` follows ``busybox`` to whatever image it names now, not the text a container was
created with.
Standard library only (runs in the guest).
"""

from __future__ import annotations

import re

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
    """dockerd's ``Match``: a value equal to a name, or a regular expression found in it (a plain word is a
    substring test); a value that is no valid expression matches only exactly, as dockerd skips it."""
    for pattern in wanted:
        if pattern in names:
            return True
        try:
            rx = re.compile(pattern)
        except (re.error, RecursionError):
            continue
        if any(rx.search(n) for n in names):
            return True
    return False


def container_match(summary: dict, f: dict[str, list[str]], ancestors: set[str] | None = None) -> bool:
    """Does a container list entry (views.container_summary) pass the filters ``f``?

    ``ancestors``: for ``ancestor``, the image IDs it stands for (:func:`ancestor_ids`)."""
    if "label" in f and not labels_match(summary.get("Labels"), f["label"]):
        return False
    names = [n for name in summary.get("Names") or [] for n in {name, name.lstrip("/")}]
    if "name" in f and not _name_match(names, f["name"]):
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
    if "ancestor" in f and summary.get("ImageID") not in (ancestors or ()):
        return False
    return True


_HEX_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")


def ancestor_ids(store, refs: list[str]) -> set[str]:
    """The image IDs ``ancestor=REF`` values stand for in ``store`` (runner.images.store.Store): each
    resolved image (a name, a digest reference, an ID or an unambiguous ID prefix of any length, as dockerd
    takes) and every image built on it. A reference that names no image adds nothing (dockerd logs it)."""
    images = store.list(all=True)
    roots = []
    for ref in refs:
        try:
            roots.append(store.resolve(ref))
            continue
        except Exception:  # no such image, a malformed reference: then maybe a short ID
            pass
        short = _HEX_PREFIX.fullmatch(ref.strip())
        hits = {img.id: img for img in images if short and img.id.startswith("sha256:" + short.group(1))}
        if len(hits) == 1:
            roots.extend(hits.values())
    out = set()
    for root in roots:
        out.add(root.id)
        out.update(img.id for img in images if built_on(img.config, root.config))
    return out


def built_on(child: dict, parent: dict) -> bool:
    """Whether the image config ``child`` was made from ``parent`` (FROM, a build step, a commit): its layers
    and its history start with the parent's and it has more of either. dockerd's classic store follows the
    ``Parent`` a build records; a pulled image has none, so the layers and history say it here."""
    def layers(doc: dict) -> list:
        return list((doc.get("rootfs") or {}).get("diff_ids") or [])
    c_layers, p_layers = layers(child), layers(parent)
    c_hist, p_hist = list(child.get("history") or []), list(parent.get("history") or [])
    return (c_layers[:len(p_layers)] == p_layers and c_hist[:len(p_hist)] == p_hist
            and (len(c_layers) > len(p_layers) or len(c_hist) > len(p_hist)))


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
