"""YMODEM over a serial port: send to lrzsz ``rb`` or U-Boot ``loady``,
receive from lrzsz ``sb`` / ``sb -k``.

YMODEM acknowledges every block (CRC-16) but has no read-back: a successful
send means the receiver took every byte, not that it stored them right.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import serial

from otaflash import _core
from otaflash.serial.ports import describe_port, opened
from otaflash.serial.result import FlashResult

if TYPE_CHECKING:
    from otaflash.progress import ProgressCallback

__all__ = ["receive", "send"]


def send(
    port: str | serial.SerialBase,
    path: str | os.PathLike[str],
    *,
    baud: int = 115200,
    name: str | None = None,
    block_size: int = 1024,
    start_timeout: float = 60.0,
    timeout: float = 10.0,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> FlashResult:
    """Sends the file at ``path`` as a one-file YMODEM batch.

    Start the receiver first (``loady`` in U-Boot, ``rb`` on Linux); the
    send waits ``start_timeout`` seconds for it.
    """
    started = time.monotonic()
    with opened(port, baud) as handle:
        report = _core.ymodem_send(
            handle,
            os.fspath(path),
            name=name,
            block_size=block_size,
            start_timeout=start_timeout,
            timeout=timeout,
            progress=progress,
            stop=stop,
        )
    return FlashResult(
        protocol="ymodem",
        port=describe_port(port),
        size=report["size"],
        seconds=time.monotonic() - started,
        verified=False,
        baud=baud,
        details={
            "name": report["name"],
            "blocks": report["blocks"],
            "retransmitted": report["retransmitted"],
            "first_eot_acked": report["first_eot_acked"],
            "end_of_batch_acked": report["end_of_batch_acked"],
        },
    )


def receive(
    port: str | serial.SerialBase,
    destination: str | os.PathLike[str],
    *,
    baud: int = 115200,
    ack_first_eot: bool = False,
    start_timeout: float = 60.0,
    timeout: float = 3.0,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Receives a YMODEM batch into ``destination`` (a directory, or one file).

    Returns one ``{"name", "path", "size", "declared_size"}`` per file.
    ``ack_first_eot`` answers like U-Boot's ``loady`` instead of the classic
    NAK-then-ACK.
    """
    with opened(port, baud) as handle:
        return _core.ymodem_receive(
            handle,
            os.fspath(destination),
            ack_first_eot=ack_first_eot,
            start_timeout=start_timeout,
            timeout=timeout,
            progress=progress,
            stop=stop,
        )
