"""Apply a delta patch to OLD and write the new image to NEW.

The old image is checked against the patch before anything is written, and
NEW appears only once the output's SHA-256 matched the patch's (until then it
is written to NEW.part). Accepts otaflash patches and BSDIFF40 patches.
"""

from __future__ import annotations

import argparse
import os

from otaflash.cli.output import Output

NAME = "patch"
HELP = "apply a delta patch (otaflash or BSDIFF40) to an old image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the image the patch was made from")
    parser.add_argument("patch", metavar="PATCH", help="the patch file")
    parser.add_argument("-o", "--output", required=True, metavar="NEW", help="new image file")
    parser.add_argument(
        "--max-memory",
        type=int,
        default=None,
        metavar="BYTES",
        help="refuse patches needing more working memory (default 4 MiB)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import delta
    from otaflash.progress import ProgressBars

    limit = args.max_memory or delta.DEFAULT_MAX_WORKING_SET
    if out.wants_progress():
        with ProgressBars(label=os.path.basename(args.output)) as bars:
            result = delta.apply(
                args.old, args.patch, args.output, max_working_set=limit, progress=bars
            )
    else:
        result = delta.apply(args.old, args.patch, args.output, max_working_set=limit)
    # Only otaflash patches name the SHA-256 the result must have.
    check = "verified" if result.format == "otaflash" else f"{result.format}: no SHA-256 to check"
    out.result(
        f"{args.output}: {result.new_size} bytes, sha256 {result.new_sha256} ({check})",
        {
            "path": args.output,
            "size": result.new_size,
            "sha256": result.new_sha256,
            "format": result.format,
            "patch_size": result.patch_size,
        },
    )
    return 0
