"""Flash a firmware file to a DFU device and read it back: what
``otaflash flash --usb`` runs, as one function for scripts.

>>> from otaflash.usb import flash_file
>>> result = flash_file("0483:df11", "app.dfu")        # doctest: +SKIP
>>> result.verified, result.sha256                     # doctest: +SKIP

Order of work, so bad input never reaches the device: the file is read and
its suffix CRC and DfuSe structure checked; the device is found (and
detached from its application if it runs one); the file's VID/PID are
checked against it; the DfuSe layout is checked to hold the image and the
erase planned; only then are pages erased, blocks written, and everything
read back and compared.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import usb.core
import usb.util

from otaflash.errors import DeviceNotFoundError, DfuFileError, InputError, UsbError, VerifyError
from otaflash.usb.devices import (
    DfuDeviceInfo,
    Selector,
    find_dfu_devices,
    parse_selector,
    rescan_backend,
    usb_error,
)
from otaflash.usb.dfu import DfuDevice, Ledger, Progress
from otaflash.usb.files import FirmwareFile, open_firmware
from otaflash.usb.protocol import OUT, Request

__all__ = ["UsbFlashResult", "detach", "flash_file", "flash_stream", "select_device"]


@dataclass(frozen=True)
class UsbFlashResult:
    device: str
    """VID:PID in DFU mode."""
    serial: str | None
    path: str | None
    alt: int
    alt_name: str | None
    image: str
    format: str
    """``raw``, ``suffix`` (raw with a DFU suffix) or ``dfuse``."""
    protocol: str
    """``dfuse`` or ``dfu``."""
    elements: list[dict[str, int]]
    """``{address, size}`` per region written (address 0 for plain DFU)."""
    size: int
    sha256: str
    transfer_size: int
    erased_bytes: int
    detached: bool
    recovered_from: str | None
    """The state the device was found in, if it was not dfuIDLE."""
    verified: bool
    verify_note: str | None
    left: bool
    seconds: float

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def select_device(selector: Selector, *, backend: Any = None) -> DfuDeviceInfo:
    """The one DFU device the selector names."""
    found = find_dfu_devices(selector, backend=backend)
    if not found:
        raise DeviceNotFoundError(f"no DFU device matches {selector}")
    if len(found) > 1:
        names = ", ".join(f"{d.usb_id} serial={d.serial} path={d.path}" for d in found)
        raise DeviceNotFoundError(
            f"{len(found)} DFU devices match {selector}: {names}",
        )
    return found[0]


def detach(info: DfuDeviceInfo, *, backend: Any = None, wait_s: float = 30.0) -> DfuDeviceInfo:
    """Run-time mode to DFU mode: DETACH, then a USB reset unless the
    device detaches itself (bitWillDetach); waits for it to come back in DFU
    mode (same serial number, or same port, or same vendor)."""
    fd = info.functional
    timeout = min(fd.detach_timeout_ms if fd else 1000, 5000)
    dev = info.device
    try:
        usb.util.claim_interface(dev, info.interface)
        dev.ctrl_transfer(OUT, Request.DETACH, timeout, info.interface, b"", 5000)
    except usb.core.USBError as exc:
        # A device that detaches at once may vanish before it acknowledges.
        if not (fd and fd.will_detach):
            raise usb_error(exc, "detaching it into DFU mode", info) from None
    if not (fd and fd.will_detach):
        # The reset re-enumerates it: losing the handle is expected.
        with contextlib.suppress(usb.core.USBError):
            dev.reset()
    usb.util.dispose_resources(dev)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        candidates = [
            d
            for d in find_dfu_devices(
                Selector(vendor_id=info.vendor_id), backend=rescan_backend(backend)
            )
            if d.mode == "dfu"
        ]
        if info.serial:
            candidates = [d for d in candidates if d.serial == info.serial]
        elif info.path:
            candidates = [d for d in candidates if d.path == info.path] or candidates
        if len(candidates) == 1:
            return candidates[0]
    raise UsbError(
        f"{info.usb_id} did not come back in DFU mode within {wait_s:.0f} s of DETACH",
    )


def _elements(
    fw: FirmwareFile, dfuse: bool, alt: int, address: int | None, layout_start: int | None
) -> list[tuple[int, int, Any]]:
    if fw.is_dfuse:
        if not dfuse:
            raise DfuFileError(
                f"{fw.path} is a DfuSe file, but the device speaks plain DFU", fw.path
            )
        if address is not None:
            raise InputError("--address does not apply to a DfuSe file: its elements say where")
        target = fw.target(alt)
        if target is None:
            alts = ", ".join(str(t.alt) for t in fw.targets or ())
            raise DfuFileError(
                f"{fw.path} has no image for alt setting {alt} (it has alt {alts})",
                fw.path,
                hint="choose the alt setting with --alt (dfu-util's -a)",
            )
        return [(e.address, e.size, fw.read(e.file_offset, e.size)) for e in target.elements]
    if fw.payload_len == 0:
        raise DfuFileError(f"{fw.path} is empty: nothing to flash", fw.path)
    if dfuse:
        start = address if address is not None else layout_start
        if start is None:
            raise InputError("give --address (dfu-util's -s) for a raw image on a DfuSe device")
        return [(start, fw.payload_len, fw.read(0, fw.payload_len))]
    if address is not None:
        raise InputError("--address needs a DfuSe device; this one speaks plain DFU 1.1")
    return [(0, fw.payload_len, fw.read(0, fw.payload_len))]


@dataclass(frozen=True)
class _Source:
    """What is flashed: a file, or a stream of known size."""

    name: str
    format: str
    default_alt: int | None
    check_device: Callable[[int, int], None]
    elements: Callable[[bool, int, int | None, int | None], list[tuple[int, int, Any]]]
    expected_sha256: str | None = None


def flash_file(
    selector: Selector | str,
    image: str,
    *,
    address: int | None = None,
    alt: int | str | None = None,
    transfer_size: int | None = None,
    mass_erase: bool = False,
    leave: bool = False,
    reset: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
    backend: Any = None,
) -> UsbFlashResult:
    """Writes ``image`` (raw, raw + DFU suffix, or DfuSe ``.dfu``) to the
    device, reads it back and compares; raises an :mod:`otaflash.errors`
    class on any failure, never returns an unverified success silently
    (``verified`` says whether the read-back happened)."""
    fw = open_firmware(image)
    source = _Source(
        name=image,
        format="dfuse" if fw.is_dfuse else ("suffix" if fw.suffix else "raw"),
        default_alt=fw.targets[0].alt if fw.targets else None,
        check_device=fw.check_device,
        elements=lambda dfuse, number, at, start: _elements(fw, dfuse, number, at, start),
    )
    return _flash(selector, source, address=address, alt=alt, transfer_size=transfer_size,
                  mass_erase=mass_erase, leave=leave, reset=reset, verify=verify,
                  progress=progress, backend=backend)  # fmt: skip


def flash_stream(
    selector: Selector | str,
    chunks: Iterable[bytes],
    size: int,
    *,
    name: str = "stream",
    expected_sha256: str | None = None,
    address: int | None = None,
    alt: int | str | None = None,
    transfer_size: int | None = None,
    mass_erase: bool = False,
    leave: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
    backend: Any = None,
) -> UsbFlashResult:
    """Flashes ``size`` bytes arriving as ``chunks`` of any size: an image
    rebuilt on the fly (the delta engine's output) or read from anywhere.
    The size must be known up front (the erase is planned and checked from
    it); ``expected_sha256``, when given, is checked against what was sent
    before the read-back, so a stream that went wrong is never reported good."""

    def elements(
        dfuse: bool, number: int, at: int | None, start: int | None
    ) -> list[tuple[int, int, Any]]:
        if size <= 0:
            raise InputError(f"{name}: nothing to flash")
        if not dfuse:
            if at is not None:
                raise InputError("an address needs a DfuSe device; this one speaks plain DFU")
            return [(0, size, chunks)]
        where = at if at is not None else start
        if where is None:
            raise InputError("give an address for a stream on a DfuSe device")
        return [(where, size, chunks)]

    source = _Source(
        name=name,
        format="stream",
        default_alt=None,
        check_device=lambda vid, pid: None,
        elements=elements,
        expected_sha256=expected_sha256,
    )
    return _flash(selector, source, address=address, alt=alt, transfer_size=transfer_size,
                  mass_erase=mass_erase, leave=leave, reset=False, verify=verify,
                  progress=progress, backend=backend)  # fmt: skip


def _flash(  # noqa: PLR0912, PLR0915 (one linear job, each branch a documented case)
    selector: Selector | str,
    source: _Source,
    *,
    address: int | None,
    alt: int | str | None,
    transfer_size: int | None,
    mass_erase: bool,
    leave: bool,
    reset: bool,
    verify: bool,
    progress: Progress | None,
    backend: Any,
) -> UsbFlashResult:
    started = time.monotonic()
    if isinstance(selector, str):
        selector = parse_selector(selector)
    info = select_device(selector, backend=backend)
    if info.access_exception is not None:
        # Its strings could not be read, so it cannot be opened either.
        raise info.access_exception
    detached = False
    if info.mode == "runtime":
        info = detach(info, backend=backend)
        detached = True
    source.check_device(info.vendor_id, info.product_id)
    wanted = alt if alt is not None else selector.alt
    if wanted is None:
        wanted = source.default_alt
    setting = info.alt_setting(wanted)
    with DfuDevice(info, setting, transfer_size=transfer_size) as dev:
        layout = setting.layout
        if dev.dfuse and layout is None:
            raise DeviceNotFoundError(
                f"{info.usb_id} alt {setting.number} ({setting.name!r}) has no DfuSe memory "
                "layout, so the image cannot be placed"
            )
        elements = source.elements(
            dev.dfuse, setting.number, address, layout.start if layout else None
        )
        if layout is not None:
            # Fit and writability are checked before the device is touched.
            layout.erase_plan([(a, s) for a, s, _ in elements])
        before = dev.get_status()
        recovered = before.state_name if before.state_name != "dfuIDLE" else None
        dev.ensure_idle()
        erased = 0
        ledger: Ledger
        if dev.dfuse:
            assert layout is not None
            ledger, erased = dev.download_dfuse(
                layout, elements, mass_erase=mass_erase, progress=progress
            )
            tolerant = True
        else:
            _, size, chunks = elements[0]
            ledger = dev.download(chunks, size, progress)
            tolerant = dev.manifest()
        sent = ledger.sha256.hexdigest()
        if source.expected_sha256 is not None and sent != source.expected_sha256.lower():
            raise VerifyError(
                f"{source.name}: the stream's SHA-256 is {sent}, {source.expected_sha256} was "
                "expected; the device holds a wrong image: flash again",
                source.name,
                source.expected_sha256,
                sent,
            )
        verified, note = False, None
        if not verify:
            note = "read-back skipped on request"
        elif not dev.can_upload:
            note = "the device cannot upload (bitCanUpload is 0), so nothing was read back"
        elif not tolerant:
            note = "the device reset after manifestation, so nothing was read back"
        else:
            dev.verify(ledger, progress)
            verified = True
        if dev.dfuse and leave:
            dev.leave(elements[0][0])
        elif reset and not dev.dfuse:
            _reset(dev.info)
    return UsbFlashResult(
        device=info.usb_id,
        serial=info.serial,
        path=info.path,
        alt=setting.number,
        alt_name=setting.name,
        image=source.name,
        format=source.format,
        protocol="dfuse" if dev.dfuse else "dfu",
        elements=[{"address": a, "size": s} for a, s, _ in elements],
        size=ledger.size,
        sha256=sent,
        transfer_size=dev.transfer_size,
        erased_bytes=erased,
        detached=detached,
        recovered_from=recovered,
        verified=verified,
        verify_note=note,
        left=bool(dev.dfuse and leave),
        seconds=round(time.monotonic() - started, 3),
    )


def _reset(info: DfuDeviceInfo) -> None:
    # It re-enumerates as the application: the handle goes stale.
    with contextlib.suppress(usb.core.USBError):
        info.device.reset()
