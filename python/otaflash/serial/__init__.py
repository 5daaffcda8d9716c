"""Flashing devices over serial ports.

Three protocols, one call (:func:`flash`):

- ``otaflash``: to ``otaflash agent`` on the device — windowed, compressed,
  resumable, delta-capable, verified by a read-back SHA-256
  (:mod:`otaflash.serial.protocol`);
- ``ymodem``: to U-Boot ``loady`` or lrzsz ``rb`` (:mod:`otaflash.serial.ymodem`);
- ``stm32``: to the STM32 system bootloader, ST AN3155
  (:mod:`otaflash.serial.stm32`).

Ports are device paths or pyserial URLs (``socket://``, ``rfc2217://``);
:func:`list_ports` finds them by USB VID/PID and serial number.

>>> from otaflash import serial
>>> result = serial.flash("/dev/ttyUSB0", "fw.bin", protocol="stm32")  # doctest: +SKIP
>>> result.verified  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import serial as _pyserial

from otaflash.errors import InputError
from otaflash.serial import protocol, stm32, ymodem
from otaflash.serial import protocol as _agent
from otaflash.serial import stm32 as _stm32
from otaflash.serial import ymodem as _ymodem
from otaflash.serial.ports import (
    PortFilter,
    PortInfo,
    find_port,
    list_ports,
    open_port,
    parse_port_filter,
)
from otaflash.serial.result import FlashResult

if TYPE_CHECKING:
    from otaflash.progress import ProgressCallback

__all__ = [
    "PROTOCOLS",
    "FlashResult",
    "PortFilter",
    "PortInfo",
    "find_port",
    "flash",
    "list_ports",
    "open_port",
    "parse_port_filter",
    "protocol",
    "stm32",
    "ymodem",
]

PROTOCOLS = ("otaflash", "ymodem", "stm32")


def flash(
    port: str | _pyserial.SerialBase,
    image: str | os.PathLike[str],
    *,
    protocol: str = "otaflash",
    baud: int = 115200,
    address: int = _stm32.FLASH_BASE,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> FlashResult:
    """Flashes ``image`` over ``port`` with one of :data:`PROTOCOLS`.

    Protocol-specific options are on :func:`otaflash.serial.protocol.send`,
    :func:`otaflash.serial.ymodem.send` and :func:`otaflash.serial.stm32.flash`.
    """
    if protocol == "otaflash":
        return _agent.send(port, image, baud=baud, progress=progress, stop=stop)
    if protocol == "ymodem":
        return _ymodem.send(port, image, baud=baud, progress=progress, stop=stop)
    if protocol == "stm32":
        return _stm32.flash(port, image, baud=baud, address=address, progress=progress, stop=stop)
    raise InputError(f"unknown protocol {protocol!r}; choose {', '.join(PROTOCOLS)}")
