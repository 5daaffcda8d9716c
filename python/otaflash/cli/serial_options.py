"""The ``--port`` destination of ``otaflash flash`` (a serial line) and the
port options the ``agent`` verb shares.

protocols (``--protocol``):
  otaflash  to `otaflash agent` on the device: frames in flight while earlier
            ones are acknowledged, deflate when it helps, resume from where an
            interrupted run stopped (run the same command again), and success
            only after the device read the image back and its SHA-256 matched.
            --delta PATCH sends a patch the agent applies to its own image.
  ymodem    to U-Boot `loady` or lrzsz `rb` (start the receiver first).
            Every block is acknowledged, but nothing is read back.
  stm32     to the STM32 system bootloader (BOOT0 high, reset; ST AN3155):
            erase, write, read-back verify, then --go (or --address ADDR:leave)
            starts the image.

PORT is a device path (/dev/ttyUSB0) or a pyserial URL (socket://HOST:PORT,
rfc2217://HOST:PORT); --port-filter picks a USB port by VID, PID or serial
number instead (see `otaflash list`).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from otaflash.cli.output import Output
from otaflash.cli.targets import parse_address, parse_number
from otaflash.errors import InputError

if TYPE_CHECKING:
    from otaflash.progress import ProgressCallback
    from otaflash.serial.result import FlashResult

PROTOCOLS = ("otaflash", "ymodem", "stm32")
#: Where STM32 flash starts, the bootloader's default write address.
STM32_FLASH = 0x0800_0000


PORT_HELP = "a serial port: device or pyserial URL (socket://, rfc2217://)"


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (0x08000000)") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit 32 bits")
    return value


def add_port_arguments(parser: argparse.ArgumentParser, where: Any = None) -> None:
    """--port / --port-filter / --baud. ``where``: the flash verb's group of
    destinations, which --port joins; the agent has none."""
    group = parser.add_argument_group("serial port (with --port)")
    (where or group).add_argument("--port", "-p", metavar="PORT", help=PORT_HELP)
    group.add_argument(
        "--port-filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pick the USB port with vid=HEX, pid=HEX, serial=TEXT, name=TEXT or VID:PID "
        "(repeatable or comma-joined; all must match)",
    )
    group.add_argument(
        "--baud",
        "-b",
        type=int,
        default=115200,
        metavar="N",
        help="baud rate to flash at (default: %(default)s)",
    )


def add_arguments(parser: argparse.ArgumentParser, where: Any) -> None:
    """The serial options of the flash verb; ``--address`` and
    ``--no-verify`` are the verb's own (shared with ``--usb``)."""
    add_port_arguments(parser, where)
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="otaflash",
        help="what the device runs (default: %(default)s)",
    )
    agent = parser.add_argument_group("otaflash protocol")
    agent.add_argument(
        "--agent-baud",
        type=int,
        default=115200,
        metavar="N",
        help="rate the agent listens at; both ends switch to --baud after connecting "
        "(default: %(default)s)",
    )
    agent.add_argument(
        "--delta", metavar="PATCH", help="send PATCH for the agent to apply to its current image"
    )
    agent.add_argument("--no-compress", action="store_true", help="send blocks uncompressed")
    agent.add_argument(
        "--no-resume", action="store_true", help="start over instead of resuming a cut transfer"
    )
    agent.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when the device shows no progress for this long (default: %(default)s)",
    )
    agent.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to call for the agent (default: %(default)s)",
    )
    stm32 = parser.add_argument_group("stm32 protocol (and --address, --no-verify)")
    stm32.add_argument(
        "--erase",
        choices=("pages", "all", "none"),
        default="pages",
        help="erase the pages the image covers, the whole flash, or nothing (default: pages)",
    )
    stm32.add_argument(
        "--go",
        "-g",
        nargs="?",
        const=-1,
        type=_address,
        metavar="ADDR",
        help="start the image afterwards (at ADDR, default: --address; or --address ADDR:leave)",
    )
    stm32.add_argument(
        "--parity",
        choices=("even", "none"),
        default="even",
        help="the bootloader uses even parity; ptys cannot (default: %(default)s)",
    )
    ymodem = parser.add_argument_group("ymodem protocol")
    ymodem.add_argument(
        "--block-size",
        type=int,
        choices=(128, 1024),
        default=1024,
        help="YMODEM packet size (default: %(default)s)",
    )
    ymodem.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the receiver to start (default: %(default)s)",
    )


