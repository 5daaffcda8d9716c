"""The exceptions otaflash raises, and the exit code each one maps to.

Every error here is "not a bug": it names what went wrong and, through
``hint``, what to do about it. The command line prints ``otaflash: error:
<message>`` (plus the hint) on one line and exits with ``exit_code``; scripts
catch the classes. Anything else escaping the CLI is a bug and exits 70 with
a traceback.

This module must never import ``otaflash._core``: the extension imports the
classes from here when it raises them.

Exit codes (stable; factory scripts rely on them):

====  ===================================================================
code  meaning
====  ===================================================================
0     success
1     the operation failed for a reason not listed below
2     bad command line (unknown option, missing argument)
3     an input could not be used: a missing, unreadable or malformed file
      or argument (``InputError``)
4     verification failed: the bytes are not what they must be
      (``VerifyError``); nothing unverified was reported as good
5     the link to the device failed: port, cable, USB, timeout
      (``TransportError``)
6     the flash refused the operation or does not fit the image
      (``FlashError``, ``GeometryError``)
7     a patch is corrupt, foreign, or made for another old image
      (``PatchError``)
8     a download failed or was cut short (``DownloadError``)
9     the update service refused or could not be reached (``RuleError``)
10    cancelled on request (``Cancelled``)
70    internal error (a bug in otaflash; please report it)
130   interrupted with Ctrl-C
====  ===================================================================
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Cancelled",
    "CorruptPatchError",
    "DeviceError",
    "DeviceNotFoundError",
    "DfuFileError",
    "DfuStatusError",
    "DownloadError",
    "FileAccessError",
    "FileError",
    "FlashError",
    "ForeignPatchError",
    "GeometryError",
    "InputError",
    "LinkTimeoutError",
    "MissingFileError",
    "NotAFileError",
    "OtaflashError",
    "PatchError",
    "ProtocolError",
    "RuleError",
    "SlotError",
    "TargetError",
    "TransportError",
    "UnknownAlgorithmError",
    "UnsupportedError",
    "UnsupportedPatchError",
    "UsbError",
    "UsbPermissionError",
    "VerifyError",
    "WrongOldImageError",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class OtaflashError(Exception):
    """Base of every error otaflash raises on purpose."""

    exit_code: int = 1
    #: What the user can do about it; shown after the message by the CLI.
    hint: str | None = None


class InputError(OtaflashError):
    """A file or argument the user gave cannot be used."""

    exit_code = 3


class FileError(InputError, OSError):
    """A file or device could not be opened, read or written.

    Also an :class:`OSError` (``errno``, ``filename`` set), so code written
    against the standard library keeps working.
    """

    def __str__(self) -> str:
        # OSError would print "[Errno 2] ...: 'path'"; the message already names both.
        return self.strerror or super().__str__()


class MissingFileError(FileError, FileNotFoundError):
    hint = "check the path"


class FileAccessError(FileError, PermissionError):
    hint = "check the file's permissions, or run as a user who may read it"


class NotAFileError(FileError, IsADirectoryError):
    hint = "give a file, not a directory"


class UnknownAlgorithmError(InputError, ValueError):
    """A hash algorithm name that otaflash does not know."""


class VerifyError(OtaflashError):
    """Bytes differ from what they must be (a digest, a read-back)."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        subject: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return str(self.args[0])


class TransportError(OtaflashError):
    """The link to a device failed (serial port, USB, network to a device)."""

    exit_code = 5
    hint = "check the cable, the port name and that no other program holds the port"


