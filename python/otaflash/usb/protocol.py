"""USB DFU 1.1 and ST DfuSe on the wire: requests, states, status codes,
the functional descriptor, shared by the host (:mod:`otaflash.usb.dfu`) and
the emulated device (:mod:`otaflash.sim.dfu`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "DFU_CLASS",
    "DFU_SUBCLASS",
    "FUNCTIONAL_DESCRIPTOR",
    "DfuseCommand",
    "FunctionalDescriptor",
    "Request",
    "State",
    "Status",
    "StatusCode",
]

DFU_CLASS = 0xFE
DFU_SUBCLASS = 0x01
PROTOCOL_RUNTIME = 0x01
PROTOCOL_DFU_MODE = 0x02
FUNCTIONAL_DESCRIPTOR = 0x21
#: bmRequestType of class requests to an interface, host to device / device to host.
OUT = 0x21
IN = 0xA1


class Request(IntEnum):
    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class State(IntEnum):
    appIDLE = 0
    appDETACH = 1
    dfuIDLE = 2
    dfuDNLOAD_SYNC = 3
    dfuDNBUSY = 4
    dfuDNLOAD_IDLE = 5
    dfuMANIFEST_SYNC = 6
    dfuMANIFEST = 7
    dfuMANIFEST_WAIT_RESET = 8
    dfuUPLOAD_IDLE = 9
    dfuERROR = 10

    @property
    def label(self) -> str:
        """The spec's spelling: ``dfuDNLOAD-IDLE``."""
        return self.name.replace("_", "-")


class StatusCode(IntEnum):
    OK = 0x00
    errTARGET = 0x01
    errFILE = 0x02
    errWRITE = 0x03
    errERASE = 0x04
    errCHECK_ERASED = 0x05
    errPROG = 0x06
    errVERIFY = 0x07
    errADDRESS = 0x08
    errNOTDONE = 0x09
    errFIRMWARE = 0x0A
    errVENDOR = 0x0B
    errUSBR = 0x0C
    errPOR = 0x0D
    errUNKNOWN = 0x0E
    errSTALLEDPKT = 0x0F

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


#: The DFU 1.1 spec's words for each status (table 6.2).
_MEANINGS = {
    StatusCode.OK: "no error",
    StatusCode.errTARGET: "the file is not targeted for use by this device",
    StatusCode.errFILE: "the file is for this device but fails a vendor-specific check",
    StatusCode.errWRITE: "the device is unable to write memory",
    StatusCode.errERASE: "memory erase failed",
    StatusCode.errCHECK_ERASED: "memory erase check failed",
    StatusCode.errPROG: "program memory function failed",
    StatusCode.errVERIFY: "programmed memory failed verification",
    StatusCode.errADDRESS: "cannot program memory: the address is out of range",
    StatusCode.errNOTDONE: "received a zero-length download but the device thinks it "
    "does not have all the data yet",
    StatusCode.errFIRMWARE: "the device's firmware is corrupt and it cannot return to "
    "run-time operations",
    StatusCode.errVENDOR: "vendor-specific error",
    StatusCode.errUSBR: "the device detected an unexpected USB reset",
    StatusCode.errPOR: "the device detected an unexpected power-on reset",
    StatusCode.errUNKNOWN: "something went wrong, but the device does not know what",
    StatusCode.errSTALLEDPKT: "the device stalled an unexpected request",
}


@dataclass(frozen=True)
class Status:
    """A GETSTATUS answer."""

    status: int
    poll_timeout_ms: int
    state: int
    string_index: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Status:
        if len(data) < 6:
            raise ValueError(f"GETSTATUS answered {len(data)} bytes, 6 are due")
        return cls(data[0], int.from_bytes(data[1:4], "little"), data[4], data[5])

    def encode(self) -> bytes:
        return bytes(
            [
                self.status,
                *self.poll_timeout_ms.to_bytes(3, "little"),
                self.state,
                self.string_index,
            ]
        )

    @property
    def status_name(self) -> str:
        try:
            return StatusCode(self.status).name
        except ValueError:
            return f"status {self.status:#04x}"

    @property
    def state_name(self) -> str:
        try:
            return State(self.state).label
        except ValueError:
            return f"state {self.state}"

    def describe(self) -> str:
        """``errWRITE (the device is unable to write memory), state dfuERROR``."""
        try:
            meaning = StatusCode(self.status).meaning
        except ValueError:
            meaning = "a status the DFU specification does not define"
        return f"{self.status_name} ({meaning}), state {self.state_name}"


class DfuseCommand(IntEnum):
    """Commands DfuSe devices take as DNLOAD block 0."""

    GET_COMMANDS = 0x00
    SET_ADDRESS = 0x21
    ERASE = 0x41
    READ_UNPROTECT = 0x92


@dataclass(frozen=True)
class FunctionalDescriptor:
    """The DFU functional descriptor (type 0x21) of a DFU interface."""

    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    dfu_version: int

    LENGTH = 9

    @property
    def can_download(self) -> bool:
        return bool(self.attributes & 0x01)

    @property
    def can_upload(self) -> bool:
        return bool(self.attributes & 0x02)

    @property
    def manifestation_tolerant(self) -> bool:
        return bool(self.attributes & 0x04)

    @property
    def will_detach(self) -> bool:
        return bool(self.attributes & 0x08)

    @property
    def is_dfuse(self) -> bool:
        return self.dfu_version == 0x011A

    @classmethod
    def parse(cls, data: bytes) -> FunctionalDescriptor:
        # DFU 1.0 devices may end it after wTransferSize (7 bytes).
        if len(data) < 7 or data[1] != FUNCTIONAL_DESCRIPTOR:
            raise ValueError("not a DFU functional descriptor")
        attributes, detach, transfer = struct.unpack_from("<BHH", data, 2)
        version = struct.unpack_from("<H", data, 7)[0] if len(data) >= 9 else 0x0100
        return cls(attributes, detach, transfer, version)

    def encode(self) -> bytes:
        return struct.pack(
            "<BBBHHH",
            self.LENGTH,
            FUNCTIONAL_DESCRIPTOR,
            self.attributes,
            self.detach_timeout_ms,
            self.transfer_size,
            self.dfu_version,
        )
