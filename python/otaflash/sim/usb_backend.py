"""A pyusb backend (``usb.backend.IBackend``) that serves emulated devices
in-process, so the product's unmodified pyusb code finds, claims and talks
to them as it would to a device behind libusb:

>>> from otaflash.sim.dfu import EmulatedDfuDevice
>>> from otaflash.sim.usb_backend import EmulatedBackend
>>> device = EmulatedDfuDevice("sim:/tmp/f.sim?kind=nor&size=128k&erase=2k")  # doctest: +SKIP
>>> usb.core.find(idVendor=0x0483, backend=EmulatedBackend(device))           # doctest: +SKIP

Errors come out as libusb's would: a stalled request is a pipe error
(EPIPE), an unplugged device ENODEV. A device that re-enumerates (DETACH,
leave, reset) shows up as a new device; handles to the old one fail with
ENODEV, as they do on real hardware.
"""

from __future__ import annotations

import array
import errno
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from otaflash.sim.dfu import EmulatedDfuDevice, Gone, Stall

__all__ = ["EmulatedBackend"]

LIBUSB_ERROR_PIPE = -9
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5


def _gone() -> usb.core.USBError:
    return usb.core.USBError(
        "No such device (it may have been disconnected)", LIBUSB_ERROR_NO_DEVICE, errno.ENODEV
    )


def _stalled() -> usb.core.USBError:
    return usb.core.USBError("Pipe error", LIBUSB_ERROR_PIPE, errno.EPIPE)


@dataclass(frozen=True)
class _DeviceId:
    slot: int
    generation: int


@dataclass
class _Slot:
    device: EmulatedDfuDevice
    generation: int = 0
    address: int = 0


