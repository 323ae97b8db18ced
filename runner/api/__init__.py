"""The Docker Engine API server (``runner serve``).

Docker's own clients (the docker CLI, compose, docker-py, testcontainers, IDEs) speak this HTTP API over a
unix socket; serving it makes runner usable by all of them unchanged. The server translates requests into
:class:`runner.backends.base.Backend` calls and answers with the JSON of :mod:`runner.engine.views`, so one
server drives the native engine on Linux and the VM's agent on macOS and Windows.

Layout: ``versions`` (which API versions and paths are accepted), ``router`` (route table), ``http`` (one
request: parsing, replies, streams, hijacking), ``streams`` (Docker's multiplexed stdout/stderr framing),
``server`` (listeners and lifecycle); one module per resource for the handlers (``system``, ...).
Host-only: the guest never imports this package.
"""
