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

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Cancelled",
    "DeviceError",
    "DownloadError",
    "FileAccessError",
    "FileError",
    "FlashError",
    "GeometryError",
    "InputError",
    "LinkTimeoutError",
    "MissingFileError",
    "NotAFileError",
    "OtaflashError",
    "PatchError",
    "ProtocolError",
    "RuleError",
    "TransportError",
    "UnknownAlgorithmError",
    "UnsupportedError",
    "VerifyError",
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
    """The flash refused an erase, program or read."""

    exit_code = 6


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


class PatchError(OtaflashError):
    """A patch is corrupt, of an unknown kind, or made for another old image."""

    exit_code = 7


class DownloadError(OtaflashError):
    """A download failed, was cut short, or was refused by the server."""

    exit_code = 8


class RuleError(OtaflashError):
    """The update service refused a request or gave an answer that cannot be used."""

    exit_code = 9


class Cancelled(OtaflashError):
    """Work stopped because it was cancelled on request."""

    exit_code = 10
