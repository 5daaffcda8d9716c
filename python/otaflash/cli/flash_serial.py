"""Flash a device over a serial port.

protocols:
  otaflash  to `otaflash agent` on the device: frames in flight while earlier
            ones are acknowledged, deflate when it helps, resume from where an
            interrupted run stopped (run the same command again), and success
            only after the device read the image back and its SHA-256 matched.
            --delta PATCH sends a patch the agent applies to its own image.
  ymodem    to U-Boot `loady` or lrzsz `rb` (start the receiver first).
            Every block is acknowledged, but nothing is read back.
  stm32     to the STM32 system bootloader (BOOT0 high, reset; ST AN3155):
            erase, write, read-back verify, then --go starts the image.

PORT is a device path (/dev/ttyUSB0) or a pyserial URL (socket://HOST:PORT,
rfc2217://HOST:PORT); --port-filter picks a USB port by VID, PID or serial
number instead (see `otaflash list`).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from otaflash.cli.output import Output
from otaflash.errors import InputError

if TYPE_CHECKING:
    from otaflash.progress import ProgressCallback
    from otaflash.serial.result import FlashResult

NAME = "flash"
HELP = "flash a device over a serial port (otaflash agent, YMODEM, STM32 bootloader)"

PROTOCOLS = ("otaflash", "ymodem", "stm32")


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (0x08000000)") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit 32 bits")
    return value


def add_port_arguments(parser: argparse.ArgumentParser) -> None:
    """--port / --port-filter / --baud, shared by the serial verbs."""
    group = parser.add_argument_group("serial port")
    group.add_argument(
        "--port", "-p", metavar="PORT", help="serial device or pyserial URL (socket://, rfc2217://)"
    )
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


def add_serial_arguments(parser: argparse.ArgumentParser) -> None:
    """Everything but the image: the lead's unified `flash` verb can reuse it."""
    add_port_arguments(parser)
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
    stm32 = parser.add_argument_group("stm32 protocol")
    stm32.add_argument(
        "--address",
        "-a",
        type=_address,
        default=0x0800_0000,
        metavar="ADDR",
        help="flash address to write at (default: 0x08000000)",
    )
    stm32.add_argument(
        "--erase",
        choices=("pages", "all", "none"),
        default="pages",
        help="erase the pages the image covers, the whole flash, or nothing (default: pages)",
    )
    stm32.add_argument(
        "--no-verify", action="store_true", help="skip reading the flash back to compare"
    )
    stm32.add_argument(
        "--go",
        "-g",
        nargs="?",
        const=-1,
        type=_address,
        metavar="ADDR",
        help="start the image afterwards (at ADDR, default: --address)",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serial_arguments(parser)
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the image file to write")


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


def run(args: argparse.Namespace, out: Output) -> int:
    return run_serial(args, out)


def run_serial(args: argparse.Namespace, out: Output) -> int:
    """Flashes over the serial port the arguments name; returns the exit code."""
    from otaflash.progress import ProgressBars

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
    out.result(_describe(source, result), {"image": source, **result.as_record()})
    return 0


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
    go = None if args.go is None else (args.address if args.go == -1 else args.go)
    return stm32.flash(
        port,
        source,
        baud=args.baud,
        parity=args.parity,
        address=args.address,
        erase=args.erase,
        verify=not args.no_verify,
        go=go,
        progress=progress,
    )


def _describe(source: str, result: FlashResult) -> str:
    rate = result.effective_bits_per_second / 1000
    text = (
        f"{source}: {result.size} bytes to {result.port} over {result.protocol} "
        f"in {result.seconds:.1f} s ({rate:.0f} kbit/s)"
    )
    if result.protocol == "otaflash":
        resumed = result.details.get("resumed_from", 0)
        if resumed:
            text += f", resumed at byte {resumed}"
        return text + f", verified by read-back (sha256 {result.sha256})"
    if result.protocol == "stm32":
        text += ", verified by read-back" if result.verified else ", NOT verified (--no-verify)"
        started = result.details.get("started_at")
        if started is not None:
            text += f", started at {started:#010x}"
        return text
    return text + ", every block acknowledged (YMODEM cannot read back)"
