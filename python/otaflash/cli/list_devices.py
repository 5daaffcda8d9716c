"""List the devices otaflash can flash from this machine: serial ports (with
USB VID:PID and serial numbers) and USB DFU devices (mode, serial number,
bus path, alt settings with their DfuSe memory layouts).

--port-filter keeps the serial ports that match (vid=HEX, pid=HEX,
serial=TEXT, name=TEXT or VID:PID), the same filters that pick the port for
`flash --port-filter` and `agent`; --usb keeps the DFU devices that match,
like `flash --usb`. Either one limits the listing to its kind. With --json,
each record says its "kind": "serial" or "usb-dfu".

On a machine where USB access needs privileges, DFU devices still show up,
with a note and the udev rule that would let this user open them.
"""

from __future__ import annotations

import argparse
from typing import Any

from otaflash.cli import usb_options
from otaflash.cli.output import Output

NAME = "list"
HELP = "list serial ports and USB DFU devices (VID:PID, serial numbers, alt settings)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port-filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="list serial ports only, those with vid=HEX, pid=HEX, serial=TEXT, name=TEXT or "
        "VID:PID (repeatable or comma-joined)",
    )
    parser.add_argument(
        "--usb", "-d", metavar="VID:PID[,...]", help="list USB DFU devices only, those that match"
    )


def run(args: argparse.Namespace, out: Output, *, backend: Any = None) -> int:
    if not args.usb:
        _serial_ports(args, out)
    if not args.port_filter:
        _dfu_devices(args, out, backend)
    return 0


def _serial_ports(args: argparse.Namespace, out: Output) -> None:
    from otaflash.serial.ports import list_ports, parse_port_filter

    filters = [f for spec in args.port_filter for f in parse_port_filter(spec)]
    ports = list_ports(filters)
    if not ports:
        out.message("no serial ports found" + (" matching --port-filter" if filters else ""))
    for port in ports:
        columns = [port.device, port.usb_id or "-", port.serial_number or "-"]
        columns.append(port.description or "-")
        out.result("  ".join(columns), {"kind": "serial", **port.as_record()})


def _dfu_devices(args: argparse.Namespace, out: Output, backend: Any) -> None:
    from otaflash.usb import list_dfu_devices

    records = list_dfu_devices(args.usb, backend=backend)
    if not records:
        out.message("no USB DFU devices found" + (" matching --usb" if args.usb else ""))
    for record in records:
        out.result("\n".join(usb_options.describe_listing(record)), record)
