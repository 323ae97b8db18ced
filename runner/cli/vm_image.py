"""`runner vm image build|ls|push|pull`: the guest image cache (mounted by the lead as `runner vm image`).

Thin: building and verification live in :mod:`runner.vm.image`, the registry artifact in
:mod:`runner.vm.artifact_push` / :mod:`runner.vm.artifact_pull`; this module parses flags and prints.
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

image_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="Build, list, push and pull the VM guest images (kernel, initrd, root disk)")


def _progress(quiet: bool):
    from rich.console import Console

    from runner.cli.progress import ProgressDisplay
    return ProgressDisplay(quiet=quiet, console=Console(stderr=True, highlight=False, soft_wrap=True))


def _arches(arch: Optional[List[str]]) -> list[str]:
    from runner.errors import UsageError
    from runner.vm import image

    chosen = list(arch or image.ARCHES)
    for name in chosen:
        if name not in image.ARCHES:
            raise UsageError(f"unknown guest arch {name!r}", hint=f"use one of: {', '.join(image.ARCHES)}")
    return chosen


@image_app.command()
def push(
    ref: str = typer.Argument(..., help="registry/repository:tag to push to"),
    arch: Optional[List[str]] = typer.Option(None, "--arch", help="x86_64 and/or aarch64 (default: both)"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only the index digest"),
):
    """Push the cached guest images as one OCI index (one manifest per arch); prints the digest to pin."""
    from runner.images.credentials import credentials_for
    from runner.images.reference import Reference
    from runner.vm import artifact_push

    registry = Reference.parse(ref).registry
    with _progress(quiet) as show:
        digest = artifact_push.push(ref, _arches(arch), credentials=credentials_for(registry), progress=show)
    print(digest if quiet else f"pushed {ref}@{digest}\n"
                               f"pin it: RUNNER_GUEST_IMAGE={Reference.parse(ref).base}:"
                               f"{Reference.parse(ref).tag}@{digest}")


@image_app.command()
def pull(
    ref: Optional[str] = typer.Argument(None, help="guest image reference (default: RUNNER_GUEST_IMAGE, the "
                                                   "config's vm.image, or this release's pinned image)"),
    arch: Optional[str] = typer.Option(None, "--arch", help="x86_64 or aarch64 (default: this host's)"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress output"),
):
    """Download and verify the guest image from a registry into the cache (pure Python: any host OS)."""
    from runner.errors import UsageError
    from runner.images.credentials import credentials_for
    from runner.images.reference import Reference
    from runner.vm import artifact, artifact_pull

    source = ""
    if not ref:
        configured = artifact.configured_ref()
        if configured is None:
            raise UsageError("no guest image reference given or configured",
                             hint=f"name one (`runner vm image pull REGISTRY/REPO:TAG`), set {artifact.ENV} or "
                                  f"the config's {artifact.CONFIG_KEY}; or build locally: `runner vm image build`")
        ref, source = configured
    if not arch:
        from runner.vm.accel import host_arch

        arch = host_arch()
    arch = _arches([arch])[0]
    with _progress(quiet) as show:
        result = artifact_pull.pull(ref, arch, source=source, progress=show,
                                    credentials=credentials_for(Reference.parse(ref).registry))
    if not quiet:
        print(f"{arch} guest image {result['digest']} ready in {result['path']}")


@image_app.command()
def build(
    arch: Optional[str] = typer.Option(None, "--arch", help="x86_64 or aarch64 (default: this host's)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if the cached image is up to date"),
):
    """Build the guest image into the cache (Linux, as root; other hosts use the release artifacts)."""
    from runner.vm import image

    if not arch:
        from runner.vm.accel import host_arch

        arch = host_arch()
    art = image.build(arch, image.cache_dir(arch), force=force)
    print(f"{arch} guest image (kernel {art.kernel_version}) ready in {art.manifest.parent}")


@image_app.command("ls")
def list_images(as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Show cached guest images: version, arch, kernel, size, whether every checksum matches, and where from."""
    from runner.cli import render
    from runner.errors import VMError
    from runner.vm import image

    rows = []
    root = image.cache_dir(image.ARCHES[0]).parent.parent
    for manifest in sorted(root.glob("*/*/manifest.json")):
        if manifest.parent.name.startswith("."):
            continue  # a pull's unpack directory, not yet (or never) a guest image
        version, arch = manifest.parent.parent.name, manifest.parent.name
        try:
            data = json.loads(manifest.read_text())
            size = sum(a.get("size", 0) for a in data.get("artifacts", {}).values())
            kernel = data.get("kernel_version", "?")
        except (OSError, ValueError):
            size, kernel = None, "?"
        if version != image.IMAGE_VERSION:
            verified = "old version"
        else:
            try:
                image.verify(manifest.parent, arch)
                verified = "yes"
            except VMError as e:
                verified = f"NO: {e.message}"
        try:
            source = json.loads((manifest.parent / ".source.json").read_text()).get("ref", "?")
        except (OSError, ValueError, AttributeError):
            source = "built here"
        rows.append({"version": version, "arch": arch, "kernel": kernel, "size": size, "verified": verified,
                     "source": source, "path": str(manifest.parent)})
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        print(f"no guest images cached in {root}")
        return
    render.table(["VERSION", "ARCH", "KERNEL", "SIZE", "VERIFIED", "SOURCE", "PATH"],
                 [[r["version"], r["arch"], r["kernel"], render.human_size(r["size"]), r["verified"], r["source"],
                   r["path"]] for r in rows])
