"""Write a firmware image to a device, erase/program/verify every block.

The destination is one of the transports below: --target (a Linux MTD
device, a simulated flash or an image file) or --usb (a USB DFU or DfuSe
device, e.g. an STM32 bootloader: `--usb 0483:df11`; IMAGE is a raw image,
one with a DFU suffix, or a DfuSe .dfu file; see the USB DFU options). Blocks that already hold the
right bytes are skipped (compared by SHA-256 first), blank blocks are not
erased, every written block is read back. On NAND, bad blocks are skipped
and blocks that fail are marked bad and relocated, as nandwrite does.

Layouts: raw (default) writes at --offset; ab writes the inactive slot and
switches to a trial boot of it (`otaflash slot boot|confirm` then); inplace
rewrites one slot with a journal, and running the same command again after
an interruption finishes the job.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from otaflash.cli import usb_options
from otaflash.cli.output import Output
from otaflash.cli.targets import TARGET_HELP, parse_number
from otaflash.errors import InputError

NAME = "flash"
HELP = "write an image to a device (MTD, simulated flash, image file, USB DFU)"

#: Transports, by the option that selects them: each writes args.image and
#: returns the JSON record. A UART (--port) or USB DFU (--usb) transport adds
#: its option to the group in add_arguments and its function here.
Destination = Callable[[argparse.Namespace, Output], dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the firmware image file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", "-t", metavar="TARGET", help=TARGET_HELP)
    usb_options.add_arguments(parser, where)
    parser.add_argument(
        "--offset",
        "-o",
        default="0",
        metavar="N",
        help="where to write on the target (raw layout; 0x.. and k/M accepted; default 0)",
    )
    parser.add_argument(
        "--layout",
        choices=("raw", "ab", "inplace"),
        default="raw",
        help="raw: at --offset; ab: inactive slot then trial boot; inplace: journalled single "
        "slot (default: raw)",
    )
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="erase and program every block, even blank or unchanged ones",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    if not os.path.isfile(args.image):
        raise InputError(f"{args.image}: no such image file")
    for option, destination in DESTINATIONS.items():
        if getattr(args, option, None) is not None:
            record = destination(args, out)
            out.result(DESCRIBE.get(option, _describe)(record), record)
            return 0
    raise InputError("no destination given")  # argparse enforces one; kept for clarity


def _to_target(args: argparse.Namespace, out: Output) -> dict[str, Any]:
    from otaflash import flash
    from otaflash.progress import ProgressBars

    offset = parse_number(args.offset)
    with flash.open_target(args.target) as target:
        if out.wants_progress():
            with ProgressBars(label=os.path.basename(args.image)) as bars:
                result = _write(target, args, offset, bars)
        else:
            result = _write(target, args, offset, None)
    record = {"image": args.image, "target": args.target, "verified": True}
    record.update({k: v for k, v in vars(result).items() if k != "uri"})
    return record


def _write(target: Any, args: argparse.Namespace, offset: int, progress: Any) -> Any:
    return target.write(
        args.image,
        offset,
        layout=args.layout,
        progress=progress,
        skip_blank=not args.no_skip,
        skip_unchanged=not args.no_skip,
    )


DESTINATIONS: dict[str, Destination] = {"target": _to_target, "usb": usb_options.flash}
#: Result lines of the destinations that word them their own way.
DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {"usb": usb_options.describe}


def _describe(record: dict[str, Any]) -> str:
    where = f"{record['target']} at {record['offset']:#x}"
    if record["layout"] == "ab":
        where = f"{record['target']} slot {'AB'[record['slot']]} (on trial until confirmed)"
    elif record["layout"] == "inplace":
        where = f"{record['target']} (in place)"
    text = (
        f"flashed {record['image']} ({record['size']} bytes, sha256 {record['sha256']}) to {where}"
    )
    if record.get("steps") is not None:
        return f"{text}: {record['steps']} blocks replaced, verified"
    details = [
        f"{record['blocks']} blocks",
        f"{record['blocks_unchanged']} unchanged",
        f"{record['erases']} erased",
        f"{record['erases_skipped']} already blank",
    ]
    if record["bad_blocks_skipped"]:
        details.append(f"{len(record['bad_blocks_skipped'])} bad skipped")
    if record["blocks_relocated"]:
        details.append(f"{len(record['blocks_relocated'])} went bad and were relocated")
    return f"{text}: {', '.join(details)}; verified"
