"""Image routes: list, inspect, history, pull (``POST /images/create``), import, push, tag, delete, save, load,
prune.

Every route is one Backend call; the JSON shapes come from runner.engine.views. What this module adds is
Docker's HTTP manners: ``No such image: <ref>`` 404s (clients match that text), progress as a JSON stream
whose errors arrive in-band once the stream has begun (before the first byte they are plain HTTP errors, so
``docker run`` sees the 404 it pulls on), credentials from the ``X-Registry-Auth`` header (decoded here, never
logged), and Docker's 409 texts for ``rmi``.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import threading

from runner.api import streams
from runner.api.http import ApiError
from runner.api.router import route
from runner.errors import Conflict, ImageNotFound, RunnerError, UsageError


class LazyStream:
    """A response body that starts (200, chunked) with its first write, so an error before any output is
    still a plain HTTP error; :meth:`fail` reports a later one in-band as Docker does. Writes are serialised:
    a pull reports progress from one thread per layer."""

    def __init__(self, req, content_type: str = "application/json"):
        self._req = req
        self._type = content_type
        self._out = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._out is not None

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._out is None:
                self._out = self._req.stream(self._type)
            self._out.write(data)

    def event(self, obj: dict) -> None:
        self.write(streams.json_line(obj))

    def fail(self, exc: RunnerError) -> None:
        """An error after the stream began: ``{"errorDetail": {"message"}, "error"}``; before: re-raised."""
        if not self.started:
            raise exc
        self.event({"errorDetail": {"message": exc.message}, "error": exc.message})

    def close(self) -> None:
        with self._lock:
            if self._out is None:
                self._out = self._req.stream(self._type)
            self._out.close()


def not_found(ref: str) -> ApiError:
    return ApiError(404, f"No such image: {ref}")


def _call(ref: str, fn, *args, **kwargs):
    """A backend call whose ImageNotFound becomes Docker's ``No such image: <ref>``."""
    try:
        return fn(*args, **kwargs)
    except ImageNotFound as exc:
        raise not_found(ref) from exc


# ------------------------------------------------------------------------------------------------ credentials

def registry_auth(req, ref: str) -> dict | None:
    """``X-Registry-Auth`` (base64url JSON ``{"username","password","serveraddress"}`` or
    ``{"identitytoken"}``) as the engine's ``credentials`` for the registry of ``ref``; None without one."""
    header = req.headers.get("X-Registry-Auth")
    if not header:
        return None
    try:
        text = header.strip()
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise UsageError("invalid X-Registry-Auth header: not base64url JSON") from exc
    if not isinstance(data, dict):
        raise UsageError("invalid X-Registry-Auth header: not a JSON object")
    creds = {k: str(data[k]) for k in ("username", "password", "identitytoken")
             if isinstance(data.get(k), str) and data[k]}
    if not creds:
        return None  # the CLI sends an empty object for anonymous pulls
    from runner.images.reference import Reference
    try:
        registry = Reference.parse(ref).registry
    except UsageError:
        return None  # the engine reports the bad reference itself
    return {registry: creds}


# ------------------------------------------------------------------------------------------------ list, inspect

def _matches(summary: dict, filters: dict[str, list[str]]) -> bool:
    for value in filters.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid filter 'dangling={value}'")
        if (value.lower() in ("true", "1")) != (not summary["RepoTags"]):
            return False
    refs = filters.get("reference", [])
    if refs and not _matching_tags(summary, refs):
        return False
    labels = summary.get("Labels") or {}
    for want in filters.get("label", []):
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _matching_tags(summary: dict, patterns: list[str]) -> list[str]:
    return [tag for tag in summary["RepoTags"] if any(_ref_matches(tag, p) for p in patterns)]


def _ref_matches(tag: str, pattern: str) -> bool:
    """Docker's ``reference`` filter: a glob over ``name:tag``, or over the name alone when no tag is given."""
    name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    if ":" in pattern.rsplit("/", 1)[-1]:
        return fnmatch.fnmatchcase(tag, pattern)
    return fnmatch.fnmatchcase(name, pattern)


