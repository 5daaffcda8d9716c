"""Where an update is written: the narrow seam between the update flow and the
flash layer / delta engine.

The update flow (:mod:`otaflash.update`) needs exactly this from a target:

``open_target(uri) -> Target``
    ``Target.current_image()`` — the running image as an :class:`ImageReader`
    (``size``, ``read_at(offset, length)``, ``close()``), the old image a delta
    applies to; None when there is none.

    ``Target.begin(size) -> ImageWriter`` — starts writing a new image of
    ``size`` bytes somewhere the running one is safe (the inactive A/B slot, a
    side file, or the in-place journal).

``ImageWriter``
    ``write(chunk)`` any number of times, in order (the download streams
    straight into it, or into the delta applier that writes into it);
    ``finish()`` — everything written, make it durable but not active;
    ``verify(size, sha256)`` — read the written image back and raise
    :class:`~otaflash.errors.VerifyError` if it is not that;
    ``commit()`` — make it the active image (only after ``verify``);
    ``abort()`` — forget the new image; the running one stays as it was.

Delta application is one function in the same seam, registered by the delta
engine: ``make_delta_sink(old: ImageReader, out: ImageWriter) -> PatchSink``,
where the patch sink takes the patch bytes through ``write(chunk)`` and
``finish()`` (the end of the patch) and writes the new image into ``out``; the
update flow then calls ``out.finish()``, ``verify`` and ``commit`` itself. Until one is registered
(:func:`register_delta_applier`), :func:`delta_available` is False and the
client asks the server for full images only.

This build provides ``file:PATH`` (a file written beside ``PATH`` and renamed
over it atomically after verification). Other schemes (``sim:``, ``mtd:``,
serial and USB targets) register themselves with :func:`register_target`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from otaflash import hashing
from otaflash.errors import FileError, FlashError, InputError, VerifyError

__all__ = [
    "FileTarget",
    "ImageReader",
    "ImageWriter",
    "PatchSink",
    "Target",
    "delta_applier",
    "delta_available",
    "open_target",
    "register_delta_applier",
    "register_target",
]


class ImageReader(Protocol):
    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class ImageWriter(Protocol):
    def write(self, data: memoryview | bytes) -> object: ...

    def finish(self) -> None: ...

    def verify(self, size: int, sha256: str) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class PatchSink(Protocol):
    def write(self, data: memoryview | bytes) -> object: ...

    def finish(self) -> None: ...


class Target(Protocol):
    uri: str

    def current_image(self) -> ImageReader | None: ...

    def begin(self, size: int) -> ImageWriter: ...


TargetFactory = Callable[[str], Target]
DeltaApplier = Callable[[ImageReader, ImageWriter], PatchSink]

_factories: dict[str, TargetFactory] = {}
_delta_applier: DeltaApplier | None = None


def register_target(scheme: str, factory: TargetFactory) -> None:
    """Makes ``scheme:...`` URIs open with ``factory(rest_of_uri)``."""
    _factories[scheme] = factory


def register_delta_applier(applier: DeltaApplier | None) -> None:
    global _delta_applier  # noqa: PLW0603 - the one registry slot of the seam
    _delta_applier = applier


def delta_available() -> bool:
    return _delta_applier is not None


def delta_applier() -> DeltaApplier:
    if _delta_applier is None:
        raise InputError("this build of otaflash cannot apply deltas (no delta engine)")
    return _delta_applier


def open_target(uri: str) -> Target:
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest:
        raise InputError(f"invalid target {uri!r}: use SCHEME:WHERE, e.g. file:/path/to/image.bin")
    factory = _factories.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}:" for name in sorted(_factories))
        failure = InputError(f"unknown target type {scheme + ':'!r} in {uri!r}")
        failure.hint = f"this build supports {known}"
        raise failure
    return factory(rest)


class _FileReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed with the reader
        self.size = os.fstat(self._file.fileno()).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InputError(f"read of {length} bytes at {offset} is past the end of {self.path}")
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        self._file.close()


class _FileWriter:
    """Writes ``PATH.otaflash-new``; ``commit`` renames it over ``PATH``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.new = path.with_name(path.name + ".otaflash-new")
        self.written = 0
        try:
            self._file = open(self.new, "wb")  # noqa: SIM115 - closed in finish/abort
        except OSError as error:
            raise _flash_error("create", self.new, error) from None

    def write(self, data: memoryview | bytes) -> None:
        if self.written + len(data) > self.size:
            raise FlashError(f"{self.path}: more than the announced {self.size} bytes were written")
        try:
            self._file.write(data)
        except OSError as error:
            raise _flash_error("write", self.new, error) from None
        self.written += len(data)

    def finish(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as error:
            raise _flash_error("sync", self.new, error) from None

    def verify(self, size: int, sha256: str) -> None:
        digests = hashing.hash_file(self.new, ("sha256",))
        if digests.size != size or digests["sha256"] != sha256.lower():
            raise VerifyError(
                f"{self.path}: the written image reads back as {digests.size} bytes with "
                f"SHA-256 {digests['sha256']}, expected {size} bytes with {sha256.lower()}",
                str(self.path),
                sha256.lower(),
                digests["sha256"],
            )

    def commit(self) -> None:
        try:
            os.replace(self.new, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as error:
            raise _flash_error("rename", self.path, error) from None

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.new.unlink(missing_ok=True)


class FileTarget:
    """``file:PATH``: the image is a file (a disk image, a staging area, a test)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.uri = f"file:{path}"
        if self.path.is_dir():
            failure = FileError(f"target {path} is a directory")
            failure.hint = "give the image file's path"
            raise failure
        if not self.path.parent.is_dir():
            raise FileError(f"target directory {self.path.parent} does not exist")

    def current_image(self) -> ImageReader | None:
        return _FileReader(self.path) if self.path.is_file() else None

    def begin(self, size: int) -> ImageWriter:
        return _FileWriter(self.path, size)


def _flash_error(action: str, path: Path, error: OSError) -> FlashError:
    return FlashError(f"cannot {action} {path}: {error.strerror or error}")


register_target("file", FileTarget)
