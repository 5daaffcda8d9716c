"""The DFU 1.1 / DfuSe host: one claimed DFU interface, driven with pyusb
control transfers.

:class:`DfuDevice` holds the protocol: GETSTATUS polling that honours
bwPollTimeout, recovery from dfuERROR (CLRSTATUS) or a half-done transfer
(ABORT), DNLOAD blocks, manifestation, UPLOAD, and the DfuSe commands (set
address pointer, page erase, mass erase, leave). Writes go through a
:class:`BlockWriter`, a push-style sink (``write(bytes)``, ``close()``) that
cuts whatever it is given into transfer-size blocks: a whole image read
from a file, or a stream rebuilt by the delta engine, is fed the same way.
Everything written is recorded (address, length, CRC, SHA-256) so that
:meth:`DfuDevice.verify` reads it back and names the first block that
differs.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import usb.core
import usb.util

from otaflash import _core, hashing
from otaflash.errors import DfuStatusError, InputError, UsbError, VerifyError
from otaflash.usb.devices import AltSetting, DfuDeviceInfo, usb_error
from otaflash.usb.layout import MemoryLayout
from otaflash.usb.protocol import IN, OUT, DfuseCommand, Request, State, Status

__all__ = ["BlockWriter", "DfuDevice", "Ledger"]

Progress = Callable[[str, int, "int | None"], object]

#: The longest a device may stay busy (erase of a big sector, manifestation).
BUSY_LIMIT_S = 60.0
#: States in which the device is working and polled again after bwPollTimeout.
_BUSY = {State.dfuDNLOAD_SYNC, State.dfuDNBUSY, State.dfuMANIFEST_SYNC, State.dfuMANIFEST}


@dataclass
class Ledger:
    """What was written: ``(address, length, crc)`` per block, in order, and
    the SHA-256 of all of it."""

    blocks: list[tuple[int, int, int]] = field(default_factory=list)
    sha256: Any = field(default_factory=hashing.sha256)
    size: int = 0

    def add(self, address: int, data: bytes) -> None:
        self.blocks.append((address, len(data), _core.dfu_crc(data)))
        self.sha256.update(data)
        self.size += len(data)

    def runs(self) -> list[tuple[int, int]]:
        """Contiguous ``(address, length)`` runs."""
        runs: list[tuple[int, int]] = []
        for address, length, _ in self.blocks:
            if runs and runs[-1][0] + runs[-1][1] == address:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((address, length))
        return runs


class DfuDevice:
    """One DFU interface in DFU mode, claimed with ``alt`` selected; a
    context manager that releases it."""

    def __init__(
        self,
        info: DfuDeviceInfo,
        alt: AltSetting,
        *,
        transfer_size: int | None = None,
        timeout_ms: int = 5000,
    ) -> None:
        self.info = info
        self.alt = alt
        self.timeout_ms = timeout_ms
        fd = info.functional
        size = transfer_size or (fd.transfer_size if fd else None)
        if not size:
            raise InputError(
                f"{info.usb_id} has no DFU functional descriptor, so its transfer size is "
                "unknown: give --transfer-size (dfu-util's -t)"
            )
        self.transfer_size = size
        self.device_transfer_size = fd.transfer_size if fd else None
        self.dfuse = fd.is_dfuse if fd else alt.layout is not None
        self.can_upload = fd.can_upload if fd else True
        self.manifestation_tolerant = fd.manifestation_tolerant if fd else False
        self._dev = info.device
        self._state: int | None = None
        self._block = 0
        self._pointer: int | None = None
        self._opened = False

    # -- claiming -------------------------------------------------------------
    def open(self) -> DfuDevice:
        dev, number = self._dev, self.info.interface
        try:
            try:
                config = dev.get_active_configuration()
            except usb.core.USBError:
                config = None
            if config is None or config.bConfigurationValue != self.info.configuration:
                dev.set_configuration(self.info.configuration)
            try:
                if dev.is_kernel_driver_active(number):
                    dev.detach_kernel_driver(number)
            except (NotImplementedError, usb.core.USBError):
                pass  # not every platform or backend has kernel drivers
            usb.util.claim_interface(dev, number)
            self._opened = True
            dev.set_interface_altsetting(interface=number, alternate_setting=self.alt.number)
        except usb.core.USBError as exc:
            raise usb_error(exc, f"claiming interface {number}", self.info) from None
        return self

    def close(self) -> None:
        if self._opened:
            self._opened = False
            # It may be gone already (it left DFU mode or was unplugged).
            with contextlib.suppress(usb.core.USBError):
                usb.util.release_interface(self._dev, self.info.interface)
        usb.util.dispose_resources(self._dev)

    def __enter__(self) -> DfuDevice:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------
    def _out(self, request: Request, value: int, data: bytes, what: str) -> None:
        try:
            self._dev.ctrl_transfer(OUT, request, value, self.info.interface, data, self.timeout_ms)
        except usb.core.USBError as exc:
            raise self._transfer_error(exc, request, what) from None

    def _in(self, request: Request, value: int, length: int, what: str) -> bytes:
        try:
            data = self._dev.ctrl_transfer(
                IN, request, value, self.info.interface, length, self.timeout_ms
            )
        except usb.core.USBError as exc:
            raise self._transfer_error(exc, request, what) from None
        return bytes(data)

    def _transfer_error(self, exc: BaseException, request: Request, what: str) -> Exception:
        """A stalled request usually means dfuERROR: report the device's own
        status then, after clearing it (unless GETSTATUS itself stalled)."""
        if getattr(exc, "errno", None) == errno.EPIPE and request != Request.GETSTATUS:
            try:
                status = self.get_status()
            except UsbError:
                status = None
            if status is not None and status.state == State.dfuERROR:
                return self._failure(status, what)
        return usb_error(exc, what, self.info)

    def get_status(self) -> Status:
        data = self._in(Request.GETSTATUS, 0, 6, "reading its status")
        try:
            status = Status.parse(data)
        except ValueError as exc:
            raise UsbError(f"{self.info.usb_id}: {exc}") from None
        self._state = status.state
        return status

    def get_state(self) -> int:
        data = self._in(Request.GETSTATE, 0, 1, "reading its state")
        if len(data) != 1:
            raise UsbError(f"{self.info.usb_id}: GETSTATE answered {len(data)} bytes")
        self._state = data[0]
        return data[0]

    def clear_status(self) -> None:
        self._out(Request.CLRSTATUS, 0, b"", "clearing its error status")
        self._state = None

    def abort(self) -> None:
        self._out(Request.ABORT, 0, b"", "aborting a transfer")
        self._state = State.dfuIDLE

    def _failure(self, status: Status, what: str) -> DfuStatusError:
        """Clears dfuERROR (so the device stays ready for another try) and
        returns the error to raise."""
        with contextlib.suppress(UsbError):
            self.clear_status()
        return DfuStatusError(
            f"{self.info.usb_id}: the device reported {status.describe()} while {what}",
            status.status,
            status.status_name,
            status.state_name,
        )

    def _wait(self, what: str, done: set[State]) -> Status:
        """GETSTATUS until the device leaves its busy states, sleeping the
        bwPollTimeout it asks for between polls."""
        deadline = time.monotonic() + BUSY_LIMIT_S
        while True:
            status = self.get_status()
            if status.state == State.dfuERROR:
                raise self._failure(status, what)
            if status.state in done:
                return status
            if status.state not in _BUSY:
                raise UsbError(
                    f"{self.info.usb_id}: the device went to {status.state_name} while {what}"
                )
            if time.monotonic() > deadline:
                raise UsbError(
                    f"{self.info.usb_id}: the device stayed busy ({status.state_name}) for "
                    f"{BUSY_LIMIT_S:.0f} s while {what}"
                )
            if status.poll_timeout_ms:
                time.sleep(status.poll_timeout_ms / 1000)

    def ensure_idle(self) -> Status:
        """Brings the device to dfuIDLE: CLRSTATUS from dfuERROR (a previous
        run's failure), ABORT from a half-done download or upload."""
        status = self.get_status()
        if status.state == State.dfuERROR:
            self.clear_status()
            status = self.get_status()
        elif status.state in (
            State.dfuDNLOAD_IDLE,
            State.dfuUPLOAD_IDLE,
            State.dfuDNLOAD_SYNC,
            State.dfuMANIFEST_SYNC,
        ):
            self.abort()
            status = self.get_status()
        if status.state != State.dfuIDLE:
            raise UsbError(
                f"{self.info.usb_id}: the device is in {status.state_name}, not dfuIDLE, and "
                "does not leave it"
            )
        return status

    # -- DfuSe commands ---------------------------------------------------------
    def _command(self, command: DfuseCommand, argument: int | None, what: str) -> None:
        if self._state == State.dfuUPLOAD_IDLE:
            self.abort()
        data = bytes([command])
        if argument is not None:
            data += argument.to_bytes(4, "little")
        self._out(Request.DNLOAD, 0, data, what)
        self._wait(what, {State.dfuDNLOAD_IDLE})
        self._block = 0

    def set_address(self, address: int) -> None:
        self._command(DfuseCommand.SET_ADDRESS, address, f"setting the address to {address:#010x}")
        self._pointer = address

    def erase_page(self, address: int) -> None:
        self._command(DfuseCommand.ERASE, address, f"erasing the page at {address:#010x}")

    def mass_erase(self) -> None:
        self._command(DfuseCommand.ERASE, None, "erasing all of its flash")

    def erase(self, pages: Sequence[tuple[int, int]], progress: Progress | None = None) -> int:
        total = sum(size for _, size in pages)
        done = 0
        for address, size in pages:
            self.erase_page(address)
            done += size
            if progress is not None:
                progress("erase", done, total)
        return total

    def leave(self, address: int | None = None) -> None:
        """DfuSe: run the firmware (``dfu-util -s ADDRESS:leave``). The
        device resets, so losing it here is what success looks like."""
        if address is not None:
            self.set_address(address)
        elif self._state == State.dfuUPLOAD_IDLE:
            self.abort()
        self._out(Request.DNLOAD, 0, b"", "asking it to leave DFU mode")
        # It leaves: resets and re-enumerates as the application.
        with contextlib.suppress(UsbError):
            self.get_status()

    # -- download ---------------------------------------------------------------
    def _dnload(self, block: int, data: bytes, what: str) -> None:
        self._out(Request.DNLOAD, block, data, what)
        self._wait(what, {State.dfuDNLOAD_IDLE})

    def writer(
        self,
        address: int | None = None,
        size: int | None = None,
        *,
        ledger: Ledger | None = None,
        progress: Progress | None = None,
        base: int = 0,
        total: int | None = None,
    ) -> BlockWriter:
        """A sink for the bytes of one region (DfuSe: at ``address``, already
        erased; plain DFU: the whole image). ``base``/``total`` place its
        progress within a larger download."""
        if self.dfuse and address is None:
            raise InputError("a DfuSe download needs an address")
        return BlockWriter(
            self,
            address,
            size,
            ledger=ledger or Ledger(),
            progress=progress,
            base=base,
            total=total,
        )

    def _write_block(self, address: int | None, data: bytes) -> None:
        ts = self.transfer_size
        if address is None:  # plain DFU: blocks numbered from 0, wrapping at 16 bits
            what = f"writing block {self._block} ({len(data)} bytes)"
            self._dnload(self._block & 0xFFFF, data, what)
            self._block += 1
            return
        what = f"writing {len(data)} bytes at {address:#010x}"
        # DfuSe: block n lands at pointer + (n - 2) * wTransferSize (AN3156;
        # ST's loader uses its own transfer size), so full blocks follow one
        # pointer; a short or out-of-sequence block, or a transfer size other
        # than the device's, moves the pointer first (as dfu-util always does).
        in_sequence = (
            len(data) == ts
            and ts == self.device_transfer_size
            and self._block < 0xFFFD
            and self._pointer is not None
            and address == self._pointer + self._block * ts
        )
        if not in_sequence:
            self.set_address(address)
        self._dnload(self._block + 2, data, what)
        self._block += 1

    def manifest(self) -> bool:
        """Plain DFU: the zero-length DNLOAD that ends a download, then
        manifestation. Returns True when the device is back in dfuIDLE
        (manifestation tolerant), False when it resets to run the image."""
        what = "manifesting the new firmware"
        self._out(Request.DNLOAD, self._block & 0xFFFF, b"", what)
        try:
            status = self._wait(what, {State.dfuIDLE, State.dfuMANIFEST_WAIT_RESET})
        except UsbError:
            if self.manifestation_tolerant:
                raise
            return False  # it reset itself, as a non-tolerant device may
        return status.state == State.dfuIDLE

    # -- upload and verify ------------------------------------------------------
    def read(self, address: int | None, length: int) -> Iterator[bytes]:
        """UPLOAD ``length`` bytes (DfuSe: from ``address``; plain DFU: from
        the start of the firmware), in transfer-size pieces."""
        ts = self.transfer_size
        if not self.can_upload:
            raise InputError(f"{self.info.usb_id} cannot upload (bitCanUpload is 0)")
        got = 0
        if address is None:
            self.ensure_idle()
            block = 0
            while got < length:
                data = self._in(Request.UPLOAD, block & 0xFFFF, ts, f"reading block {block}")
                self._state = State.dfuUPLOAD_IDLE
                piece = data[: length - got]
                got += len(piece)
                block += 1
                yield piece
                if len(data) < ts and got < length:
                    raise VerifyError(
                        f"{self.info.usb_id}: the device returned {got} bytes, {length} were "
                        "written",
                        "readback",
                    )
            self.abort()
            return
        while got < length:
            at = address + got
            size = min(ts, length - got)
            if size < ts or got == 0 or ts != self.device_transfer_size:
                self.set_address(at)
                self.abort()  # DfuSe uploads start from dfuIDLE
                block = 0
            data = self._in(Request.UPLOAD, block + 2, size, f"reading {size} bytes at {at:#010x}")
            self._state = State.dfuUPLOAD_IDLE
            if len(data) != size:
                raise UsbError(
                    f"{self.info.usb_id}: asked for {size} bytes at {at:#010x}, got {len(data)}"
                )
            got += size
            block += 1
            yield data
        self.abort()

    def verify(self, ledger: Ledger, progress: Progress | None = None) -> str:
        """Reads back every block in the ledger; returns the SHA-256 of what
        was read, raises :class:`VerifyError` naming the first block that
        differs."""
        readback = hashing.sha256()
        blocks = iter(ledger.blocks)
        done = 0
        for start, length in ledger.runs():
            address = start if self.dfuse else None
            pending = b""
            for piece in self.read(address, length):
                pending += piece
                while pending:
                    expected = next(blocks, None)
                    if expected is None or len(pending) < expected[1]:
                        break
                    at, size, crc = expected
                    chunk, pending = pending[:size], pending[size:]
                    readback.update(chunk)
                    if _core.dfu_crc(chunk) != crc:
                        raise VerifyError(
                            f"{self.info.usb_id}: read-back differs from what was written in "
                            f"the {size} bytes at {at:#010x}",
                            f"{at:#010x}",
                            f"crc {crc:08x}",
                            f"crc {_core.dfu_crc(chunk):08x}",
                        )
                    done += size
                    if progress is not None:
                        progress("verify", done, ledger.size)
        sha = readback.hexdigest()
        if sha != ledger.sha256.hexdigest() or done != ledger.size:
            raise VerifyError(
                f"{self.info.usb_id}: read-back SHA-256 {sha} differs from the written "
                f"{ledger.sha256.hexdigest()}",
                "readback",
                ledger.sha256.hexdigest(),
                sha,
            )
        return sha

    # -- whole downloads --------------------------------------------------------
    def download_dfuse(
        self,
        layout: MemoryLayout,
        elements: Sequence[tuple[int, int, Iterable[bytes]]],
        *,
        mass_erase: bool = False,
        erase: bool = True,
        progress: Progress | None = None,
    ) -> tuple[Ledger, int]:
        """Writes ``(address, size, chunks)`` elements: checks they all fit
        writable memory and plans the erase *before* sending anything, erases,
        then streams each element. Returns the ledger and bytes erased."""
        regions = [(address, size) for address, size, _ in elements]
        pages = layout.erase_plan(regions)
        erased = 0
        if mass_erase:
            self.mass_erase()
            erased = layout.size
        elif erase:
            erased = self.erase(pages, progress)
        ledger = Ledger()
        total = sum(size for _, size, _ in elements)
        base = 0
        for address, size, chunks in elements:
            with self.writer(
                address, size, ledger=ledger, progress=progress, base=base, total=total
            ) as sink:
                for chunk in chunks:
                    sink.write(chunk)
            base += size
        return ledger, erased

    def download(
        self, chunks: Iterable[bytes], size: int | None = None, progress: Progress | None = None
    ) -> Ledger:
        """Plain DFU: streams the image as blocks 0, 1, ... (manifest after)."""
        ledger = Ledger()
        self._block = 0
        with self.writer(None, size, ledger=ledger, progress=progress) as sink:
            for chunk in chunks:
                sink.write(chunk)
        return ledger


class BlockWriter:
    """Push-style sink for one region: bytes in pieces of any size go out as
    transfer-size DNLOAD blocks; ``close()`` sends the short tail. Writing
    more than the declared ``size`` is refused (it was not erased)."""

    def __init__(
        self,
        device: DfuDevice,
        address: int | None,
        size: int | None,
        *,
        ledger: Ledger,
        progress: Progress | None,
        base: int,
        total: int | None,
    ) -> None:
        self.device = device
        self.address = address
        self.size = size
        self.ledger = ledger
        self.progress = progress
        self.base = base
        self.total = total if total is not None else size
        self.written = 0
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a closed BlockWriter")
        if self.size is not None and self.written + len(self._pending) + len(data) > self.size:
            raise InputError(
                f"more than the declared {self.size} bytes were given for the region at "
                f"{self.address or 0:#010x}"
            )
        self._pending += data
        ts = self.device.transfer_size
        while len(self._pending) >= ts:
            self._send(bytes(self._pending[:ts]))
            del self._pending[:ts]

    def _send(self, block: bytes) -> None:
        address = None if self.address is None else self.address + self.written
        self.device._write_block(address, block)
        self.ledger.add(
            self.address + self.written if self.address is not None else self.written, block
        )
        self.written += len(block)
        if self.progress is not None:
            self.progress("program", self.base + self.written, self.total)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending:
            self._send(bytes(self._pending))
            self._pending.clear()
        if self.size is not None and self.written != self.size:
            raise InputError(
                f"the region at {self.address or 0:#010x} got {self.written} bytes, "
                f"{self.size} were declared"
            )

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
