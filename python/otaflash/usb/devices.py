"""Finding DFU devices with pyusb: selectors (``0483:df11,serial=X,alt=0``),
DFU interfaces in run-time or DFU mode, alt settings by number or name,
the DFU functional descriptor, and USB errors turned into otaflash errors
(permission problems get a udev hint, not a traceback)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import usb.backend.libusb1
import usb.core
import usb.util

from otaflash.errors import DeviceNotFoundError, InputError, UsbError, UsbPermissionError
from otaflash.usb.layout import MemoryLayout
from otaflash.usb.protocol import (
    DFU_CLASS,
    DFU_SUBCLASS,
    FUNCTIONAL_DESCRIPTOR,
    PROTOCOL_RUNTIME,
    FunctionalDescriptor,
)

__all__ = [
    "AltSetting",
    "DfuDeviceInfo",
    "Selector",
    "find_dfu_devices",
    "parse_selector",
    "set_default_backend",
    "usb_error",
]


@dataclass(frozen=True)
class Selector:
    """Which device and alt setting: what ``--usb`` and dfu-util's ``-d``,
    ``-S``, ``-a`` and ``-p`` say."""

    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    alt: int | str | None = None
    """An alt setting number, or its name (exact, or a unique prefix)."""
    path: str | None = None
    """The USB bus path, ``1-2.3`` as dfu-util -l and sysfs print it."""

    def matches(self, info: DfuDeviceInfo) -> bool:
        if self.serial is not None and info.serial != self.serial:
            return False
        if self.path is not None and info.path != self.path:
            return False
        return (self.vendor_id is None or info.vendor_id == self.vendor_id) and (
            self.product_id is None or info.product_id == self.product_id
        )

    def __str__(self) -> str:
        parts = []
        if self.vendor_id is not None or self.product_id is not None:
            vid = f"{self.vendor_id:04x}" if self.vendor_id is not None else ""
            pid = f"{self.product_id:04x}" if self.product_id is not None else ""
            parts.append(f"{vid}:{pid}")
        for key in ("serial", "path", "alt"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={value}")
        return ",".join(parts) or "any DFU device"


def _hex16(text: str, what: str, spec: str) -> int | None:
    if text in ("", "*"):
        return None
    try:
        value = int(text, 16)
    except ValueError:
        raise InputError(f"--usb {spec!r}: {what} {text!r} is not a hex number") from None
    if not 0 <= value <= 0xFFFF:
        raise InputError(f"--usb {spec!r}: {what} {text!r} does not fit 16 bits")
    return value


def parse_selector(spec: str) -> Selector:
    """``VID:PID[,serial=S][,alt=N|NAME][,path=BUS-PORT]``; ``VID:`` and
    ``:PID`` leave a part open. An alt name may contain commas (DfuSe
    layouts do): everything after ``alt=`` is the name when it starts with
    ``@``."""
    text = spec.strip()
    alt: int | str | None = None
    head, sep, alt_text = text.partition(",alt=@")
    if sep:
        alt, text = "@" + alt_text, head
    fields: dict[str, str] = {}
    usb_id = None
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            if usb_id is not None:
                raise InputError(f"--usb {spec!r}: give one VID:PID")
            usb_id = part
        elif key in ("serial", "alt", "path"):
            fields[key] = value
        else:
            raise InputError(f"--usb {spec!r}: unknown field {key!r} (use serial=, alt= or path=)")
    vendor_id = product_id = None
    if usb_id is not None:
        vid, colon, pid = usb_id.partition(":")
        if not colon:
            raise InputError(f"--usb {spec!r}: write the device as VID:PID, e.g. 0483:df11")
        vendor_id, product_id = _hex16(vid, "vendor ID", spec), _hex16(pid, "product ID", spec)
    if "alt" in fields:
        alt = int(fields["alt"]) if fields["alt"].isdigit() else fields["alt"]
    return Selector(vendor_id, product_id, fields.get("serial"), alt, fields.get("path"))


@dataclass(frozen=True)
class AltSetting:
    number: int
    name: str | None
    layout: MemoryLayout | None
    """The DfuSe memory layout the name describes, if it is one."""


@dataclass(frozen=True)
class DfuDeviceInfo:
    vendor_id: int
    product_id: int
    serial: str | None
    manufacturer: str | None
    product: str | None
    bus: int | None
    address: int | None
    path: str | None
    mode: str
    """``dfu`` (the bootloader: ready to flash) or ``runtime`` (the
    application; it is detached into DFU mode first)."""
    interface: int
    configuration: int
    alts: tuple[AltSetting, ...]
    functional: FunctionalDescriptor | None
    access_error: str | None = None
    """Why strings could not be read (no permission), when they could not."""
    access_exception: UsbError | None = field(default=None, repr=False, compare=False)
    """The same, as the error to raise when the device must be opened."""
    device: Any = field(default=None, repr=False, compare=False)
    """The pyusb ``usb.core.Device``."""

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    def alt_setting(self, wanted: int | str | None) -> AltSetting:
        """The alt setting by number, exact name or unique name prefix
        (the first one when ``wanted`` is None)."""
        if wanted is None:
            return self.alts[0]
        if isinstance(wanted, int):
            for alt in self.alts:
                if alt.number == wanted:
                    return alt
        else:
            exact = [a for a in self.alts if a.name == wanted]
            loose = [a for a in self.alts if a.name and a.name.startswith(wanted)]
            found = exact or loose
            if len(found) == 1:
                return found[0]
        names = "; ".join(f"{a.number}: {a.name}" for a in self.alts)
        raise DeviceNotFoundError(
            f"{self.usb_id} has no single alt setting {wanted!r} (it has {names})"
        )

    def as_record(self) -> dict[str, Any]:
        fd = self.functional
        return {
            "usb_id": self.usb_id,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "bus": self.bus,
            "address": self.address,
            "path": self.path,
            "mode": self.mode,
            "interface": self.interface,
            "alts": [{"alt": a.number, "name": a.name} for a in self.alts],
            "dfu_version": f"{fd.dfu_version:04x}" if fd else None,
            "transfer_size": fd.transfer_size if fd else None,
            "access_error": self.access_error,
        }


def usb_error(exc: BaseException, what: str, info: DfuDeviceInfo | None = None) -> UsbError:
    """A pyusb/libusb error as the otaflash error that says what to do."""
    code = getattr(exc, "errno", None)
    where = f"{info.usb_id}: " if info is not None else ""
    if code in (errno.EACCES, errno.EPERM):
        return UsbPermissionError(
            f"{where}permission denied while {what}",
            info.vendor_id if info else None,
            info.product_id if info else None,
        )
    if code == errno.ENODEV:
        return UsbError(f"{where}the device disconnected while {what}")
    if code == errno.ETIMEDOUT:
        return UsbError(f"{where}the device did not answer while {what}")
    if code == errno.EPIPE:
        return UsbError(f"{where}the device stalled a request while {what}")
    return UsbError(f"{where}USB error while {what}: {exc}")


def _backend_error(exc: BaseException) -> UsbError:
    return UsbError(
        f"no USB backend: {exc}",
    )


#: The pyusb backend used when a function is given none (None: libusb).
_default_backend: Any = None


def set_default_backend(backend: Any) -> Any:
    """Makes ``backend`` (a pyusb backend, e.g. an emulated bus) the one
    every otaflash USB function uses unless given another; returns the
    previous one. ``None`` goes back to libusb."""
    global _default_backend
    previous, _default_backend = _default_backend, backend
    return previous


def rescan_backend(backend: Any = None) -> Any:
    """A backend that sees devices plugged in since this process started.

    libusb learns of new devices from udev's events; where no udev daemon
    runs (containers, minimal systems) a long-lived libusb context never
    does, so a device that re-enumerated (after DETACH) stays invisible to
    it. A new context scans sysfs afresh. Other backends are returned as
    they are."""
    if backend is not None or _default_backend is not None:
        return backend if backend is not None else _default_backend
    base = usb.backend.libusb1.get_backend()
    if base is None:
        return None
    return usb.backend.libusb1._LibUSB(base.lib)


def _enumerate(backend: Any) -> Iterator[Any]:
    if backend is None:
        backend = _default_backend

    try:
        yield from usb.core.find(find_all=True, backend=backend)
    except usb.core.NoBackendError as exc:
        error = _backend_error(exc)
        error.hint = "install libusb 1.0 (Debian: apt install libusb-1.0-0)"
        raise error from None


def _string(device: Any, index: int) -> str | None:
    if not index:
        return None
    return str(usb.util.get_string(device, index))


def _functional(extra: Any) -> FunctionalDescriptor | None:
    data = bytes(extra or b"")
    at = 0
    while at + 2 <= len(data):
        length = data[at]
        if length < 2:
            break
        if data[at + 1] == FUNCTIONAL_DESCRIPTOR:
            try:
                return FunctionalDescriptor.parse(data[at : at + length])
            except ValueError:
                return None
        at += length
    return None


def _access_error(device: Any, exc: BaseException) -> UsbError:
    """Why strings could not be read. pyusb turns "no permission" into "no
    langid" (a ValueError); asking for the langids again gives the real cause."""
    if isinstance(exc, ValueError):
        try:
            usb.util.get_langids(device)
        except OSError as real:
            exc = real
    error = usb_error(exc, "reading its strings")
    usb_id = f"{device.idVendor:04x}:{device.idProduct:04x}"
    if isinstance(error, UsbPermissionError):
        return UsbPermissionError(
            f"{usb_id}: permission denied while reading its strings",
            device.idVendor,
            device.idProduct,
        )
    return type(error)(f"{usb_id}: {error}")


