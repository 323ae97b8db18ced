"""The guest image this runner release boots when nothing else is configured: pinned by digest.

A maintainer sets this once per release, after `runner vm image push` printed the index digest (README,
"Publishing a guest image"): ``"<registry>/<repository>:<image version>@sha256:<index digest>"``. Because
the digest is part of the reference, the pull fetches the index by digest and the registry client checks
the bytes against it, so a registry (or anyone in between) cannot hand out another guest. Empty in
development builds: there the guest is built locally (Linux) or named by ``RUNNER_GUEST_IMAGE`` / the
config file's ``vm.image``.
"""

GUEST_IMAGE = ""
