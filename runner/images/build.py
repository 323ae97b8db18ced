"""``runner build``'s engine side: a context tar and options in, an image ID out, progress as Docker's JSON events.

One entry point (:func:`build`) for every caller: the engine's ``build`` method, natively, in the VM's guest
(the agent streams the context tar from the host) and behind the Engine API's ``POST /build``, which passes
the client's tar stream and forwards the events. The context is unpacked into a private temporary directory of
the store (validated like a layer), the Dockerfile read from it, and the steps run by
runner.images.builder / runner.images.steps; the directory is removed whatever happens. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from runner.images.builder import Builder, check_options
from runner.images.context import unpack_context
from runner.images.steps import run_step


def build(store, stream, options: dict, progress, run, base) -> str:
    """Build from the context tar ``stream``; returns the image ID. ``run`` runs a RUN step's container and
    ``base`` resolves FROM images (see :class:`runner.images.builder.Builder`)."""
    opts = check_options(options)
    context = tempfile.mkdtemp(prefix="build-", dir=os.path.join(store.root, "tmp"))
    try:
        os.chmod(context, 0o700)
        unpack_context(stream, context)
        return Builder(store, context, opts, progress, run, base, run_step).build()
    finally:
        shutil.rmtree(context, ignore_errors=True)