def _describe(device: Any) -> DfuDeviceInfo | None:
    """The device's DFU interface, or None when it has none."""
    try:
        configs = list(device)
    except Exception:  # a device whose descriptors cannot be read is not ours to list
        return None
    for config in configs:
        dfu_intfs = [
            intf
            for intf in config
            if intf.bInterfaceClass == DFU_CLASS and intf.bInterfaceSubClass == DFU_SUBCLASS
        ]
        if not dfu_intfs:
            continue
        number = dfu_intfs[0].bInterfaceNumber
        alts_raw = [i for i in dfu_intfs if i.bInterfaceNumber == number]
        functional = None
        for intf in alts_raw:
            functional = functional or _functional(intf.extra_descriptors)
        functional = functional or _functional(config.extra_descriptors)
        access_error: UsbError | None = None
        names: dict[int, str | None] = {}
        serial = manufacturer = product = None
        try:
            serial = _string(device, device.iSerialNumber)
            manufacturer = _string(device, device.iManufacturer)
            product = _string(device, device.iProduct)
            for intf in alts_raw:
                names[intf.bAlternateSetting] = _string(device, intf.iInterface)
        except (ValueError, OSError) as exc:  # USBError is an OSError
            access_error = _access_error(device, exc)
        alts = []
        for intf in alts_raw:
            name = names.get(intf.bAlternateSetting)
            layout = None
            if name and name.startswith("@"):
                try:
                    layout = MemoryLayout.parse(name)
                except InputError:
                    layout = None
            alts.append(AltSetting(intf.bAlternateSetting, name, layout))
        ports = getattr(device, "port_numbers", None)
        path = None
        if device.bus is not None and ports:
            path = f"{device.bus}-{'.'.join(str(p) for p in ports)}"
        return DfuDeviceInfo(
            vendor_id=device.idVendor,
            product_id=device.idProduct,
            serial=serial,
            manufacturer=manufacturer,
            product=product,
            bus=device.bus,
            address=device.address,
            path=path,
            mode="runtime" if alts_raw[0].bInterfaceProtocol == PROTOCOL_RUNTIME else "dfu",
            interface=number,
            configuration=config.bConfigurationValue,
            alts=tuple(alts),
            functional=functional,
            access_error=(
                f"{access_error} ({access_error.hint})"
                if isinstance(access_error, UsbPermissionError)
                else str(access_error)
            )
            if access_error is not None
            else None,
            access_exception=access_error,
            device=device,
        )
    return None


def find_dfu_devices(
    selector: Selector | None = None, *, backend: Any = None
) -> list[DfuDeviceInfo]:
    """Every DFU device (run-time or DFU mode) the selector matches."""
    found = []
    for device in _enumerate(backend):
        # Cheap filter before any string request.
        if selector is not None and selector.vendor_id not in (None, device.idVendor):
            continue
        info = _describe(device)
        if info is not None and (selector is None or selector.matches(info)):
            found.append(info)
    return found
