"""USB DFU 1.1 and ST DfuSe: find devices, flash them and read them back,
with pyusb for the transfers and the Rust core for the file formats.

- :func:`flash_file`: the whole job (what ``otaflash flash --usb`` runs);
- :func:`flash_stream`: the same for bytes arriving as a stream of known
  size (an image the delta engine rebuilds on the fly);
- :func:`find_dfu_devices` / :func:`list_dfu_devices`: what is plugged in
  (``otaflash list``);
- :class:`~otaflash.usb.dfu.DfuDevice`: the protocol, for scripts that
  drive it step by step, and its push-style
  :class:`~otaflash.usb.dfu.BlockWriter` for streamed images;
- :mod:`otaflash.usb.files`: raw images, DFU suffixes, DfuSe files.

Every function takes ``backend=``, a pyusb backend: libusb 1.0 by default,
or :class:`otaflash.sim.usb_backend.EmulatedBackend` for an emulated device.
"""

from __future__ import annotations

from typing import Any

from otaflash.usb.devices import DfuDeviceInfo, Selector, find_dfu_devices, parse_selector
from otaflash.usb.flash import UsbFlashResult, flash_file, flash_stream

__all__ = [
    "DfuDeviceInfo",
    "Selector",
    "UsbFlashResult",
    "find_dfu_devices",
    "flash_file",
    "flash_stream",
    "list_dfu_devices",
    "parse_selector",
]


def list_dfu_devices(selector: str | None = None, *, backend: Any = None) -> list[dict[str, Any]]:
    """One record per DFU device: what ``otaflash list`` prints next to the
    serial ports (``kind`` is ``usb-dfu``)."""
    parsed = parse_selector(selector) if selector else None
    return [
        {"kind": "usb-dfu", **info.as_record()}
        for info in find_dfu_devices(parsed, backend=backend)
    ]