def resolve_port(args: argparse.Namespace) -> str:
    from otaflash.serial.ports import find_port, parse_port_filter

    if args.port and args.port_filter:
        raise InputError("give --port or --port-filter, not both")
    if args.port:
        port: str = args.port
        return port
    if args.port_filter:
        filters = [f for spec in args.port_filter for f in parse_port_filter(spec)]
        return find_port(filters)
    raise InputError("no port given; use --port PORT or --port-filter vid=...,pid=...")


def flash(args: argparse.Namespace, out: Output) -> dict[str, Any]:
    """Flashes over the serial port the arguments name; returns the record."""
    from otaflash.progress import ProgressBars

    if args.layout != "raw" or parse_number(args.offset) != 0:
        raise InputError(
            "--layout and --offset are for --target; over a serial port the device decides "
            "(the agent its target, STM32 --address)"
        )
    if args.delta and args.image:
        raise InputError("give an IMAGE or --delta PATCH, not both")
    source = args.delta or args.image
    if not source:
        raise InputError("no image given")
    if args.delta and args.protocol != "otaflash":
        raise InputError("--delta needs --protocol otaflash (the agent applies the patch)")
    if not os.path.isfile(source):
        missing = InputError(f"{source}: no such file")
        missing.hint = "check the path"
        raise missing
    port = resolve_port(args)
    with ProgressBars(label=os.path.basename(source)) as bars:
        result = _flash(args, port, source, bars if out.wants_progress() else None)
    return {"image": source, **result.as_record()}


def _flash(
    args: argparse.Namespace, port: str, source: str, progress: ProgressCallback | None
) -> FlashResult:
    from otaflash.serial import protocol, stm32, ymodem

    if args.protocol == "otaflash":
        common: dict[str, Any] = {
            "baud": args.baud,
            "agent_baud": args.agent_baud,
            "connect_timeout": args.connect_timeout,
            "timeout": args.timeout,
            "progress": progress,
        }
        if args.delta:
            return protocol.send_delta(port, source, **common)
        return protocol.send(
            port, source, compress=not args.no_compress, resume=not args.no_resume, **common
        )
    if args.protocol == "ymodem":
        return ymodem.send(
            port,
            source,
            baud=args.baud,
            block_size=args.block_size,
            start_timeout=args.start_timeout,
            timeout=args.timeout,
            progress=progress,
        )
    address, leave, mass_erase = parse_address(args.address)
    address = STM32_FLASH if address is None else address
    go = args.go if args.go not in (None, -1) else (address if leave or args.go == -1 else None)
    return stm32.flash(
        port,
        source,
        baud=args.baud,
        parity=args.parity,
        address=address,
        erase="all" if mass_erase or args.mass_erase else args.erase,
        verify=not args.no_verify,
        go=go,
        progress=progress,
    )


def describe(record: dict[str, Any]) -> str:
    seconds = record["seconds"]
    rate = record["size"] * 8 / seconds / 1000 if seconds > 0 else 0.0
    text = (
        f"{record['image']}: {record['size']} bytes to {record['port']} over "
        f"{record['protocol']} in {seconds:.1f} s ({rate:.0f} kbit/s)"
    )
    if record["protocol"] == "otaflash" and record.get("delta"):
        return (
            f"{record['image']}: patch of {record['stream_size']} bytes sent to {record['port']} "
            f"in {seconds:.1f} s; the device rebuilt its image ({record['size']} bytes) and "
            f"verified it by read-back (sha256 {record['sha256']})"
        )
    if record["protocol"] == "otaflash":
        resumed = record.get("resumed_from", 0)
        if resumed:
            text += f", resumed at byte {resumed}"
        return text + f", verified by read-back (sha256 {record['sha256']})"
    if record["protocol"] == "stm32":
        text += ", verified by read-back" if record["verified"] else ", NOT verified (--no-verify)"
        started = record.get("started_at")
        if started is not None:
            text += f", started at {started:#010x}"
        return text
    return text + ", every block acknowledged (YMODEM cannot read back)"
