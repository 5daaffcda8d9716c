"""An emulated STM32 system bootloader (ST AN3155 over USART).

It answers byte for byte like the real part: 0x7F autobaud after reset,
GET / GET_VERSION / GET_ID, READ and WRITE MEMORY (256 bytes, XOR checksums),
ERASE or EXTENDED ERASE (by page, or all), GO, write/readout (un)protect.
Flash behaves like flash: erased bytes are 0xFF, programming only clears
bits, so writing over unerased data is NACKed as a real chip would refuse it.
The flash lives in a target that survives between runs and can be
inspected: ``file:PATH`` (a plain file of the flash's size) or a flash-layer
target, ``sim:PATH`` (a simulated NOR flash, created with the chip's flash
size and smallest page as erase block unless the URI says otherwise) or
``mtd:/dev/mtdN``.

Emulated parts (``CHIPS``): ``f103`` (STM32F103xB, 128 KiB in 1 KiB pages,
bootloader 2.2 with ERASE) and ``f407`` (STM32F407, 1 MiB in 16/64/128 KiB
sectors, bootloader 3.1 with EXTENDED ERASE).

The emulator is Rust (``otaflash_core::serial::stm32::emulator``): it
shares the protocol's constants and chip table with our host, runs at
native speed so benchmark timings measure the link and not the emulator,
and keeps its flash behind a small store trait over a file or a flash-layer
device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import serial

from otaflash import _core
from otaflash.errors import InputError
from otaflash.serial.ports import opened

__all__ = ["CHIPS", "serve"]

#: name -> (part, flash size in bytes)
CHIPS: dict[str, tuple[str, int]] = {
    name: (part, size) for name, part, size in _core.stm32_emulated_chips()
}


def serve(
    port: str | serial.SerialBase | Any,
    target: str,
    *,
    chip: str = "f407",
    baud: int = 115200,
    parity: str = "even",
    on_event: Callable[[dict[str, Any]], object] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serves the bootloader on ``port`` with its flash in ``target`` until stopped.

    ``target`` is ``file:PATH``, ``sim:PATH[?...]`` or ``mtd:/dev/mtdN``.

    ``port`` is a device path, a pyserial object, or a
    :class:`~otaflash.sim.pty.PtyPort`. ``on_event(record)`` hears
    connections, erases, GO and protection changes.
    """
    if chip not in CHIPS:
        raise InputError(f"no emulated chip {chip!r}; choose {', '.join(CHIPS)}")
    if isinstance(port, str):
        with opened(port, baud, parity=parity) as handle:
            _core.stm32_emulate(handle, target, chip=chip, on_event=on_event, stop=stop)
    else:
        _core.stm32_emulate(port, target, chip=chip, on_event=on_event, stop=stop)
