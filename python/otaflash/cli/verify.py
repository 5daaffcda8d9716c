"""Check that a device holds exactly an image at an offset.

Exits 0 only when every byte matches (bad blocks skipped on NAND, as
nanddump --bb=skipbad reads); otherwise exits 4 naming the first
difference.
"""

from __future__ import annotations

import argparse
import os

from otaflash.cli.output import Output
from otaflash.cli.targets import add_target, parse_number
from otaflash.errors import InputError

NAME = "verify"
HELP = "check that a device holds exactly an image (exit 0 only if it does)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image the device must hold")
    add_target(parser)
    parser.add_argument("--offset", "-o", default="0", metavar="N", help="where (default 0)")


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import flash
    from otaflash.progress import ProgressBars

    if not os.path.isfile(args.image):
        raise InputError(f"{args.image}: no such image file")
    offset = parse_number(args.offset)
    with flash.open_target(args.target) as target:
        if out.wants_progress():
            with ProgressBars(label=os.path.basename(args.image)) as bars:
                digest = target.verify(args.image, offset, progress=bars)
        else:
            digest = target.verify(args.image, offset)
    size = os.path.getsize(args.image)
    out.result(
        f"ok: {args.target} holds {args.image} at {offset:#x} ({size} bytes, sha256 {digest})",
        {
            "image": args.image,
            "target": args.target,
            "offset": offset,
            "size": size,
            "sha256": digest,
            "match": True,
        },
    )
    return 0
