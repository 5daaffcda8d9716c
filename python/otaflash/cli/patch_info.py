"""Describe a delta patch: format, kind, sizes and hashes of the images it
turns into each other, and the working memory its apply needs."""

from __future__ import annotations

import argparse

from otaflash.cli.output import Output

NAME = "patch-info"
HELP = "show what a delta patch applies to and what it makes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patch", metavar="PATCH", help="the patch file")


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import delta

    info = delta.patch_info(args.patch)
    # None: the format does not say (VCDIFF's sizes are per window).
    lines = [
        f"{key}: {'not stated' if value is None else value}" for key, value in info.fields.items()
    ]
    out.result("\n".join(lines), {"path": args.patch, **info.fields})
    return 0
