"""A container's OCI bundle and root filesystem: the files the engine prepares for a runtime to execute.

Layout under the container's state directory (runner.engine.state)::

    bundle/config.json   the OCI runtime spec, written anew at every start (the contract with the runtime)
    bundle/rootfs/       the overlay mount point (mounted only inside the shim's private mount namespace)
    upper/ work/         overlayfs upper and work dirs: the container's writable layer
    etc/                 hostname, hosts, resolv.conf, bind-mounted into the container

Why apart from the engine: the shim runs ``prepare`` in its own process and mount namespace, so it must not
call back into the Engine object; and the coming image build makes bundles for its build containers too.
Linux only (mounts), standard library only (runs in the guest).
"""

from __future__ import annotations

import contextlib
import errno
import os

from runner.spec import ContainerSpec

TYPE_CHECKING = False  # annotations only: importing typing costs the start path ~6 ms
if TYPE_CHECKING:
    from runner.engine.state import ContainerRecord
    from runner.images.store import Store

HOSTS_LOCAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class Bundle:
    """The paths of one container's bundle, below its state directory ``cdir``."""

    def __init__(self, cdir: str):
        self.cdir = cdir
        self.dir = os.path.join(cdir, "bundle")
        self.rootfs = os.path.join(self.dir, "rootfs")
        self.config_path = os.path.join(self.dir, "config.json")
        self.etc = os.path.join(cdir, "etc")

    def make_dirs(self) -> None:
        for sub in (self.rootfs, os.path.join(self.cdir, "upper"), os.path.join(self.cdir, "work")):
            os.makedirs(sub, mode=0o755)

    def etc_files(self) -> dict[str, str]:
        """Container path -> host file, for the OCI config's bind mounts."""
        return {"/etc/" + name: os.path.join(self.etc, name) for name in ("hostname", "hosts", "resolv.conf")}

    def write_etc_files(self, network_mode: str, hostname: str, bridge_resolv) -> None:
        """hostname, hosts and resolv.conf: the host's with ``--network host``, ``bridge_resolv()`` (the host's
        resolvers minus loopback stubs) on a bridge network, none without a network."""
        os.makedirs(self.etc, exist_ok=True)
        hosts = HOSTS_LOCAL + f"127.0.1.1\t{hostname}\n"
        resolv = ""
        if network_mode == "host":
            with contextlib.suppress(OSError), open("/etc/hosts") as f:
                hosts = f.read()
            with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
                resolv = f.read()
        elif network_mode != "none":
            resolv = bridge_resolv()
        for name, content in (("hostname", hostname + "\n"), ("hosts", hosts), ("resolv.conf", resolv)):
            with open(os.path.join(self.etc, name), "w") as f:
                f.write(content)
            os.chmod(os.path.join(self.etc, name), 0o644)

    def mount_rootfs(self, lowers: list[str], volatile: bool) -> None:
        """Mount the overlay of ``lowers`` (top first) with this container's upper dir on ``rootfs``.

        A --rm container's writable layer never outlives its run, so it is mounted "volatile" (as podman does
        for --rm): overlayfs then skips syncing the upper filesystem, which otherwise makes the unmount at
        exit flush the whole host filesystem (2-60 ms here). A volatile mount leaves a marker that refuses any
        later mount of the same dirs; this container can only meet it again if a killed shim left the
        container behind and it is started again, and then its layer is as the shim left it: drop the marker.
        """
        from runner.engine.runtime import linux
        # Relative lowerdirs keep the mount options short (they are limited to one page) with many layers.
        base = os.path.commonpath(lowers) if len(lowers) > 1 else os.path.dirname(lowers[0])
        opts = "lowerdir={},upperdir={},workdir={}".format(
            ":".join(os.path.relpath(p, base) for p in lowers),
            os.path.join(self.cdir, "upper"), os.path.join(self.cdir, "work"))
        marker = os.path.join(self.cdir, "work", "work", "incompat", "volatile")
        if volatile and os.path.lexists(marker):
            import shutil  # only on this rare path: importing it costs every start ~2 ms
            shutil.rmtree(marker, ignore_errors=True)
        cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.chdir(base)
            try:
                linux.mount("overlay", self.rootfs, "overlay", 0, opts + (",volatile" if volatile else ""))
            except OSError as exc:
                if not volatile or exc.errno != errno.EINVAL:
                    raise
                linux.mount("overlay", self.rootfs, "overlay", 0, opts)  # a kernel before 5.10: no volatile
        finally:
            os.fchdir(cwd)
            os.close(cwd)

    def write_config(self, config: dict) -> None:
        from runner.engine.state import write_json_atomic
        # Not fsynced: config.json is written anew at every start, so after a crash it is never needed (the
        # rename alone keeps readers from seeing half of it).
        write_json_atomic(self.config_path, config, durable=False)

    def release(self) -> None:
        """Unmount the overlay (in the shim's namespace) so the container's files can be removed."""
        from runner.engine.runtime import linux
        with contextlib.suppress(OSError):
            linux.umount2(self.rootfs, linux.MNT_DETACH)


def prepare(store: Store, bundle: Bundle, rec: ContainerRecord, empty_dir: str, netns: str | None = None,
            size=None, volumes_root: str = "") -> None:
    """Mount the container's overlay in a private mount namespace and write the OCI ``config.json``.

    Called in the shim. The new mount namespace is made recursively private first, so the overlay neither
    shows up on the host nor receives the host's later mount events. ``netns`` is the network namespace the
    shim wired (runner.engine.network), which the runtime joins instead of creating one; ``size`` the
    terminal's (a TermSize) for ``-t``; ``empty_dir`` the lower layer of an image without layers;
    ``volumes_root`` the engine's volumes directory: a new, empty volume is filled from the image here.
    """
    from runner.engine import network
    from runner.engine.runtime import linux, oci, security
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    image = store.resolve(rec.image_id)
    lowers = store.layer_dirs(image)
    if not lowers:
        os.makedirs(empty_dir, exist_ok=True)
    bundle.mount_rootfs(lowers or [empty_dir], volatile=bool(rec.spec.get("auto_remove")))
    spec = ContainerSpec.from_dict(rec.spec)
    rootfs = bundle.rootfs
    for m in spec.mounts:
        if m.type == "volume" and not m.nocopy:
            from runner.engine import volumes
            data = os.path.join(volumes_root, m.source, "_data")
            if volumes.is_empty(data):
                from runner.procs import FileLock
                with FileLock(os.path.join(volumes_root, ".lock")):  # two first starts: one copy
                    if volumes.is_empty(data):
                        volumes.copy_up(rootfs, m.target, data)
    uid, gid, gids = oci.resolve_user(spec.user or image.config.get("config", {}).get("User") or None, rootfs)
    config = oci.make_config(
        spec, image.config, rootfs=rootfs, container_id=rec.id,
        hostname=rec.extra["hostname"], etc_files=bundle.etc_files(),
        cgroups_path=f"runner/{rec.id}", uid=uid, gid=gid, additional_gids=gids,
        home=oci.home_dir(uid, rootfs), volumes_root=volumes_root)
    security.apply(config, spec)  # caps, seccomp, devices, privileged: Docker's rules on the default config
    network.join_config(config, netns)
    if spec.tty and size is not None:  # set before the workload runs: its first `stty size` must see it
        config["process"]["consoleSize"] = {"height": size.rows, "width": size.cols}
    bundle.write_config(config)
