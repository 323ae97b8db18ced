"""`runner vm image build|ls`: the guest image cache (mounted by the lead as `runner vm image`).

Thin: building and verification live in :mod:`runner.vm.image`; this module parses flags and prints.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

image_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="Build and list the VM guest images (kernel, initrd, root disk)")


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
    """Show cached guest images: version, arch, kernel, size, and whether every checksum matches."""
    from runner.cli import render
    from runner.errors import VMError
    from runner.vm import image

    rows = []
    root = image.cache_dir(image.ARCHES[0]).parent.parent
    for manifest in sorted(root.glob("*/*/manifest.json")):
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
        rows.append({"version": version, "arch": arch, "kernel": kernel, "size": size, "verified": verified,
                     "path": str(manifest.parent)})
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        print(f"no guest images cached in {root}")
        return
    render.table(["VERSION", "ARCH", "KERNEL", "SIZE", "VERIFIED", "PATH"],
                 [[r["version"], r["arch"], r["kernel"], render.human_size(r["size"]), r["verified"], r["path"]]
                  for r in rows])
