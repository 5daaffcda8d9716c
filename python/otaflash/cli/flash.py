"""Write a firmware image to a device and verify it.

The destination is one of three transports:
  --target  a Linux MTD device, a simulated flash or an image file. Blocks
            that already hold the right bytes are skipped (compared by
            SHA-256 first), blank blocks are not erased, every written block
            is read back. On NAND, bad blocks are skipped and blocks that
            fail are marked bad and relocated, as nandwrite does.
  --port    a serial line: `otaflash agent` on the device (resumable, deltas
            applied on the device), U-Boot `loady`/lrzsz (YMODEM), or the
            STM32 system bootloader; see --protocol.
  --usb     a USB DFU or DfuSe device, e.g. an STM32 bootloader
            (`--usb 0483:df11`); IMAGE is a raw image, one with a DFU suffix,
            or a DfuSe .dfu file.

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

from otaflash.cli import serial_options, usb_options
from otaflash.cli.output import Output
from otaflash.cli.targets import TARGET_HELP, parse_number
from otaflash.errors import InputError

NAME = "flash"
HELP = "write an image to a device (MTD, simulated flash, image file, serial port, USB DFU)"

#: Transports, by the option that selects them: each writes args.image and
#: returns the JSON record. A new transport adds its option to the
#: destination group in add_arguments and its function here.
Destination = Callable[[argparse.Namespace, Output], dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the firmware image file")
    # Not argparse-required: a missing destination is a user error (exit 3)
    # whose message lists the choices.
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", "-t", metavar="TARGET", help=TARGET_HELP)
    serial_options.add_arguments(parser, where)
    usb_options.add_arguments(parser, where)
    memory = parser.add_argument_group("device memory (with --usb, or --port --protocol stm32)")
    memory.add_argument(
        "--address",
        "-s",
        metavar="ADDR[:leave][:mass-erase]",
        help="where the image goes (DfuSe default: the start of the alt's memory; STM32: "
        "0x08000000); :leave runs it afterwards, :mass-erase erases all flash first "
        "(dfu-util's -s)",
    )
    memory.add_argument("--mass-erase", action="store_true", help="erase all flash first")
    memory.add_argument("--leave", action="store_true", help="run the firmware afterwards")
    memory.add_argument(
        "--no-verify", action="store_true", help="do not read the image back (not recommended)"
    )
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
    given = [option for option in DESTINATIONS if getattr(args, option, None) not in (None, [])]
    if len({DESTINATIONS[option] for option in given}) > 1:
        raise InputError(f"give one destination, not {' and '.join('--' + o for o in given)}")
    if given:
        option = given[0]
        destination = DESTINATIONS[option]
        # With --delta the destination checks its own sources.
        if not args.delta:
            if not args.image:
                raise InputError("no image given")
            if not os.path.isfile(args.image):
                raise InputError(f"{args.image}: no such image file")
        record = destination(args, out)
        out.result(DESCRIBE.get(option, _describe)(record), record)
        return 0
    raise InputError(
        "no destination given; use --target TARGET, --port PORT (or --port-filter) or --usb VID:PID"
    )


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


DESTINATIONS: dict[str, Destination] = {
    "target": _to_target,
    "port": serial_options.flash,
    "port_filter": serial_options.flash,
    "usb": usb_options.flash,
}
#: Result lines of the destinations that word them their own way.
DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "port": serial_options.describe,
    "port_filter": serial_options.describe,
    "usb": usb_options.describe,
}


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
