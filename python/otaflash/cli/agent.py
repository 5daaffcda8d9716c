"""Run the device end of the otaflash serial protocol.

The agent listens on PORT for `otaflash flash --port ...` and writes what it
receives to TARGET: a full image, or a patch it applies to the image TARGET
holds now. An image becomes current only after the agent has read it back
from TARGET and its SHA-256 matched; an interrupted transfer resumes from
the last durable checkpoint when the host runs the same command again.

TARGET is file:PATH (the image is written next to PATH and renamed over it
once verified), or flash: sim:PATH?kind=nor&size=... or mtd:/dev/mtdN with
the A/B layout (created on first use: two equal slots). There the image goes
to the inactive slot, a delta reads the old image from the active one, and
a verified image becomes a trial boot of its slot, as `otaflash flash
--layout ab` does: run `otaflash slot boot` and `otaflash slot confirm` next.
It serves until stopped (Ctrl-C, SIGTERM), or for one transfer with --once.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

from otaflash.cli.output import Output
from otaflash.errors import Cancelled

NAME = "agent"
HELP = "run the device end of the otaflash serial protocol (receives images and deltas)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from otaflash.cli.serial_options import add_port_arguments

    add_port_arguments(parser)
    parser.add_argument(
        "--target",
        "-t",
        required=True,
        metavar="TARGET",
        help="where images go: file:PATH, or sim:PATH?... / mtd:/dev/mtdN (A/B slots)",
    )
    parser.add_argument(
        "--max-baud",
        type=int,
        default=4_000_000,
        metavar="N",
        help="highest rate a host may switch to (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=16 * 1024,
        metavar="BYTES",
        help="bytes a host may send ahead; keep within the port's receive buffer "
        "(default: %(default)s)",
    )
    parser.add_argument("--once", action="store_true", help="exit after one transfer")


def stop_on_sigterm() -> threading.Event:
    """An event SIGTERM sets (services stop agents that way), so they end cleanly."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return stop


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.cli.serial_options import resolve_port
    from otaflash.serial import protocol
    from otaflash.serial.ports import open_port

    port = resolve_port(args)
    results: list[dict[str, Any]] = []
    on_flash = not args.target.startswith("file:")

    def on_transfer(record: dict[str, Any]) -> None:
        results.append(record)
        what = "delta" if record["delta"] else "image"
        if not record["verified"]:
            state = "FAILED verification"
        elif on_flash:
            state = "verified, to boot on trial (then `otaflash slot boot`, `slot confirm`)"
        else:
            state = "verified and committed"
        text = (
            f"{args.target}: {what} of {record['stream_size']} bytes -> image of "
            f"{record['size']} bytes, {state} (sha256 {record['sha256']}) "
            f"in {record['seconds']:.1f} s"
        )
        if record["resumed_from"]:
            text += f", resumed at byte {record['resumed_from']}"
        out.result(text, {"port": port, "target": args.target, **record})

    stop = stop_on_sigterm()
    described = protocol.check_target(args.target)
    with open_port(port, args.baud) as handle:
        out.message(f"otaflash agent: serving {port} at {args.baud} baud, writing to {described}")
        try:
            protocol.serve_agent(
                handle,
                args.target,
                baud=args.baud,
                max_baud=args.max_baud,
                window=args.window,
                once=args.once,
                on_transfer=on_transfer,
                stop=stop,
            )
        except Cancelled:
            if not stop.is_set():
                raise
    if args.once and not (results and results[-1]["verified"]):
        return 4
    return 0
