"""Make a delta patch that turns OLD into NEW.

The patch carries the size and SHA-256 of both images, so `otaflash patch`
refuses the wrong old image before writing and verifies what it made.
Sequential patches (the default) write the new image elsewhere (A/B slot,
file); --in-place patches overwrite the old image inside one flash slot,
resumable after a power cut. --compression lzma2 trades apply speed for the
smallest patch (worth it on a serial line or a metered link). The applier's working memory is about
2**window-log + block-size bytes (default ~2.7 MiB; `patch-info` shows it).
"""

from __future__ import annotations

import argparse
import os

from otaflash.cli.output import Output

NAME = "diff"
HELP = "make a delta patch from an old and a new image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the image the device runs now")
    parser.add_argument("new", metavar="NEW", help="the image it should run")
    parser.add_argument("-o", "--output", required=True, metavar="PATCH", help="patch file")
    parser.add_argument(
        "--compression",
        choices=("zstd", "lzma2"),
        default="zstd",
        help="zstd applies fastest (default); lzma2 makes the smallest patches"
        " (for slow or metered links), applied several times slower",
    )
    parser.add_argument(
        "--level",
        type=int,
        default=None,
        help="zstd 1-22 (default 19) or lzma2 preset 0-9 (default 9)",
    )
    parser.add_argument(
        "--window-log",
        type=int,
        default=21,
        help="log2 of the decompression window the device must hold (default 21 = 2 MiB)",
    )
    parser.add_argument("--block-size", type=int, default=None, help="output block in bytes")
    parser.add_argument(
        "--in-place", action="store_true", help="overwrite the old image in its own slot"
    )
    parser.add_argument("--slot-size", type=int, default=None, help="in-place: slot bytes")
    parser.add_argument("--threads", type=int, default=0, help="worker threads (0 = all cores)")


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import delta
    from otaflash.progress import ProgressBars

    with ProgressBars(label=os.path.basename(args.output)) as bars:
        info = delta.diff(
            args.old,
            args.new,
            args.output,
            kind="in-place" if args.in_place else "sequential",
            compression=args.compression,
            level=args.level,
            window_log=args.window_log,
            block_size=args.block_size,
            slot_size=args.slot_size,
            threads=args.threads,
            progress=bars if out.wants_progress() else None,
        )
    size = os.path.getsize(args.output)
    share = 100.0 * size / info.new_size if info.new_size else 0.0
    out.result(
        f"{args.output}: {size} bytes ({share:.2f}% of the new image), "
        f"{info.fields['kind']}, applies in {info.fields['working_set'] // 1024} KiB",
        {"path": args.output, "size": size, **info.fields},
    )
    return 0