@route("GET", "/images/json")
def list_images(req) -> None:
    filters = req.filters()
    unknown = set(filters) - {"dangling", "reference", "label", "before", "since"}
    if unknown:
        raise UsageError(f"invalid filter '{sorted(unknown)[0]}'")
    images = req.backend.images()
    for key in ("before", "since"):  # images created before/since the named one
        for ref in filters.get(key, []):
            pivot = _call(ref, req.backend.image_inspect, ref)
            created = {i["Id"]: i["Created"] for i in images}.get(pivot["Id"], 0)
            images = [i for i in images if (i["Created"] < created if key == "before" else i["Created"] > created)]
    refs = filters.get("reference")
    req.reply([_only_matching(i, refs) if refs else i for i in images if _matches(i, filters)])


def _only_matching(summary: dict, patterns: list[str]) -> dict:
    """As dockerd: an image listed for a reference filter shows only the names (and their digests) that
    matched."""
    tags = _matching_tags(summary, patterns)
    repos = {t.rsplit(":", 1)[0] for t in tags}
    return {**summary, "RepoTags": tags,
            "RepoDigests": [d for d in summary.get("RepoDigests") or [] if d.split("@", 1)[0] in repos]}


@route("GET", "/images/{name*}/json")
def inspect_image(req) -> None:
    ref = req.params["name"]
    req.reply(_call(ref, req.backend.image_inspect, ref))


@route("GET", "/images/{name*}/history")
def image_history(req) -> None:
    ref = req.params["name"]
    req.reply(_call(ref, req.backend.image_history, ref))


# ------------------------------------------------------------------------------------------------ pull, import

def progress_event(event: dict) -> dict:
    """The engine's progress event ``{"id", "status", "current", "total"}`` in Docker's JSON-message shape."""
    status = event.get("status", "")
    if not event.get("id") and status.startswith(("Downloaded newer image", "Image is up to date")):
        status = "Status: " + status  # dockerd's words; runner's CLI adds the prefix when it prints
    out: dict = {"status": status}
    if "current" in event:
        out["progressDetail"] = {"current": int(event.get("current") or 0), "total": int(event.get("total") or 0)}
    elif event.get("id"):
        out["progressDetail"] = {}
    if event.get("id"):
        out["id"] = event["id"]
    return out


@route("POST", "/images/create")
def create_image(req) -> None:
    """``fromImage`` (+``tag``): pull; ``fromSrc=-``: import the body as a rootfs tar (``repo``, ``tag``,
    ``changes``)."""
    if req.arg("fromSrc") is not None:
        return _import(req)
    image = req.arg("fromImage")
    if not image:
        raise UsageError("either fromImage or fromSrc is required")
    tag = req.arg("tag") or ""
    if tag.startswith("sha256:"):
        ref = f"{image}@{tag}"
    elif tag and ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        ref = f"{image}:{tag}"
    else:
        ref = image
    out = LazyStream(req)
    try:
        req.backend.pull(ref, platform=req.arg("platform") or None, credentials=registry_auth(req, ref),
                         progress=lambda event: out.event(progress_event(event)))
    except ImageNotFound as exc:
        if not out.started:
            raise ApiError(404, f"pull access denied for {image}, repository does not exist or may require "
                                f"'docker login': {exc.message}") from exc
        out.fail(exc)
    except RunnerError as exc:
        out.fail(exc)
    out.close()


def _import(req) -> None:
    if req.arg("fromSrc") != "-":
        raise ApiError(501, "importing from a URL is not supported: send the tarball as the body (fromSrc=-)")
    repo, tag = req.arg("repo") or "", req.arg("tag") or ""
    name = f"{repo}:{tag}" if repo and tag else repo
    changes = list(req.query.get("changes", []))
    if not name:
        raise UsageError("an image name is needed to import", hint="give repo (and tag)")
    out = LazyStream(req)
    try:
        image_id = req.backend.import_image(req.body, name, changes)
    except RunnerError as exc:
        out.fail(exc)
    else:
        out.event({"status": image_id})
    out.close()


# ------------------------------------------------------------------------------------------------ push, tag, rm

