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
