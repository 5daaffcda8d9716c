"""List USB DFU devices: VID:PID, mode (dfu: ready to flash; runtime: the
application, detached on demand), serial number, bus path and alt settings
with their names (DfuSe memory layouts). --usb filters like `flash --usb`.

On a machine where USB access needs privileges, devices still show up, with
a note and the udev rule that would let this user open them.
"""

from __future__ import annotations

import argparse
from typing import Any

from otaflash.cli.output import Output

NAME = "list"
HELP = "list USB DFU devices (VID:PID, serial number, alt settings)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--usb", "-d", metavar="VID:PID[,...]", help="keep the devices that match")


def describe(record: dict[str, Any]) -> list[str]:
    lines = [
        f"{record['usb_id']}  {record['mode']:<7}  serial={record['serial'] or '-'}  "
        f"path={record['path'] or '-'}  {record['product'] or ''}".rstrip()
    ]
    for alt in record["alts"]:
        lines.append(f"    alt {alt['alt']}: {alt['name'] or '(no name)'}")
    if record.get("access_error"):
        lines.append(f"    {record['access_error']}")
    return lines


def run(args: argparse.Namespace, out: Output, *, backend: Any = None) -> int:
    from otaflash.usb import list_dfu_devices

    records = list_dfu_devices(args.usb, backend=backend)
    if not records:
        out.message("no USB DFU devices found" + (" matching --usb" if args.usb else ""))
    for record in records:
        out.result("\n".join(describe(record)), record)
    return 0
