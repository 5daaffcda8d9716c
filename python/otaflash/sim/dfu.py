"""An emulated DFU device: by default ST's DfuSe system bootloader (STM32,
``0483:df11``, bcdDFU 0x011A, alt 0 = internal flash with its memory
layout, alt 1 = option bytes), or a plain DFU 1.1 device (``dfuse=False``).
Its flash is an otaflash flash target, so ``sim:`` files give it NOR
semantics: erased to 0xFF, programming only clears bits.

The device answers USB control requests (:meth:`EmulatedDfuDevice.control`):
the standard ones a host needs to enumerate it (descriptors, configuration,
alt setting) and the DFU class requests, following the DFU 1.1 state
machine: DNLOAD/GETSTATUS with bwPollTimeout (work happens on the GETSTATUS
that answers dfuDNBUSY), manifestation (tolerant or not), UPLOAD, dfuERROR
with a status code, CLRSTATUS/ABORT; in DfuSe mode the set-address, erase,
mass-erase and leave commands and address arithmetic of ST AN3156. A
run-time mode (``start_in_runtime=True``) takes DETACH and re-enumerates
in DFU mode.

Faults (:class:`Faults`) make it fail like hardware does: a block that
cannot be written (errWRITE), silent corruption that only a read-back
catches, unplugging after N blocks, slow erases. ``strict_timing`` stalls
requests that come before the bwPollTimeout it asked for.

Transports (:mod:`otaflash.sim.usb_backend`, :mod:`otaflash.sim.usbip`)
call :meth:`control` and, after each request, look at :attr:`reconnect` to
re-enumerate or unplug the device.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from otaflash import _core
from otaflash.usb.protocol import (
    DFU_CLASS,
    DFU_SUBCLASS,
    PROTOCOL_DFU_MODE,
    PROTOCOL_RUNTIME,
    DfuseCommand,
    FunctionalDescriptor,
    Request,
    State,
    Status,
    StatusCode,
)

__all__ = ["EmulatedDfuDevice", "Faults", "Gone", "Stall"]

ST_VENDOR = 0x0483
ST_DFU_PRODUCT = 0xDF11
ST_RUNTIME_PRODUCT = 0x5740
OPTION_BYTES_ADDRESS = 0x1FFFF800
OPTION_BYTES_LAYOUT = f"@Option Bytes  /0x{OPTION_BYTES_ADDRESS:08X}/01*016 e"


class Stall(Exception):
    """The device stalls the request (what libusb reports as a pipe error)."""


class Gone(Exception):
    """The device is unplugged."""


@dataclass
class Faults:
    write_error_at: int | None = None
    """Programming the block that covers this address fails: errWRITE."""
    erase_error_at: int | None = None
    """Erasing the page that holds this address fails: errERASE."""
    corrupt_at: int | None = None
    """A bit at this address is flipped as it is programmed, and the
    device says nothing: only a host's read-back catches it."""
    disconnect_after_blocks: int | None = None
    """Unplug after this many data blocks (DNLOAD with data) were taken."""
    program_poll_ms: int = 0
    """bwPollTimeout for a data block (real STM32: a few ms)."""
    erase_poll_ms: int = 0
    """bwPollTimeout for a page or mass erase (real STM32: 20-100 ms)."""
    manifest_poll_ms: int = 0


@dataclass
class Stats:
    requests: int = 0
    blocks: int = 0
    uploads: int = 0
    erases: int = 0
    mass_erases: int = 0
    early_requests: int = 0
    requests_by_name: dict[str, int] = field(default_factory=dict)


def _string_descriptor(text: str) -> bytes:
    data = text.encode("utf-16-le")
    return bytes([2 + len(data), 3]) + data


