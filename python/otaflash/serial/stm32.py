"""The STM32 system bootloader over USART (ST AN3155): flash, verify, start.

Works like ``stm32flash -w IMAGE -v [-g ADDRESS]``: wakes the bootloader with
0x7F, asks GET / GET_VERSION / GET_ID, erases the pages the image covers
(from the chip's page layout, or the whole flash), writes 256-byte blocks,
reads every byte back to compare, and optionally jumps to the image.
The bootloader speaks 8E1; ptys cannot carry parity, so use ``parity="none"``
there (as ``stm32flash -m 8n1`` does).
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

__all__ = ["ERASE_MODES", "FLASH_BASE", "flash", "info"]

FLASH_BASE = 0x0800_0000
ERASE_MODES = ("pages", "all", "none")


def flash(
    port: str | serial.SerialBase,
    path: str | os.PathLike[str],
    *,
    baud: int = 115200,
    parity: str = "even",
    address: int = FLASH_BASE,
    erase: str = "pages",
    verify: bool = True,
    go: int | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> FlashResult:
    """Writes the file at ``path`` to flash at ``address`` through the bootloader."""
    started = time.monotonic()
    with opened(port, baud, parity=parity) as handle:
        report = _core.stm32_flash(
            handle,
            os.fspath(path),
            address=address,
            erase=erase,
            verify=verify,
            go=go,
            progress=progress,
            stop=stop,
        )
    size = report.pop("size")
    verified = report.pop("verified")
    return FlashResult(
        protocol="stm32",
        port=describe_port(port),
        size=size,
        seconds=time.monotonic() - started,
        verified=verified,
        baud=baud,
        details=report,
    )


def info(
    port: str | serial.SerialBase,
    *,
    baud: int = 115200,
    parity: str = "even",
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """What the bootloader says about itself: version, commands, product ID, chip."""
    with opened(port, baud, parity=parity) as handle:
        return _core.stm32_info(handle, stop=stop)
