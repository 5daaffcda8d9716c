"""Serial ports: opening them (device paths and pyserial URLs) and finding
them by USB vendor/product ID and serial number.

pyserial opens everything: ``/dev/ttyUSB0``, ``socket://host:port`` (a raw
TCP serial server such as ser2net), ``rfc2217://host:port`` (a Telnet
COM-port server that also carries baud changes), ``loop://`` (an echo for
tests). The Rust core then drives the port: real ports through their file
descriptor, URL ports through pyserial's ``read``/``write``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import serial
from serial.tools import list_ports as _list_ports
from serial.tools.list_ports_common import ListPortInfo

from otaflash.errors import InputError, TransportError

__all__ = [
    "PortFilter",
    "PortInfo",
    "find_port",
    "list_ports",
    "open_port",
    "opened",
    "parse_port_filter",
]

PARITIES = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}


def is_url(port: str) -> bool:
    return "://" in port


def open_port(port: str, baudrate: int = 115200, *, parity: str = "none") -> serial.SerialBase:
    """Opens ``port`` (a device path or a pyserial URL) raw, 8 data bits, 1 stop bit.

    Device paths are opened exclusively, so two programs never share a port by
    accident. Raises :class:`~otaflash.errors.TransportError` naming the cause.
    """
    try:
        parity_code = PARITIES[parity]
    except KeyError:
        raise InputError(f"unknown parity {parity!r}; choose none, even or odd") from None
    kwargs: dict[str, Any] = {
        "baudrate": baudrate,
        "bytesize": serial.EIGHTBITS,
        "parity": parity_code,
        "stopbits": serial.STOPBITS_ONE,
        "timeout": 0,
        "write_timeout": None,
    }
    if not is_url(port):
        kwargs["exclusive"] = True
    try:
        return serial.serial_for_url(port, **kwargs)
    except ValueError as error:
        raise InputError(f"cannot open {port}: {error}") from error
    except (OSError, serial.SerialException) as error:
        raise _open_error(port, error) from error


def _open_error(port: str, error: Exception) -> TransportError:
    code = getattr(error, "errno", None)
    text = str(error)
    if code == errno.ENOENT or "No such file" in text:
        cause = TransportError(f"cannot open {port}: no such port")
        cause.hint = "`otaflash list` shows the serial ports this machine has"
    elif code == errno.EACCES or "Permission denied" in text:
        cause = TransportError(f"cannot open {port}: permission denied")
        cause.hint = "add yourself to the `dialout` group (then log in again), or use sudo"
    elif code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
        cause = TransportError(f"cannot open {port}: another program is using it")
        cause.hint = "close the other program (a terminal, ModemManager) and try again"
    elif code == errno.ECONNREFUSED or "refused" in text:
        cause = TransportError(f"cannot open {port}: the connection was refused")
        cause.hint = "check that the serial server is running at that host and port"
    else:
        cause = TransportError(f"cannot open {port}: {text}")
    return cause


@contextmanager
def opened(
    port: str | serial.SerialBase, baudrate: int = 115200, *, parity: str = "none"
) -> Iterator[serial.SerialBase]:
    """``port`` as an open pyserial object: opened (and closed after) when a name."""
    if not isinstance(port, str):
        yield port
        return
    handle = open_port(port, baudrate, parity=parity)
    try:
        yield handle
    finally:
        handle.close()


@dataclass(frozen=True)
class PortInfo:
    """One serial port this machine has, as pyserial's ``list_ports`` sees it."""

    device: str
    description: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    location: str | None = None

    @property
    def usb_id(self) -> str | None:
        """``VID:PID`` in hex, as lsusb prints it, for USB ports."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"

    @classmethod
    def from_pyserial(cls, info: ListPortInfo) -> PortInfo:
        return cls(
            device=info.device,
            description=info.description or "",
            vid=info.vid,
            pid=info.pid,
            serial_number=info.serial_number,
            manufacturer=info.manufacturer,
            product=info.product,
            location=info.location,
        )

    def as_record(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "usb_id": self.usb_id,
            "vid": self.vid,
            "pid": self.pid,
            "serial_number": self.serial_number,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "description": self.description,
            "location": self.location,
        }


@dataclass(frozen=True)
class PortFilter:
    """One condition on a port: ``vid``, ``pid``, ``serial`` or ``name``."""

    key: str
    value: str

    def matches(self, port: PortInfo) -> bool:
        if self.key in ("vid", "pid"):
            have = port.vid if self.key == "vid" else port.pid
            return have is not None and have == _parse_id(self.value)
        if self.key == "serial":
            return (port.serial_number or "").lower() == self.value.lower()
        # name: a substring of the device path or its description
        needle = self.value.lower()
        return needle in port.device.lower() or needle in port.description.lower()


FILTER_KEYS = ("vid", "pid", "serial", "name")


def _parse_id(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise InputError(
            f"{text!r} is not a USB ID; give it in hex like lsusb shows it (0483)"
        ) from None


def parse_port_filter(spec: str) -> list[PortFilter]:
    """``vid=0483``, ``pid=0x5740``, ``serial=ABC123``, ``name=ttyACM``, ``0483:5740``,
    or several of them joined by commas (all must match)."""
    filters: list[PortFilter] = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            filters.extend(_parse_one_filter(part))
    if not filters:
        raise InputError(f"empty port filter {spec!r}")
    return filters


def _parse_one_filter(spec: str) -> list[PortFilter]:
    bad = InputError(
        f"bad port filter {spec!r}; use vid=HEX, pid=HEX, serial=TEXT, name=TEXT or VID:PID"
    )
    if "=" not in spec:
        vid, sep, pid = spec.partition(":")
        if sep and vid and pid:
            _parse_id(vid)
            _parse_id(pid)
            return [PortFilter("vid", vid), PortFilter("pid", pid)]
        raise bad
    key, _, value = spec.partition("=")
    key = key.strip().lower()
    if key == "serial_number":
        key = "serial"
    if key not in FILTER_KEYS or not value:
        raise bad
    if key in ("vid", "pid"):
        _parse_id(value)
    return [PortFilter(key, value.strip())]


def list_ports(
    filters: Iterable[PortFilter] = (), *, ports: Sequence[ListPortInfo] | None = None
) -> list[PortInfo]:
    """The serial ports matching every filter, sorted by device name.

    ``ports`` replaces pyserial's scan (for tests and for callers that
    already have one).
    """
    found = _list_ports.comports(include_links=False) if ports is None else ports
    wanted = list(filters)
    infos = [PortInfo.from_pyserial(p) for p in found]
    return sorted(
        (p for p in infos if all(f.matches(p) for f in wanted)),
        key=lambda p: p.device,
    )


def find_port(filters: Iterable[PortFilter], *, ports: Sequence[ListPortInfo] | None = None) -> str:
    """The device of the one port matching ``filters``; an error for none or several."""
    wanted = list(filters)
    matches = list_ports(wanted, ports=ports)
    described = " ".join(f"{f.key}={f.value}" for f in wanted)
    if not matches:
        error = TransportError(f"no serial port matches {described}")
        error.hint = "`otaflash list` shows the ports and their USB IDs; is the device plugged in?"
        raise error
    if len(matches) > 1:
        names = ", ".join(p.device for p in matches)
        raise InputError(
            f"{len(matches)} serial ports match {described} ({names}); "
            "add serial=... or give --port"
        )
    return matches[0].device


def describe_port(port: str | serial.SerialBase) -> str:
    return port if isinstance(port, str) else str(getattr(port, "port", None) or port)
