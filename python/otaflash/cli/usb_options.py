"""The ``--usb`` destination of ``otaflash flash`` (USB DFU / DfuSe), and
what the ``flash`` verb needs to offer it: options, the function that
writes, and the result line.

For dfu-util users:

===============================  ===========================================
dfu-util                         otaflash flash
===============================  ===========================================
``-d 0483:df11``                 ``--usb 0483:df11`` (or ``-d 0483:df11``)
``-S SERIAL``                    ``--usb 0483:df11,serial=SERIAL`` or ``-S``
``-a 0`` / ``-a "@Internal..."`` ``--alt 0`` / ``-a @Internal`` (name prefix)
``-p 1-2.3``                     ``--usb 0483:df11,path=1-2.3``
``-s 0x08000000[:leave]``        ``--address 0x08000000[:leave]`` or ``-s``
``-s :mass-erase``               ``--mass-erase``
``-t 1024``                      ``--transfer-size 1024``
``-R``                           ``--reset`` (plain DFU)
``-D file`` then ``-U`` + cmp    ``IMAGE`` (always read back and compared)
===============================  ===========================================
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from otaflash.cli.output import Output
from otaflash.errors import InputError

USB_HELP = (
    "a USB DFU device: VID:PID[,serial=S][,alt=N|NAME][,path=BUS-PORT] (dfu-util's -d; "
    "a device in run-time mode is detached into DFU mode first)"
)


def add_arguments(parser: argparse.ArgumentParser, where: Any) -> None:
    """``--usb`` joins the destination group ``where``; the rest go in a
    "USB DFU" group of ``parser``."""
    where.add_argument("--usb", "-d", metavar="VID:PID[,...]", help=USB_HELP)
    group = parser.add_argument_group("USB DFU (with --usb)")
    group.add_argument(
        "--alt",
        "-a",
        metavar="N|NAME",
        help="alt setting by number or name prefix (dfu-util's -a; default: the .dfu file's "
        "target, else alt 0)",
    )
    group.add_argument(
        "--address",
        "-s",
        metavar="ADDR[:leave][:mass-erase]",
        help="DfuSe: where a raw image goes (default: the start of the alt's memory); "
        ":leave runs the firmware afterwards, :mass-erase erases all flash first "
        "(dfu-util's -s)",
    )
    group.add_argument("--serial-number", "-S", metavar="S", help="the device's serial number")
    group.add_argument(
        "--transfer-size", type=int, metavar="N", help="bytes per transfer (default: the device's)"
    )
    group.add_argument("--mass-erase", action="store_true", help="DfuSe: erase all flash first")
    group.add_argument("--leave", action="store_true", help="DfuSe: run the firmware afterwards")
    group.add_argument(
        "--reset", "-R", action="store_true", help="plain DFU: USB reset after manifestation"
    )
    group.add_argument(
        "--no-verify", action="store_true", help="do not read the image back (not recommended)"
    )


def _address(text: str | None) -> tuple[int | None, bool, bool]:
    if text is None:
        return None, False, False
    head, *modifiers = text.split(":")
    known = {"leave", "mass-erase"}
    for modifier in modifiers:
        if modifier not in known:
            raise InputError(
                f"--address {text!r}: unknown modifier {modifier!r} (use :leave or :mass-erase)"
            )
    address = None
    if head:
        try:
            address = int(head, 0)
        except ValueError:
            raise InputError(f"--address {text!r}: {head!r} is not a number") from None
        if not 0 <= address < 1 << 32:
            raise InputError(f"--address {text!r} does not fit 32 bits")
    return address, "leave" in modifiers, "mass-erase" in modifiers


def flash(args: argparse.Namespace, out: Output, *, backend: Any = None) -> dict[str, Any]:
    from dataclasses import replace

    from otaflash.progress import ProgressBars
    from otaflash.usb import flash_file, parse_selector

    if getattr(args, "layout", "raw") != "raw" or parse_offset(args) != 0:
        raise InputError("--layout and --offset are for --target; a DfuSe image goes at --address")
    selector = parse_selector(args.usb)
    if args.serial_number:
        selector = replace(selector, serial=args.serial_number)
    alt: int | str | None = None
    if args.alt is not None:
        alt = int(args.alt) if args.alt.isdigit() else args.alt
    address, leave, mass_erase = _address(args.address)
    options: dict[str, Any] = {
        "address": address,
        "alt": alt,
        "transfer_size": args.transfer_size,
        "mass_erase": mass_erase or args.mass_erase,
        "leave": leave or args.leave,
        "reset": args.reset,
        "verify": not args.no_verify,
        "backend": backend,
    }
    if out.wants_progress():
        with ProgressBars(label=os.path.basename(args.image)) as bars:
            result = flash_file(selector, args.image, progress=bars, **options)
    else:
        result = flash_file(selector, args.image, **options)
    return result.as_record()


def parse_offset(args: argparse.Namespace) -> int:
    from otaflash.cli.targets import parse_number

    return parse_number(getattr(args, "offset", "0") or "0")


def describe(record: dict[str, Any]) -> str:
    where = ", ".join(f"{e['size']} bytes at {e['address']:#010x}" for e in record["elements"])
    if record["protocol"] == "dfu":
        where = f"{record['size']} bytes"
    text = (
        f"flashed {record['image']} to {record['device']} alt {record['alt']} "
        f"({record['protocol']}): {where}, sha256 {record['sha256']}"
    )
    if record["verified"]:
        text += "; read back and verified"
    else:
        text += f"; NOT verified: {record['verify_note']}"
    if record["left"]:
        text += "; the device now runs it"
    return text
