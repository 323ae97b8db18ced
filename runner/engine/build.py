"""The engine's side of an image build: RUN steps as real containers of this engine.

runner.images.build knows what a Dockerfile means; what it needs from the engine is exactly two things, given
here: FROM images resolved as ``run`` resolves them (the offline default image is made on demand), and a
container per RUN step, created and started through :meth:`Engine.create`/:meth:`Engine.start` like any
other (namespaces, cgroups, seccomp, the network the build asked for; Docker's default is bridge), with the
step's command, environment, user and working directory, its output streamed into the build's progress. The
step's layer is the container's overlay upper directory (runner.engine.bundle), read after it exited; the
container is removed afterwards in every case, so a failed or interrupted build leaves none behind. A build
process killed outright (SIGKILL) cannot remove its step container, so each carries :data:`STEP_LABEL` naming
the building process (PID and start time): the step's shim watches that process and, once it is gone, kills
the step and removes the container (:func:`watch_builder`, :func:`orphaned`), so a ``runner build`` killed
natively mid-RUN stops its step within moments, as dockerd does for a client that left; the next build,
``builder prune`` and ``system prune`` remove whatever step container is left of a builder that is gone
(:func:`sweep_steps`), running or not, and nothing of a killed build stays.
A build whose *client* went away (the host's CLI killed while the agent builds in the VM, an API client that
hung up) is cancelled through its :class:`runner.stdio.Cancel`, as dockerd cancels a classic build: the running
step's container is killed at once, no later step runs and no image is named.
Linux only, standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import os

from runner.stdio import Stdio

STEP_LABEL = "io.runner.build.step"


def _me() -> str:
    from runner.procs import start_time
    return f"{os.getpid()}:{start_time(os.getpid())}"


def _builder(rec) -> tuple[int, int] | None:
    """The (pid, start time) of the process building with the step container ``rec``; None for another."""
    owner = (rec.spec.get("labels") or {}).get(STEP_LABEL)
    pid, _, started = (owner or "").partition(":")
    return (int(pid), int(started)) if pid.isdigit() and started.isdigit() else None


def orphaned(rec) -> bool:
    """Whether ``rec`` is a build step whose building process is gone (nobody will read its layer)."""
    from runner.procs import alive
    builder = _builder(rec)
    return builder is not None and not alive(*builder)


def watch_builder(rec, kill) -> None:
    """In a step container's shim: call ``kill()`` once the building process is gone. Natively the builder
    is the ``runner build`` process itself: killed outright, nothing else would stop a RUN step that runs
    for ever. A pidfd (Linux 5.3) becomes readable when that process exits: no polling. (In the VM the
    builder is the agent, which cancels a build whose client left: runner.stdio.Cancel.)"""
    import select
    import threading
    builder = _builder(rec)
    if builder is None or not hasattr(os, "pidfd_open"):
        return
    try:
        fd = os.pidfd_open(builder[0])
    except OSError:  # gone already
        kill()
        return
    if orphaned(rec):  # the pid was another process's by now
        os.close(fd)
        kill()
        return

    def wait() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        os.close(fd)
        kill()
    threading.Thread(target=wait, name="builder-watch", daemon=True).start()


def sweep_steps(engine) -> list[str]:
    """Remove the step containers of builds whose process is gone (killed); the IDs removed."""
    from runner.errors import NotFound
    from runner.procs import alive
    gone = []
    for cid in engine.state.ids():
        with contextlib.suppress(NotFound, ValueError, OSError):
            owner = (engine.state.load(cid).spec.get("labels") or {}).get(STEP_LABEL)
            if owner is None:
                continue
            pid, _, started = owner.partition(":")
            if pid.isdigit() and started.isdigit() and alive(int(pid), int(started)):
                continue
            _remove(engine, cid)
            gone.append(cid)
    return gone


def build(engine, stream, options: dict, progress, cancel=None, endpoints: dict | None = None) -> str:
    from runner.images.build import build as build_image
    from runner.images.builder import check_cancelled
    network = (options or {}).get("network") or "bridge"
    sweep_steps(engine)  # what killed builds left: their step containers, their temp files
    engine.images_store.sweep_tmp()
    me = _me()

    def run(image_id: str, argv: list[str], env: list[str], user: str | None, workdir: str | None, output, say):
        spec = {"image": image_id, "command": argv, "entrypoint": [], "env": env, "user": user,
                "workdir": workdir, "network": network, "labels": {STEP_LABEL: me}}
        check_cancelled(cancel)
        cid = engine.create(spec)
        say(f" ---> Running in {cid[:12]}\n")
        try:
            code = _run_attached(engine, cid, output, cancel)
            check_cancelled(cancel)  # killed because the client left: no layer, no later step
        except BaseException:
            _remove(engine, cid)
            raise

        def done() -> None:
            _remove(engine, cid)
            say(f"Removing intermediate container {cid[:12]}\n")
        return code, os.path.join(engine.state.dir(cid), "upper"), done

    def base(ref: str):
        """A FROM or COPY --from image: the store's, else pulled (anonymously: the engine has no credentials;
        ``runner pull`` first for a private image), as Docker's builder pulls a missing base image."""
        from runner.errors import ImageNotFound
        try:
            return engine._image(ref)
        except ImageNotFound:
            if progress is not None:
                progress({"stream": f"Pulling {ref} (not in the image store)\n"})
            engine.pull(ref, endpoints=endpoints)  # through the VM: the host's loopback registries too
            return engine._image(ref)

    return build_image(engine.images_store, stream, options or {}, progress, run, base, cancel)


def _run_attached(engine, cid: str, output, cancel=None) -> int:
    """Start ``cid`` with stdout and stderr on one pipe (the order the step printed them), pass what it
    prints to ``output`` until it exits; its exit code. Once ``cancel`` is set the container is killed (at
    once if it was set while the container started)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        handle = engine.start(cid, Stdio(None, write_fd, write_fd))
    finally:
        os.close(write_fd)  # the shim holds its own copy: end-of-file comes when the container is gone
    forget = cancel.on_set(lambda: _kill(engine, cid)) if cancel is not None else (lambda: None)
    try:
        while True:
            data = os.read(read_fd, 65536)
            if not data:
                break
            output(data)
    finally:
        forget()
        os.close(read_fd)
    return handle.wait()


def _kill(engine, cid: str) -> None:
    """The cancelled build's running step: SIGKILL, so its output pipe ends and the build thread moves on."""
    with contextlib.suppress(Exception):
        engine.kill(cid, "KILL")


def _remove(engine, cid: str) -> None:
    with contextlib.suppress(Exception):
        engine.rm(cid, force=True)
