"""Firmware files for DFU: raw images, the DFU suffix, vendor prefixes and
DfuSe ``.dfu`` files, as dfu-util and its ``dfu-suffix``/``dfu-prefix``
tools read and write them. Parsing and CRCs run in the Rust core.

>>> fw = open_firmware("app.dfu")                       # doctest: +SKIP
>>> fw.suffix.vendor_id, fw.is_dfuse                     # doctest: +SKIP
(1155, True)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from otaflash import _core
from otaflash.errors import DfuFileError

__all__ = [
    "ANY_ID",
    "BCD_DFU",
    "BCD_DFUSE",
    "DfuseElement",
    "DfuseTarget",
    "FirmwareFile",
    "Suffix",
    "add_suffix",
    "open_firmware",
    "write_dfuse",
]

ANY_ID = 0xFFFF
BCD_DFU = 0x0100
BCD_DFUSE = 0x011A
#: Bytes read from a file at a time when streaming it to a device.
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Suffix:
    vendor_id: int
    product_id: int
    bcd_device: int
    bcd_dfu: int
    length: int
    crc: int

    def matches(self, vendor_id: int, product_id: int) -> bool:
        """0xFFFF in the suffix matches any device, as in dfu-util."""
        return self.vendor_id in (ANY_ID, vendor_id) and self.product_id in (ANY_ID, product_id)

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"


@dataclass(frozen=True)
class DfuseElement:
    address: int
    size: int
    file_offset: int


@dataclass(frozen=True)
class DfuseTarget:
    alt: int
    name: str | None
    elements: tuple[DfuseElement, ...]


@dataclass(frozen=True)
class FirmwareFile:
    """A firmware file on disk: what is sent to the device is
    ``payload_len`` bytes from the start (a vendor prefix included, as
    dfu-util does); a DfuSe file is sent element by element instead."""

    path: str
    size: int
    payload_len: int
    suffix: Suffix | None
    prefix: str
    """``none``, ``dfuse``, ``stellaris`` or ``lpc``."""
    prefix_address: int | None
    targets: tuple[DfuseTarget, ...] | None
    """The DfuSe targets (None for a plain image)."""

    @property
    def is_dfuse(self) -> bool:
        return self.targets is not None

    def check_device(self, vendor_id: int, product_id: int) -> None:
        """Raises :class:`DfuFileError` when the suffix names another device."""
        if self.suffix is not None and not self.suffix.matches(vendor_id, product_id):
            raise DfuFileError(
                f"{self.path} was made for USB device {self.suffix.usb_id} (its DFU suffix), "
                f"not {vendor_id:04x}:{product_id:04x}",
                self.path,
                hint="flash the device the file names, or rebuild its suffix for this one "
                "(`dfu-suffix -D` then `dfu-suffix -a -v VID -p PID`)",
            )

    def target(self, alt: int) -> DfuseTarget | None:
        for target in self.targets or ():
            if target.alt == alt:
                return target
        return None

    def read(self, offset: int, size: int) -> Iterator[bytes]:
        """The file's bytes ``[offset, offset + size)`` in chunks."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            left = size
            while left:
                chunk = f.read(min(left, READ_CHUNK))
                if not chunk:
                    raise DfuFileError(f"{self.path} changed while it was read", self.path)
                left -= len(chunk)
                yield chunk


def _suffix(raw: dict[str, Any] | None) -> Suffix | None:
    return None if raw is None else Suffix(**raw)


def open_firmware(path: str | os.PathLike[str]) -> FirmwareFile:
    """Reads a file's suffix (checking its CRC), prefix and DfuSe structure;
    raises :class:`DfuFileError` for a corrupt one."""
    path = os.fspath(path)
    info = _core.dfu_file_info(path)
    targets = None
    if info["prefix"] == "dfuse":
        parsed = _core.dfuse_file_parse(path)
        targets = tuple(
            DfuseTarget(
                alt=t["alt"],
                name=t["name"],
                elements=tuple(DfuseElement(a, s, o) for a, o, s in t["elements"]),
            )
            for t in parsed["targets"]
        )
    return FirmwareFile(
        path=path,
        size=info["size"],
        payload_len=info["payload_len"],
        suffix=_suffix(info["suffix"]),
        prefix=info["prefix"],
        prefix_address=info.get("prefix_address"),
        targets=targets,
    )


def add_suffix(
    path: str | os.PathLike[str],
    vendor_id: int = ANY_ID,
    product_id: int = ANY_ID,
    bcd_device: int = ANY_ID,
    bcd_dfu: int = BCD_DFU,
) -> Suffix:
    """Appends a DFU suffix, as ``dfu-suffix -a -v VID -p PID -d DEV`` does."""
    raw = _core.dfu_add_suffix(os.fspath(path), vendor_id, product_id, bcd_device, bcd_dfu)
    return Suffix(**raw)


def write_dfuse(
    path: str | os.PathLike[str],
    targets: Sequence[tuple[int, str | None, Sequence[tuple[int, bytes]]]],
    vendor_id: int = ANY_ID,
    product_id: int = ANY_ID,
    bcd_device: int = ANY_ID,
) -> None:
    """Writes a DfuSe file: ``targets`` is ``[(alt, name, [(address, data)])]``."""
    data = _core.dfuse_file_build(
        [(alt, name, list(elements)) for alt, name, elements in targets],
        vendor_id,
        product_id,
        bcd_device,
    )
    with open(path, "wb") as f:
        f.write(data)