@route("POST", "/images/{name*}/push")
def push_image(req) -> None:
    name = req.params["name"]
    tag = req.arg("tag") or ""
    ref = f"{name}:{tag}" if tag else name
    out = LazyStream(req)
    try:
        _call(ref, req.backend.image_inspect, ref)  # a missing image is a 404, not an in-band error
        digest = req.backend.push(ref, credentials=registry_auth(req, ref),
                                  progress=lambda event: out.event(progress_event(event)))
    except RunnerError as exc:
        out.fail(exc)
    else:
        out.event({"progressDetail": {}, "aux": {"Tag": tag or "latest", "Digest": digest}})
    out.close()


@route("POST", "/images/{name*}/tag")
def tag_image(req) -> None:
    source = req.params["name"]
    repo = req.arg("repo")
    if not repo:
        raise UsageError("repository name must have at least one component")
    tag = req.arg("tag") or ""
    _call(source, req.backend.tag, source, f"{repo}:{tag}" if tag else repo)
    req.reply_empty(201)


@route("DELETE", "/images/{name*}")
def delete_image(req) -> None:
    ref = req.params["name"]
    try:
        lines = _call(ref, req.backend.rmi, ref, force=req.flag("force"))
    except Conflict as exc:
        raise Conflict(_rmi_conflict(req, ref, exc)) from exc
    out = []
    for line in lines:
        kind, _, what = line.partition(": ")
        out.append({kind: what})
    req.reply(out)


def _rmi_conflict(req, ref: str, exc: Conflict) -> str:
    """Docker's 409 text for an image in use or one with several names."""
    if "several names" in exc.message:
        image = req.backend.image_inspect(ref)
        return (f"conflict: unable to delete {image['Id'].split(':', 1)[1][:12]} (must be forced) - image is "
                f"referenced in multiple repositories")
    image = req.backend.image_inspect(ref)
    users = [c for c in req.backend.ps(all=True) if c.get("ImageID") == image["Id"]]
    if users:
        return (f'conflict: unable to remove repository reference "{ref}" (must force) - container '
                f"{users[0]['Id'][:12]} is using its referenced image {image['Id'].split(':', 1)[1][:12]}")
    return exc.message


# ------------------------------------------------------------------------------------------------ save, load

def _save(req, refs: list[str]) -> None:
    for ref in refs:
        _call(ref, req.backend.image_inspect, ref)  # 404 before the archive begins
    out = LazyStream(req, "application/x-tar")
    # An error mid-archive propagates: the server then closes the connection without the final chunk, the
    # only way left to tell the client its archive is cut short.
    req.backend.save(refs, out)
    out.close()


@route("GET", "/images/get")
def save_images(req) -> None:
    refs = [r for r in req.query.get("names", []) if r]
    if not refs:
        raise UsageError("no image to save", hint="give names=IMAGE")
    _save(req, refs)


@route("GET", "/images/{name*}/get")
def save_image(req) -> None:
    _save(req, [req.params["name"]])


@route("POST", "/images/load")
def load_images(req) -> None:
    names = req.backend.load(req.body)
    req.flag("quiet")  # validated; Docker's quiet answer carries the same lines (the CLI prints them)
    out = LazyStream(req)
    for name in names:
        text = f"Loaded image ID: {name}" if name.startswith("sha256:") else f"Loaded image: {name}"
        out.event({"stream": text + "\n"})
    out.close()


# ------------------------------------------------------------------------------------------------ prune

@route("POST", "/images/prune")
def prune_images(req) -> None:
    filters = req.filters()
    unknown = set(filters) - {"dangling", "label", "until"}
    if unknown:
        raise UsageError(f"invalid filter '{sorted(unknown)[0]}'")
    dangling_only = all(v.lower() in ("true", "1") for v in filters.get("dangling", ["true"]))
    result = req.backend.image_prune(all=not dangling_only, labels=filters.get("label", []),
                                     until=_until(filters.get("until", [])))
    req.reply(result)


def _until(values: list[str]) -> float | None:
    """The ``until`` filter (a Unix time, an RFC 3339 time or a Go duration like ``10m``) as Unix seconds."""
    if not values:
        return None
    from runner.api.timefilter import parse_time
    return parse_time(values[-1])