class DfuFileError(InputError):
    """A DFU firmware file is corrupt (suffix CRC, DfuSe structure) or was
    made for another device (the VID/PID in its suffix)."""

    hint = (
        "rebuild the file (`dfu-suffix -c` checks a suffix), or flash the plain image "
        "with --address"
    )

    def __init__(self, message: str, file: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return str(self.args[0])


class TargetError(InputError):
    """A flash target URI is malformed, or names something that is not a
    flash device (a regular file given as ``mtd:``, a foreign ``sim:`` file)."""

    hint = "use mtd:/dev/mtdN, sim:PATH?kind=nor|nand&size=BYTES or file:PATH"

    def __init__(self, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.target = target

    def __str__(self) -> str:
        return str(self.args[0])


class LinkTimeoutError(TransportError):
    """The device stopped answering (or never started)."""

    hint = (
        "check that the device runs its bootloader or `otaflash agent` at this baud rate; "
        "an interrupted otaflash transfer resumes when the same command is run again"
    )


class ProtocolError(TransportError):
    """The device answered something its protocol does not allow."""

    hint = "check that --protocol matches what the device runs, and the baud rate"


class FlashError(OtaflashError):
    """The flash refused an erase, program or read.

    ``device``, ``offset`` and ``errno`` say where and how, when known.
    """

    exit_code = 6

    _HINTS: ClassVar[dict[int, str]] = {
        5: "the block may have gone bad; on NAND, write again: failing blocks are marked bad "
        "and skipped",
        13: "run as a user who may write the device (often root)",
        22: "the device refused the request: check the offset and sizes against `otaflash info`",
        30: "the partition is read-only",
    }

    def __init__(
        self,
        message: str,
        device: str | None = None,
        offset: int | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.device = device
        self.offset = offset
        self.errno = errno
        if errno in self._HINTS:
            self.hint = self._HINTS[errno]

    def __str__(self) -> str:
        return str(self.args[0])


class DeviceError(FlashError):
    """The device refused or failed an operation (a NACK, a write it could not do)."""

    hint: str | None = (
        "check that the address is right and the flash is erased and not write-protected"
    )


class UnsupportedError(DeviceError):
    """The device does not support what was asked of it."""

    hint = None


class GeometryError(FlashError, ValueError):
    """An image or offset does not fit the flash layout."""

    hint = (
        "use a smaller image, a bigger partition or slot, or an offset that is a multiple "
        "of the erase block (`otaflash info --target ...` shows the geometry)"
    )


class SlotError(FlashError):
    """The update state on the flash forbids the request, or an interrupted
    update needs its image to resume."""

    hint = "`otaflash info --target ...` shows the slot state and what comes next"


class UsbError(TransportError):
    """A USB transfer failed: the device went away, stalled a request it
    must accept, or did not answer in time."""

    hint = (
        "check the cable and that the device is still in DFU mode (`otaflash list`); "
        "a failed download leaves the DFU bootloader in place: run the command again"
    )


class DeviceNotFoundError(UsbError):
    """No USB device matches the selector (VID:PID, serial number, alt setting)."""

    hint = "`otaflash list` shows the DFU devices this machine sees; check --usb"


class UsbPermissionError(UsbError):
    """The operating system refused access to the USB device."""

    def __init__(self, message: str, vendor_id: int | None = None, product_id: int | None = None):
        super().__init__(message)
        vid = f"{vendor_id:04x}" if vendor_id is not None else "VVVV"
        pid = f"{product_id:04x}" if product_id is not None else "PPPP"
        self.hint = (
            "let your user open it with a udev rule, e.g. in "
            "/etc/udev/rules.d/50-otaflash-dfu.rules: "
            f'SUBSYSTEM=="usb", ATTRS{{idVendor}}=="{vid}", ATTRS{{idProduct}}=="{pid}", '
            'MODE="0660", TAG+="uaccess"; then `sudo udevadm control --reload && '
            "sudo udevadm trigger` and plug the device in again (or run as root)"
        )


class DfuStatusError(FlashError):
    """A DFU device reported an error status (errWRITE, errVERIFY, ...).

    ``status`` is the DFU status code, ``status_name`` its name, ``state``
    the DFU state the device was in. The host clears the error before
    raising, so the device stays in its bootloader, ready for another try.
    """

    _STATUS_HINTS: ClassVar[dict[int, str]] = {
        0x01: "the file is not for this device",
        0x02: "the file is not for this device",
        0x03: "the flash may be write-protected (option bytes) or worn; run the command again",
        0x04: "the flash may be protected; run the command again",
        0x05: "erase the memory first, or let otaflash erase it (do not use --no-erase)",
        0x06: "the flash may be write-protected or worn; run the command again",
        0x07: "run the command again; if it persists the flash is worn",
        0x08: "check --address against the device's memory layout (`otaflash list`)",
        0x09: "the device expected more data: run the command again",
        0x0A: "the image was refused by the bootloader's own check: flash the right image",
    }

    def __init__(
        self,
        message: str,
        status: int | None = None,
        status_name: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.status_name = status_name
        self.state = state
        if status in self._STATUS_HINTS:
            self.hint = self._STATUS_HINTS[status]
        else:
            self.hint = "run the command again; the device was left in its DFU bootloader"


class PatchError(OtaflashError):
    """A patch is corrupt, of an unknown kind, or made for another old image."""

    exit_code = 7


class CorruptPatchError(PatchError):
    """The patch's bytes are damaged: truncated, bit-flipped or inconsistent."""

    hint = "download or copy the patch again; if it keeps failing, make it again"


class ForeignPatchError(PatchError):
    """The file is not an otaflash or BSDIFF40 patch."""

    hint = "give a patch made by `otaflash diff` (or a BSDIFF40 patch from bsdiff)"


class UnsupportedPatchError(PatchError):
    """A well-formed patch that this otaflash or this device cannot apply."""

    hint = "update otaflash, or make the patch with options this device supports"


class WrongOldImageError(PatchError):
    """The old image is not the one the patch was made from; nothing was written."""

    hint = (
        "the device runs another firmware than the patch expects: "
        "use the full image, or a patch made from the firmware it runs"
    )

    def __init__(
        self, message: str, expected: str | None = None, actual: str | None = None
    ) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return str(self.args[0])


class DownloadError(OtaflashError):
    """A download failed, was cut short, or was refused by the server."""

    exit_code = 8


class RuleError(OtaflashError):
    """The update service refused a request or gave an answer that cannot be used."""

    exit_code = 9


class Cancelled(OtaflashError):
    """Work stopped because it was cancelled on request."""

    exit_code = 10
