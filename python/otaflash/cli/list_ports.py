"""List this machine's serial ports, with USB VID:PID and serial numbers.

One line per port: DEVICE, VID:PID (USB ports), serial number, description.
--port-filter keeps the ports that match (vid=HEX, pid=HEX, serial=TEXT,
name=TEXT or VID:PID); the same filters pick the port for `flash` and `agent`.
"""

from __future__ import annotations

import argparse

from otaflash.cli.output import Output

NAME = "list"
HELP = "list serial ports with their USB VID:PID and serial numbers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port-filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep ports with vid=HEX, pid=HEX, serial=TEXT, name=TEXT or VID:PID "
        "(repeatable or comma-joined)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.serial.ports import list_ports, parse_port_filter

    filters = [f for spec in args.port_filter for f in parse_port_filter(spec)]
    ports = list_ports(filters)
    if not ports:
        out.message("no serial ports found" + (" matching the filter" if filters else ""))
    for port in ports:
        columns = [
            port.device,
            port.usb_id or "-",
            port.serial_number or "-",
            port.description or "-",
        ]
        out.result("  ".join(columns), port.as_record())
    return 0