class EmulatedDfuDevice:
    def __init__(
        self,
        flash: str,
        *,
        address: int = 0x0800_0000,
        vendor_id: int = ST_VENDOR,
        product_id: int = ST_DFU_PRODUCT,
        runtime_product_id: int = ST_RUNTIME_PRODUCT,
        serial: str = "OTAFLASH0001",
        transfer_size: int = 2048,
        dfuse: bool = True,
        manifestation_tolerant: bool = True,
        can_upload: bool = True,
        will_detach: bool = True,
        start_in_runtime: bool = False,
        faults: Faults | None = None,
        strict_timing: bool = False,
    ) -> None:
        self.memory = _core.FlashBlocks(flash)
        size, erase_size, _ = self.memory.geometry()
        self.size = size
        self.page_size = erase_size
        self.base = address if dfuse else 0
        self.vendor_id = vendor_id
        self.product_id = product_id
        self.runtime_product_id = runtime_product_id
        self.serial = serial
        self.transfer_size = transfer_size
        self.dfuse = dfuse
        self.manifestation_tolerant = manifestation_tolerant
        self.can_upload = can_upload
        self.will_detach = will_detach
        self.faults = faults or Faults()
        self.strict_timing = strict_timing
        self.option_bytes = bytearray(b"\xaa\x55\xff\x00" * 4)
        self.stats = Stats()
        self.firmware_size = 0
        self.mode = "runtime" if start_in_runtime else "dfu"
        self.connected = True
        #: Set by a request whose effect is a new enumeration: ``"reenumerate"``
        #: (same device, new descriptors) or ``"unplug"``. Transports act on
        #: it after answering, then clear it.
        self.reconnect: str | None = None
        self.configuration = 0
        self.alt = 0
        self._reset_dfu_state()

    # -- identity and descriptors ---------------------------------------------
    @property
    def layout(self) -> str:
        pages = self.size // self.page_size
        if self.page_size % 1024 == 0:
            return f"@Internal Flash  /0x{self.base:08X}/{pages:02d}*{self.page_size // 1024:03d}Kg"
        return f"@Internal Flash  /0x{self.base:08X}/{pages:02d}*{self.page_size:03d} g"

    def alt_names(self) -> list[str]:
        if self.mode == "runtime":
            return ["otaflash emulated application (DFU run-time)"]
        if self.dfuse:
            return [self.layout, OPTION_BYTES_LAYOUT]
        return ["otaflash emulated firmware"]

    def functional(self) -> FunctionalDescriptor:
        attributes = 0x01 | (0x02 if self.can_upload else 0)
        attributes |= (0x04 if self.manifestation_tolerant else 0) | (
            0x08 if self.will_detach else 0
        )
        return FunctionalDescriptor(
            attributes, 255, self.transfer_size, 0x011A if self.dfuse else 0x0110
        )

    def device_descriptor(self) -> bytes:
        product = self.runtime_product_id if self.mode == "runtime" else self.product_id
        return struct.pack(
            "<BBHBBBBHHHBBBB",
            18, 1, 0x0200, 0, 0, 0, 64, self.vendor_id, product, 0x2200, 1, 2, 3, 1,
        )  # fmt: skip

    def config_descriptor(self) -> bytes:
        protocol = PROTOCOL_RUNTIME if self.mode == "runtime" else PROTOCOL_DFU_MODE
        body = b""
        for number, _ in enumerate(self.alt_names()):
            body += struct.pack(
                "<BBBBBBBBB", 9, 4, 0, number, 0, DFU_CLASS, DFU_SUBCLASS, protocol, 4 + number
            )
        body += self.functional().encode()
        total = 9 + len(body)
        return struct.pack("<BBHBBBBB", 9, 2, total, 1, 1, 0, 0x80, 50) + body

    def strings(self) -> dict[int, str]:
        names = {1: "otaflash emulator", 2: "STM32 BOOTLOADER" if self.dfuse else "DFU device"}
        names[3] = self.serial
        for number, name in enumerate(self.alt_names()):
            names[4 + number] = name
        return names

    # -- the DFU state machine --------------------------------------------------
    def _reset_dfu_state(self) -> None:
        self.state = State.appIDLE if self.mode == "runtime" else State.dfuIDLE
        self.status = StatusCode.OK
        self.pointer = self.base
        self.pending: tuple[str, object] | None = None
        self.poll_ms = 0
        self.busy_until = 0.0
        self.download_offset = 0
        self.erased_until = 0
        self.manifest_step = 0

    def _error(self, status: StatusCode) -> None:
        self.state = State.dfuERROR
        self.status = status

    def _stall(self) -> Stall:
        """An unexpected request: stall it; in DFU mode that is dfuERROR too."""
        if self.mode == "dfu":
            self._error(StatusCode.errSTALLEDPKT)
        return Stall()

    def usb_reset(self) -> None:
        """A bus reset: run-time mode after DETACH switches to DFU mode; a
        DFU-mode device after manifestation runs its firmware."""
        if self.mode == "runtime" and self.state == State.appDETACH:
            self.mode = "dfu"
            self.reconnect = "reenumerate"
        elif self.mode == "dfu" and self.state == State.dfuMANIFEST_WAIT_RESET:
            self.mode = "runtime"
            self.reconnect = "reenumerate"
        self.configuration = 0
        self.alt = 0
        self._reset_dfu_state()

    def control(
        self, request_type: int, request: int, value: int, index: int, data: bytes | int
    ) -> bytes:
        """One control transfer: ``data`` is the OUT payload, or the wLength
        of an IN request. Returns the IN data (b"" for OUT). Raises
        :class:`Stall` or :class:`Gone`."""
        if not self.connected:
            raise Gone()
        self.stats.requests += 1
        kind = request_type & 0x60
        if kind == 0x00:
            return self._standard(request_type, request, value, index, data)
        if kind == 0x20 and request_type & 0x1F == 0x01:
            name = Request(request).name if request in Request._value2member_map_ else "?"
            self.stats.requests_by_name[name] = self.stats.requests_by_name.get(name, 0) + 1
            if self.strict_timing and time.monotonic() < self.busy_until:
                self.stats.early_requests += 1
                raise Stall()  # busy: a real device would not answer yet
            return self._class(request, value, data)
        raise Stall()

    def _standard(  # noqa: PLR0911, PLR0912 (one branch per standard request)
        self, request_type: int, request: int, value: int, index: int, data: bytes | int
    ) -> bytes:
        length = data if isinstance(data, int) else 0
        if request == 6:  # GET_DESCRIPTOR
            kind, number = value >> 8, value & 0xFF
            if kind == 1:
                return self.device_descriptor()[:length]
            if kind == 2 and number == 0:
                return self.config_descriptor()[:length]
            if kind == 3:
                if number == 0:
                    return bytes([4, 3, 0x09, 0x04])[:length]
                text = self.strings().get(number)
                if text is not None:
                    return _string_descriptor(text)[:length]
            raise Stall()
        if request == 9:  # SET_CONFIGURATION
            if value not in (0, 1):
                raise Stall()
            self.configuration = value
            self.alt = 0
            return b""
        if request == 8:
            return bytes([self.configuration])[:length]
        if request == 11:  # SET_INTERFACE
            if index != 0 or value >= len(self.alt_names()):
                raise Stall()
            self.alt = value
            return b""
        if request == 10:
            return bytes([self.alt])[:length]
        if request == 0:  # GET_STATUS
            return b"\x00\x00"[:length]
        if request in (1, 3, 5):  # CLEAR_FEATURE, SET_FEATURE, SET_ADDRESS
            return b""
        raise Stall()

    def _status_bytes(self) -> bytes:
        return Status(self.status, self.poll_ms, self.state).encode()

    def _class(  # noqa: PLR0911, PLR0912 (the DFU state table, one branch per request)
        self, request: int, value: int, data: bytes | int
    ) -> bytes:
        length = data if isinstance(data, int) else 0
        payload = data if isinstance(data, bytes) else b""
        if self.mode == "runtime":
            if request == Request.DETACH:
                self.state = State.appDETACH
                if self.will_detach:
                    self.mode = "dfu"
                    self._reset_dfu_state()
                    self.reconnect = "reenumerate"
                return b""
            if request == Request.GETSTATUS:
                return Status(0, 0, self.state).encode()[:length]
            if request == Request.GETSTATE:
                return bytes([self.state])[:length]
            raise self._stall()
        if request == Request.GETSTATUS:
            self._advance()
            answer = self._status_bytes()[:length]
            if self.reconnect is None and self.state == State.dfuMANIFEST_WAIT_RESET:
                # A non-tolerant device resets itself to run the new image.
                self.mode = "runtime"
                self._reset_dfu_state()
                self.reconnect = "reenumerate"
            return answer
        if request == Request.GETSTATE:
            return bytes([self.state])[:length]
        if request == Request.CLRSTATUS:
            if self.state != State.dfuERROR:
                raise self._stall()
            self.state, self.status = State.dfuIDLE, StatusCode.OK
            return b""
        if request == Request.ABORT:
            if self.state in (State.dfuIDLE, State.dfuDNLOAD_IDLE, State.dfuUPLOAD_IDLE):
                self.state = State.dfuIDLE
                self.download_offset = 0
                return b""
            raise self._stall()
        if request == Request.DNLOAD:
            return self._dnload(value, payload)
        if request == Request.UPLOAD:
            return self._upload(value, length)
        raise self._stall()

    def _dnload(self, block: int, data: bytes) -> bytes:
        if self.state not in (State.dfuIDLE, State.dfuDNLOAD_IDLE):
            raise self._stall()
        if len(data) > self.transfer_size:
            raise self._stall()
        if not data:
            if self.state != State.dfuDNLOAD_IDLE:
                raise self._stall()  # a zero-length download from dfuIDLE
            self.state = State.dfuMANIFEST_SYNC
            self.manifest_step = 0
            return b""
        if self.dfuse and block == 0:
            self.pending = ("command", data)
        elif self.dfuse and block == 1:
            raise self._stall()
        else:
            self.pending = ("data", (block, data))
            self.stats.blocks += 1
            limit = self.faults.disconnect_after_blocks
            if limit is not None and self.stats.blocks > limit:
                self.connected = False
                self.reconnect = "unplug"
                raise Gone()
        self.state = State.dfuDNLOAD_SYNC
        return b""

    def _advance(self) -> None:
        """What a GETSTATUS does: start the pending work (answering dfuDNBUSY
        with its poll timeout), or finish it."""
        if self.state == State.dfuDNLOAD_SYNC and self.pending is not None:
            kind, payload = self.pending
            self.pending = None
            outcome = self._command(payload) if kind == "command" else self._program(payload)  # type: ignore[arg-type]
            if outcome is not StatusCode.OK:
                self._error(outcome)
                self.poll_ms = 0
                return
            self.state = State.dfuDNBUSY
            self.busy_until = time.monotonic() + self.poll_ms / 1000
            return
        if self.state == State.dfuDNBUSY:
            self.state = State.dfuDNLOAD_IDLE
            self.poll_ms = 0
            return
        if self.state == State.dfuMANIFEST_SYNC:
            if self.dfuse:
                # DfuSe "leave": the bootloader jumps to the application.
                self.state = State.dfuMANIFEST
                self.mode = "runtime"
                self.reconnect = "reenumerate"
                return
            self.state = State.dfuMANIFEST
            self.poll_ms = self.faults.manifest_poll_ms
            self.busy_until = time.monotonic() + self.poll_ms / 1000
            return
        if self.state == State.dfuMANIFEST:
            self.poll_ms = 0
            if self.manifestation_tolerant:
                self.state = State.dfuIDLE
                self.download_offset = 0
            else:
                self.state = State.dfuMANIFEST_WAIT_RESET

    # -- memory -------------------------------------------------------------------
    def _region(self, address: int, length: int) -> tuple[str, int] | None:
        """Where ``[address, address + length)`` lives: ("flash", offset) or
        ("option", offset); None when outside the memory map."""
        if self.base <= address and address + length <= self.base + self.size:
            return "flash", address - self.base
        if self.dfuse and address >= OPTION_BYTES_ADDRESS:
            end = OPTION_BYTES_ADDRESS + len(self.option_bytes)
            if address + length <= end:
                return "option", address - OPTION_BYTES_ADDRESS
        return None

    def _command(self, data: bytes) -> StatusCode:  # noqa: PLR0911 (one exit per command)
        command = data[0]
        argument = int.from_bytes(data[1:5], "little") if len(data) >= 5 else None
        if command == DfuseCommand.SET_ADDRESS and argument is not None:
            if self._region(argument, 0) is None and argument != self.base + self.size:
                return StatusCode.errTARGET
            self.pointer = argument
            return StatusCode.OK
        if command == DfuseCommand.ERASE:
            if argument is None:
                self.poll_ms = max(self.faults.erase_poll_ms, 1) * 4
                self.stats.mass_erases += 1
                self.memory.erase(0, self.size)
                return StatusCode.OK
            region = self._region(argument, 1)
            if region is None or region[0] != "flash":
                return StatusCode.errTARGET
            page = region[1] - region[1] % self.page_size
            fault = self.faults.erase_error_at
            if fault is not None and self.base + page <= fault < self.base + page + self.page_size:
                return StatusCode.errERASE
            self.poll_ms = self.faults.erase_poll_ms
            self.stats.erases += 1
            self.memory.erase(page, self.page_size)
            return StatusCode.OK
        if command == DfuseCommand.READ_UNPROTECT:
            self.memory.erase(0, self.size)
            return StatusCode.OK
        return StatusCode.errUNKNOWN

    def _program(self, payload: tuple[int, bytes]) -> StatusCode:
        block, data = payload
        if self.dfuse:
            # ST's loader places block n at pointer + (n - 2) * its own wTransferSize
            # (USBD_DFU_XFER_SIZE), whatever the request's length: dfu-util relies on it.
            address = self.pointer + (block - 2) * self.transfer_size
        else:
            address = self.download_offset
        region = self._region(address, len(data))
        if region is None:
            return StatusCode.errADDRESS
        where, offset = region
        fault = self.faults.write_error_at
        if fault is not None and address <= fault < address + len(data):
            return StatusCode.errWRITE
        self.poll_ms = self.faults.program_poll_ms
        if where == "option":
            self.option_bytes[offset : offset + len(data)] = data
            return StatusCode.OK
        if not self.dfuse:
            # A plain DFU loader erases each page as the image reaches it.
            if self.download_offset == 0:
                self.erased_until = 0
            while self.erased_until < offset + len(data):
                self.memory.erase(self.erased_until, self.page_size)
                self.erased_until += self.page_size
        written = bytearray(data)
        corrupt = self.faults.corrupt_at
        if corrupt is not None and address <= corrupt < address + len(data):
            written[corrupt - address] ^= 0x10
        try:
            self.memory.program(offset, bytes(written))
        except OSError:
            return StatusCode.errPROG
        if not self.dfuse:
            self.download_offset += len(data)
            self.firmware_size = self.download_offset
        # Like ST's loader, check what was programmed (not-erased flash shows here).
        if self.memory.read(offset, len(data)) != bytes(written):
            return StatusCode.errVERIFY
        return StatusCode.OK

    def _upload(self, block: int, length: int) -> bytes:
        if not self.can_upload or self.state not in (State.dfuIDLE, State.dfuUPLOAD_IDLE):
            raise self._stall()
        self.stats.uploads += 1
        if self.dfuse:
            if block == 0:
                self.state = State.dfuUPLOAD_IDLE
                return bytes([0x00, 0x21, 0x41, 0x92])[:length]
            if block == 1:
                raise self._stall()
            address = self.pointer + (block - 2) * self.transfer_size
            region = self._region(address, length)
            if region is None:
                raise self._stall()
            self.state = State.dfuUPLOAD_IDLE
            where, offset = region
            if where == "option":
                return bytes(self.option_bytes[offset : offset + length])
            return self.memory.read(offset, length)
        # Plain DFU: the firmware from its start; a short packet ends it.
        offset = block * length
        size = self.firmware_size or self.size
        data = (
            self.memory.read(offset, max(0, min(length, size - offset))) if offset < size else b""
        )
        self.state = State.dfuUPLOAD_IDLE if len(data) == length else State.dfuIDLE
        return data


