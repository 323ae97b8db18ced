"""System routes: ``/_ping``, ``/version``, ``/info``.

Clients call ``/_ping`` first to negotiate the API version (``Api-Version`` header) and to learn the builder
(``Builder-Version: 1``: the classic builder) and swarm state; ``/version`` and ``/info`` feed ``docker
version``/``docker info`` and many tools' start-up checks.
"""

from __future__ import annotations

import platform

from runner.api import versions
from runner.api.router import route

_PING_HEADERS = {"Builder-Version": "1", "Cache-Control": "no-cache, no-store, must-revalidate",
                 "Pragma": "no-cache", "Swarm": "inactive"}


@route("GET", "/_ping")
def ping(req) -> None:
    req.send(200, b"OK", "text/plain; charset=utf-8", _PING_HEADERS)


def _go_arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}.get(machine.lower(), machine)


@route("GET", "/version")
def version(req) -> None:
    info = req.backend.info()
    from runner import __version__
    arch = _go_arch(info.get("arch", platform.machine()))
    kernel = info.get("kernel", "")
    details = {"ApiVersion": versions.API_VERSION, "MinAPIVersion": versions.MIN_API_VERSION, "Os": "linux",
               "Arch": arch, "KernelVersion": kernel, "GitCommit": "", "GoVersion": "", "BuildTime": "",
               "Experimental": "false"}
    req.reply({
        "Platform": {"Name": f"runner {__version__} ({info.get('backend', 'native')})"},
        "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
        "Version": __version__, "ApiVersion": versions.API_VERSION, "MinAPIVersion": versions.MIN_API_VERSION,
        "GitCommit": "", "GoVersion": "", "Os": "linux", "Arch": arch, "KernelVersion": kernel,
        "BuildTime": "",
    })


@route("GET", "/info")
def info(req) -> None:
    from runner.engine.views import docker_info
    data = req.backend.info()
    req.reply(docker_info(data, req.backend.ps(all=True), req.backend.images()))


@route("GET", "/system/df")
def system_df(req) -> None:
    """Docker's ``system df`` answer, from the engine's own numbers (per-image rows from the image list)."""
    df = req.backend.system_df()
    images = req.backend.images()
    containers = req.backend.ps(all=True)
    for image in images:
        image["Containers"] = sum(1 for c in containers if c.get("ImageID") == image["Id"])
        image["SharedSize"] = 0
    cache = df.get("BuildCacheList") or []  # what the CLI's "Build Cache" row counts, record by record
    req.reply({"LayersSize": df["Images"]["Size"], "Images": images,
               "Containers": [{**c, "SizeRw": 0, "SizeRootFs": 0} for c in containers],
               "Volumes": df.get("VolumesList") or [], "BuildCache": cache,
               "BuilderSize": sum(c.get("Size", 0) for c in cache)})


@route("POST", "/auth")
def auth(req) -> None:
    """Check credentials against the registry, as ``docker login`` asks the daemon to; nothing is stored.

    Runs on the host, where the client's registry is reachable as the client named it (also for the VM)."""
    from runner.api.http import ApiError
    from runner.errors import RegistryError, UsageError
    from runner.images.credentials import registry_of
    from runner.images.registry import RegistryClient
    body = req.json()
    username, password = body.get("username"), body.get("password")
    token = body.get("identitytoken")
    if not isinstance(username, str) or not (isinstance(password, str) or isinstance(token, str)):
        raise UsageError("username and password are required")
    server = body.get("serveraddress") or "docker.io"
    registry = registry_of(str(server))
    creds = {"username": username, "password": password} if password else {"identitytoken": token}
    try:
        RegistryClient(registry, credentials=creds).check_login()
    except RegistryError as exc:
        if "401" in exc.message or "denied" in exc.message or "unauthorized" in exc.message.lower():
            raise ApiError(401, f"login attempt to {server} failed with status: 401 Unauthorized") from exc
        raise
    req.reply({"Status": "Login Succeeded", "IdentityToken": ""})
