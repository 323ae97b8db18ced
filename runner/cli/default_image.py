"""``scripts/build-default-image``: build the offline default image into a store or an archive.

The command-line face of runner.images.default (which prints nothing: the CLI side owns the output). Runs
without Typer, so scripts/setup can call it before anything else: ``python3 -m runner.cli.default_image``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from runner.errors import RunnerError
from runner.images import default
from runner.images.store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-default-image", description=default.__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="image store directory to build into (default: a temporary one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--busybox", default=default.BUSYBOX, help="static busybox binary (default: %(default)s)")
    source.add_argument("--deb", help="a busybox-static .deb to take the binary from")
    parser.add_argument("--output", help="also write the image as a docker-save/OCI archive to this file")
    args = parser.parse_args(argv)
    if not args.root and not args.output:
        parser.error("give --root, --output or both")
    from runner.images import archive
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(args.root or os.path.join(tmp, "store"))
            busybox = default.busybox_from_deb(args.deb, tmp) if args.deb else args.busybox
            image = default.build_default_image(store, busybox)
            if args.output:
                with open(args.output, "wb") as out:
                    archive.save(store, [default.DEFAULT_IMAGE], out)
    except RunnerError as exc:
        print(f"Error: {exc.message}" + (f"\nHint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    print(f"{default.DEFAULT_IMAGE} {image.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