def _device_options(spec: str) -> dict[str, object]:
    """``serial=A,plain,runtime,write-error-at=0x08002000,disconnect-after-blocks=3``."""
    options: dict[str, object] = {}
    faults = Faults()
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key == "serial":
            options["serial"] = value
        elif key == "plain":
            options["dfuse"] = False
        elif key == "runtime":
            options["start_in_runtime"] = True
        elif key == "transfer-size":
            options["transfer_size"] = int(value, 0)
        elif key == "write-error-at":
            faults.write_error_at = int(value, 0)
        elif key == "disconnect-after-blocks":
            faults.disconnect_after_blocks = int(value, 0)
        else:
            raise SystemExit(f"unknown device option {key!r} in {spec!r}")
    options["faults"] = faults
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otaflash.sim.dfu --flash 'sim:DIR/{serial}.sim?...' --device
    serial=A [--device serial=B,plain ...]``: plug emulated devices into this
    machine's kernel (vhci_hcd over USB/IP, see :mod:`otaflash.sim.usbip`)
    and serve them until each is unplugged or the process is killed."""
    import threading  # noqa: PLC0415 (only the server needs threads)

    from otaflash.sim.usbip import serve_vhci  # noqa: PLC0415 (usbip is Linux-only)

    parser = argparse.ArgumentParser(prog="python -m otaflash.sim.dfu", description=main.__doc__)
    parser.add_argument(
        "--flash", required=True, help="flash target URI; {serial} is replaced per device"
    )
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="SPEC",
        help="serial=S[,plain][,runtime][,transfer-size=N][,write-error-at=ADDR]"
        "[,disconnect-after-blocks=N] (repeatable)",
    )
    parser.add_argument("--ready-dir", help="SERIAL.ready is created there once the kernel has it")
    args = parser.parse_args(argv)
    threads = []
    for number, spec in enumerate(args.device or ["serial=OTAFLASH0001"]):
        options = _device_options(spec)
        serial = str(options.setdefault("serial", f"OTAFLASH{number + 1:04d}"))
        device = EmulatedDfuDevice(args.flash.replace("{serial}", serial), **options)  # type: ignore[arg-type]
        ready = os.path.join(args.ready_dir, f"{serial}.ready") if args.ready_dir else None
        thread = threading.Thread(
            target=serve_vhci, args=(device,), kwargs={"ready_file": ready}, daemon=True
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
