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
from otaflash.cli.targets import parse_address, parse_number
from otaflash.errors import InputError

USB_HELP = (
    "a USB DFU device: VID:PID[,serial=S][,alt=N|NAME][,path=BUS-PORT] (dfu-util's -d; "
    "a device in run-time mode is detached into DFU mode first)"
)


def add_arguments(parser: argparse.ArgumentParser, where: Any) -> None:
    """``--usb`` joins the destination group ``where``; the rest go in a
    "USB DFU" group of ``parser`` (``--address``, ``--no-verify``,
    ``--mass-erase`` and ``--leave`` are the flash verb's own)."""
    where.add_argument("--usb", "-d", metavar="VID:PID[,...]", help=USB_HELP)
    group = parser.add_argument_group("USB DFU (with --usb)")
    group.add_argument(
        "--alt",
        "-a",
        metavar="N|NAME",
        help="alt setting by number or name prefix (dfu-util's -a; default: the .dfu file's "
        "target, else alt 0)",
    )
    group.add_argument("--serial-number", "-S", metavar="S", help="the device's serial number")
    group.add_argument(
        "--transfer-size", type=int, metavar="N", help="bytes per transfer (default: the device's)"
    )
    group.add_argument(
        "--reset", "-R", action="store_true", help="plain DFU: USB reset after manifestation"
    )
    group.add_argument(
        "--old",
        metavar="FILE",
        help="with --delta PATCH: the image the patch was made from; the new image is rebuilt "
        "from it here (checked whole first) and flashed",
    )


def flash(args: argparse.Namespace, out: Output, *, backend: Any = None) -> dict[str, Any]:
    from dataclasses import replace

    from otaflash.progress import ProgressBars
    from otaflash.usb import flash_file, parse_selector

    if args.layout != "raw" or parse_number(args.offset) != 0:
        raise InputError("--layout and --offset are for --target; a DfuSe image goes at --address")
    selector = parse_selector(args.usb)
    if args.serial_number:
        selector = replace(selector, serial=args.serial_number)
    alt: int | str | None = None
    if args.alt is not None:
        alt = int(args.alt) if args.alt.isdigit() else args.alt
    address, leave, mass_erase = parse_address(args.address)
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
    if args.delta:
        return _flash_delta(args, out, selector, options)
    if out.wants_progress():
        with ProgressBars(label=os.path.basename(args.image)) as bars:
            result = flash_file(selector, args.image, progress=bars, **options)
    else:
        result = flash_file(selector, args.image, **options)
    return result.as_record()


def _flash_delta(
    args: argparse.Namespace, out: Output, selector: Any, options: dict[str, Any]
) -> dict[str, Any]:
    """A DFU bootloader takes whole images: the patch is applied here to
    --old and the rebuilt image streams to the device, never stored."""
    from otaflash.delta import rebuilt_stream
    from otaflash.progress import ProgressBars
    from otaflash.usb import flash_stream

    if args.image:
        raise InputError("give an IMAGE or --delta PATCH, not both")
    if not args.old:
        raise InputError(
            "--delta over USB needs --old FILE: the image the patch was made from (the "
            "device's bootloader cannot apply a patch itself)"
        )
    for path in (args.delta, args.old):
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file")
    options.pop("reset")
    name = os.path.basename(args.delta)
    with ProgressBars(label=name) as bars:
        progress = bars if out.wants_progress() else None
        stream = rebuilt_stream(args.old, args.delta, progress=progress)
        result = flash_stream(
            selector,
            stream.chunks(),
            stream.size,
            name=name,
            expected_sha256=stream.sha256,
            progress=progress,
            **options,
        )
    record = result.as_record()
    record.update(image=args.delta, delta=args.delta, old=args.old)
    return record


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


def describe_listing(record: dict[str, Any]) -> list[str]:
    """The ``otaflash list`` lines of one DFU device."""
    lines = [
        f"{record['usb_id']}  {record['mode']:<7}  serial={record['serial'] or '-'}  "
        f"path={record['path'] or '-'}  {record['product'] or ''}".rstrip()
    ]
    for alt in record["alts"]:
        lines.append(f"    alt {alt['alt']}: {alt['name'] or '(no name)'}")
    if record.get("access_error"):
        lines.append(f"    {record['access_error']}")
    return lines
