"""Simulated devices on a serial port, for trying tools without hardware.

otaflash sim stm32 --port pty --target sim:flash.sim
    serves an STM32 system bootloader (AN3155) until stopped; with --port pty
    it makes a pseudo-terminal and prints its path: point stm32flash
    (-m 8n1), stm32loader or `otaflash flash --protocol stm32` at it. The
    chip's flash is kept in TARGET: sim:PATH (a simulated NOR flash, made
    with the chip's size and smallest page as erase block), file:PATH (a
    plain file) or mtd:/dev/mtdN.
otaflash sim ymodem --port PORT --target file:fw.bin [--uboot]
    receives one YMODEM batch (like `rb`, or like U-Boot `loady` with
    --uboot) and exits.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from otaflash.cli.output import Output
from otaflash.errors import Cancelled, InputError, TargetError

NAME = "sim"
HELP = "serve a simulated device on a serial port (STM32 bootloader, YMODEM receiver)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="sim_kind", metavar="DEVICE", required=True)
    stm32 = kinds.add_parser("stm32", help="an STM32 system bootloader (ST AN3155)")
    stm32.add_argument(
        "--port", "-p", required=True, help="serial device, pyserial URL, or `pty` for a new pty"
    )
    stm32.add_argument(
        "--target",
        "-t",
        required=True,
        metavar="TARGET",
        help="the chip's flash: sim:PATH (simulated NOR flash), file:PATH or mtd:/dev/mtdN",
    )
    stm32.add_argument("--chip", default="f407", help="f407 (1 MiB, default) or f103 (128 KiB)")
    stm32.add_argument("--baud", "-b", type=int, default=115200)
    stm32.add_argument("--parity", choices=("even", "none"), default="even")
    ymodem = kinds.add_parser("ymodem", help="a YMODEM receiver (rb, or U-Boot loady)")
    ymodem.add_argument("--port", "-p", required=True, help="serial device or `pty`")
    ymodem.add_argument(
        "--target", "-t", required=True, metavar="TARGET", help="file:PATH or file:DIRECTORY"
    )
    ymodem.add_argument("--baud", "-b", type=int, default=115200)
    ymodem.add_argument(
        "--uboot", action="store_true", help="ACK the first EOT at once, as U-Boot loady does"
    )
    ymodem.add_argument("--start-timeout", type=float, default=60.0, metavar="SECONDS")
    for sub in (stm32, ymodem):
        # --json after the device kind too (the verb's own --json comes before it).
        sub.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print one JSON object per event on stdout",
        )


def _file_target(target: str) -> str:
    scheme, sep, path = target.partition(":")
    if not sep or scheme != "file" or not path:
        raise InputError(f"unsupported target {target!r}; use file:PATH")
    return path


def _flash_target(target: str) -> str:
    scheme = target.partition(":")[0]
    if scheme not in ("file", "sim", "mtd") or target == f"{scheme}:":
        raise TargetError(f"{target!r} is not a target for the chip's flash")
    return target


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.cli.agent import stop_on_sigterm
    from otaflash.serial.ports import open_port
    from otaflash.sim.pty import PtyPort

    if args.sim_kind == "stm32":
        _flash_target(args.target)  # before the port is opened and "ready" said

    stop = stop_on_sigterm()
    parity = getattr(args, "parity", "none")
    # Open first, then say so: a peer started on "ready" finds the port listening.
    port: Any = PtyPort() if args.port == "pty" else open_port(args.port, args.baud, parity=parity)
    shown = port.path if isinstance(port, PtyPort) else args.port
    try:
        out.result(f"serving on {shown}", {"event": "ready", "port": shown})
        if args.sim_kind == "stm32":
            return _run_stm32(args, out, port, shown, stop)
        return _run_ymodem(args, out, port, stop)
    except Cancelled:
        if not stop.is_set():
            raise
        return 0
    finally:
        port.close()


def _run_stm32(args: argparse.Namespace, out: Output, port: Any, shown: str, stop: Any) -> int:
    from otaflash.sim import stm32

    def on_event(record: dict[str, Any]) -> None:
        details = " ".join(
            f"{k}={v:#010x}" if k == "address" else f"{k}={v}"
            for k, v in record.items()
            if k != "event"
        )
        out.result(f"stm32: {record['event']} {details}".rstrip(), {"port": shown, **record})

    out.message(f"otaflash sim: STM32 bootloader ({args.chip}) on {shown}, flash in {args.target}")
    stm32.serve(port, args.target, chip=args.chip, on_event=on_event, stop=stop)
    return 0


def _run_ymodem(args: argparse.Namespace, out: Output, port: Any, stop: Any) -> int:
    from otaflash.serial import ymodem

    destination = _file_target(args.target)
    files = ymodem.receive(
        port,
        destination,
        ack_first_eot=args.uboot,
        start_timeout=args.start_timeout,
        stop=stop,
    )
    for record in files:
        size = os.path.getsize(record["path"])
        out.result(f"received {record['name']}: {size} bytes -> {record['path']}", record)
    return 0