def _descriptors(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at + 2 <= len(data) and data[at] >= 2:
        out.append(data[at : at + data[at]])
        at += data[at]
    return out


class EmulatedBackend(usb.backend.IBackend):  # type: ignore[misc]
    """Serves ``devices`` on an emulated bus 1, one address each."""

    def __init__(self, *devices: EmulatedDfuDevice) -> None:
        self.slots = [_Slot(d, address=i + 2) for i, d in enumerate(devices)]
        self._next_address = len(devices) + 2
        self.transfers = 0

    # -- enumeration -------------------------------------------------------------
    def _live(self, dev: _DeviceId) -> EmulatedDfuDevice:
        slot = self.slots[dev.slot]
        if slot.generation != dev.generation or not slot.device.connected:
            raise _gone()
        return slot.device

    def enumerate_devices(self) -> Any:
        for index, slot in enumerate(self.slots):
            if slot.device.connected:
                yield _DeviceId(index, slot.generation)

    def get_device_descriptor(self, dev: _DeviceId) -> Any:
        device = self._live(dev)
        fields = [
            "bLength",
            "bDescriptorType",
            "bcdUSB",
            "bDeviceClass",
            "bDeviceSubClass",
            "bDeviceProtocol",
            "bMaxPacketSize0",
            "idVendor",
            "idProduct",
            "bcdDevice",
            "iManufacturer",
            "iProduct",
            "iSerialNumber",
            "bNumConfigurations",
        ]
        values = struct.unpack("<BBHBBBBHHHBBBB", device.device_descriptor())
        slot = self.slots[dev.slot]
        return SimpleNamespace(
            **dict(zip(fields, values, strict=True)),
            bus=1,
            address=slot.address,
            port_number=dev.slot + 1,
            port_numbers=(dev.slot + 1,),
            speed=3,  # high speed
        )

    def _parts(self, dev: _DeviceId) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The configuration header, its extra bytes, and (interface, extra) pairs."""
        parts = _descriptors(self._live(dev).config_descriptor())
        head, extra, interfaces = parts[0], b"", []
        for part in parts[1:]:
            if part[1] == 4:
                interfaces.append((part, b""))
            elif interfaces:
                interfaces[-1] = (interfaces[-1][0], interfaces[-1][1] + part)
            else:
                extra += part
        return head + extra, interfaces

    def get_configuration_descriptor(self, dev: _DeviceId, config: int) -> Any:
        if config != 0:
            raise IndexError("one configuration")
        head, _interfaces = self._parts(dev)
        values = struct.unpack("<BBHBBBBB", head[:9])
        fields = [
            "bLength",
            "bDescriptorType",
            "wTotalLength",
            "bNumInterfaces",
            "bConfigurationValue",
            "iConfiguration",
            "bmAttributes",
            "bMaxPower",
        ]
        return SimpleNamespace(
            **dict(zip(fields, values, strict=True)),
            extra_descriptors=array.array("B", head[9:]).tolist(),
        )

    def get_interface_descriptor(self, dev: _DeviceId, intf: int, alt: int, config: int) -> Any:
        _, interfaces = self._parts(dev)
        numbers = sorted({i[0][2] for i in interfaces})
        if intf >= len(numbers):
            raise IndexError("no such interface")
        alts = [i for i in interfaces if i[0][2] == numbers[intf]]
        if alt >= len(alts):
            raise IndexError("no such alt setting")
        desc, extra = alts[alt]
        fields = [
            "bLength",
            "bDescriptorType",
            "bInterfaceNumber",
            "bAlternateSetting",
            "bNumEndpoints",
            "bInterfaceClass",
            "bInterfaceSubClass",
            "bInterfaceProtocol",
            "iInterface",
        ]
        return SimpleNamespace(
            **dict(zip(fields, struct.unpack("<BBBBBBBBB", desc), strict=True)),
            extra_descriptors=list(extra),
        )

    def get_endpoint_descriptor(
        self, dev: _DeviceId, ep: int, intf: int, alt: int, config: int
    ) -> Any:
        raise IndexError("DFU interfaces have no endpoints besides ep0")

    # -- a session -----------------------------------------------------------------
    def open_device(self, dev: _DeviceId) -> _DeviceId:
        self._live(dev)
        return dev

    def close_device(self, dev_handle: _DeviceId) -> None:
        pass

    def _control(  # noqa: PLR0917 (a setup packet's fields)
        self, handle: _DeviceId, request_type: int, request: int, value: int,
        index: int, data: bytes | int,
    ) -> bytes:  # fmt: skip
        device = self._live(handle)
        self.transfers += 1
        try:
            return device.control(request_type, request, value, index, data)
        except Stall:
            raise _stalled() from None
        except Gone:
            raise _gone() from None
        finally:
            self._apply_reconnect(handle.slot)

    def _apply_reconnect(self, index: int) -> None:
        slot = self.slots[index]
        action, slot.device.reconnect = slot.device.reconnect, None
        if action is None:
            return
        slot.generation += 1  # the old handle dies; a new device enumerates
        slot.address = self._next_address
        self._next_address += 1
        if action == "unplug":
            slot.device.connected = False

    def set_configuration(self, dev_handle: _DeviceId, config_value: int) -> None:
        self._control(dev_handle, 0x00, 9, config_value, 0, b"")

    def get_configuration(self, dev_handle: _DeviceId) -> int:
        return self._live(dev_handle).configuration

    def set_interface_altsetting(self, dev_handle: _DeviceId, intf: int, altsetting: int) -> None:
        self._control(dev_handle, 0x01, 11, altsetting, intf, b"")

    def claim_interface(self, dev_handle: _DeviceId, intf: int) -> None:
        self._live(dev_handle)

    def release_interface(self, dev_handle: _DeviceId, intf: int) -> None:
        self._live(dev_handle)

    def ctrl_transfer(  # noqa: PLR0917 (pyusb's IBackend signature)
        self, dev_handle: _DeviceId, bmRequestType: int, bRequest: int,
        wValue: int, wIndex: int, data: array.array[int], timeout: int,
    ) -> int:  # fmt: skip
        if bmRequestType & 0x80:
            answer = self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, len(data))
            data[: len(answer)] = array.array("B", answer)
            return len(answer)
        self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data.tobytes())
        return len(data)

    def reset_device(self, dev_handle: _DeviceId) -> None:
        device = self._live(dev_handle)
        device.usb_reset()
        if device.reconnect is not None:
            self._apply_reconnect(dev_handle.slot)
            raise usb.core.USBError("Entity not found", LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)

    def is_kernel_driver_active(self, dev_handle: _DeviceId, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: _DeviceId, intf: int) -> None:
        pass

    def attach_kernel_driver(self, dev_handle: _DeviceId, intf: int) -> None:
        pass
