"""Test helpers for USB DFU: an emulated device on an in-process pyusb bus."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otaflash.sim.dfu import EmulatedDfuDevice
from otaflash.sim.usb_backend import EmulatedBackend
from otaflash.usb.devices import set_default_backend

BASE = 0x0800_0000


def make_device(
    tmp_path: Path, *, size: str = "128k", name: str = "dev", **options: Any
) -> EmulatedDfuDevice:
    uri = f"sim:{tmp_path / name}.sim?kind=nor&size={size}&erase=2k"
    return EmulatedDfuDevice(uri, **options)


@contextmanager
def default_bus(*devices: EmulatedDfuDevice) -> Iterator[EmulatedBackend]:
    """The emulated bus as every otaflash USB function's default backend."""
    backend = EmulatedBackend(*devices)
    previous = set_default_backend(backend)
    try:
        yield backend
    finally:
        set_default_backend(previous)


def flash_bytes(device: EmulatedDfuDevice, address: int, size: int) -> bytes:
    return device.memory.read(address - device.base, size)
