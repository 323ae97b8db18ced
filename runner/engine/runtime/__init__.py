"""Runtimes turn an OCI bundle (``config.json`` + prepared rootfs) into a running process.

The engine (``runner.engine``) owns state, images, logs and the shim; a runtime owns only process creation:
namespaces, mounts inside the container, cgroups, capabilities. The contract is the OCI runtime spec's
``config.json``, so the built-in Python runtime and an external one (runc) are interchangeable.
"""
