"""Where an update is written: the seam between the update flow and the
flash layer and delta engine.

The update flow (:mod:`otaflash.update`) needs exactly this from a target:

``open_target(uri, layout=...) -> Target``
    ``Target.begin(size, sha256, patch=False, progress=None) -> ImageWriter``
    starts writing a new image of ``size`` bytes with that SHA-256 somewhere
    the running image stays safe (the inactive A/B slot, a side file, a
    staged in-place update). With ``patch`` the bytes fed are a delta patch
    from the target's current image, applied on the way in.

``ImageWriter``
    ``write(chunk)`` any number of times, in order (the download streams
    straight into it); ``finish()`` — everything written: apply, make it
    durable, read it back; ``verify(size, sha256)`` — raise
    :class:`~otaflash.errors.VerifyError` unless the written image is that;
    ``commit()`` — make it the image that runs (only after ``verify``);
    ``abort()`` — forget the new image; the running one stays as it was.

Targets:

``file:PATH``
    a file, written beside ``PATH`` and renamed over it after verification;
    a patch applies to the file's current contents.
``sim:...``, ``mtd:/dev/mtdN`` (the URIs of :mod:`otaflash.flash`)
    flash, through an update layout: ``ab`` (default: the inactive slot,
    then a trial of it, which the device's boot hook confirms or rolls
    back), ``inplace`` (the single slot, journalled; the download is staged
    to a file first, because an in-place update must be able to re-read its
    patch after a power cut) or ``raw`` (the whole device, full images only).

Other schemes (serial and USB devices) register with :func:`register_target`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from otaflash import delta, flash, hashing
from otaflash.errors import FileError, FlashError, InputError, VerifyError
from otaflash.progress import ProgressCallback

__all__ = [
    "FileTarget",
    "FlashUpdateTarget",
    "ImageWriter",
    "Target",
    "UpdateLayout",
    "open_target",
    "register_target",
]

UpdateLayout = Literal["ab", "inplace", "raw"]


class ImageWriter(Protocol):
    def write(self, data: memoryview | bytes) -> object: ...

    def finish(self) -> None: ...

    def verify(self, size: int, sha256: str) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Target(Protocol):
    uri: str
    #: Whether the target can take a sequential delta patch (the server then
    #: offers one when it has one from the running version).
    accepts_delta: bool

    def begin(
        self,
        size: int,
        sha256: str,
        *,
        patch: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ImageWriter: ...


TargetFactory = Callable[[str, UpdateLayout], Target]

_factories: dict[str, TargetFactory] = {}


def register_target(scheme: str, factory: TargetFactory) -> None:
    """Makes ``scheme:...`` URIs open with ``factory(uri, layout)``."""
    _factories[scheme] = factory


def open_target(uri: str, layout: UpdateLayout = "ab") -> Target:
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest:
        raise InputError(f"invalid target {uri!r}: use SCHEME:WHERE, e.g. file:/path/to/image.bin")
    factory = _factories.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}:" for name in sorted(_factories))
        failure = InputError(f"unknown target type {scheme + ':'!r} in {uri!r}")
        failure.hint = f"this build supports {known}"
        raise failure
    return factory(uri, layout)


def _check_written(where: str, size: int, sha256: str, got_size: int, got_sha256: str) -> None:
    if got_size != size or got_sha256 != sha256.lower():
        raise VerifyError(
            f"{where}: the written image reads back as {got_size} bytes with "
            f"SHA-256 {got_sha256}, expected {size} bytes with {sha256.lower()}",
            where,
            sha256.lower(),
            got_sha256,
        )


# -- file: -------------------------------------------------------------------


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
        _check_written(str(self.path), size, sha256, digests.size, digests["sha256"])

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


class _PatchingWriter:
    """Feeds patch bytes to the delta engine, which writes the new image into ``out``."""

    def __init__(self, old: Path, out: _FileWriter, progress: ProgressCallback | None) -> None:
        self.out = out
        self.applier = delta.Applier(old, out.write, progress=progress)

    def write(self, data: memoryview | bytes) -> None:
        self.applier.feed(data)

    def finish(self) -> None:
        self.applier.finish()  # the new image's SHA-256 is checked here
        self.out.finish()

    def verify(self, size: int, sha256: str) -> None:
        self.out.verify(size, sha256)

    def commit(self) -> None:
        self.out.commit()

    def abort(self) -> None:
        self.out.abort()


class FileTarget:
    """``file:PATH``: the image is a file (a disk image, a staging area, a test)."""

    accepts_delta = True

    def __init__(self, uri: str, layout: UpdateLayout = "ab") -> None:
        path = uri.partition(":")[2]
        self.path = Path(path)
        self.uri = uri
        if self.path.is_dir():
            failure = FileError(f"target {path} is a directory")
            failure.hint = "give the image file's path"
            raise failure
        if not self.path.parent.is_dir():
            raise FileError(f"target directory {self.path.parent} does not exist")

    def begin(
        self,
        size: int,
        sha256: str,
        *,
        patch: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ImageWriter:
        if patch and not self.path.is_file():
            raise FlashError(f"{self.uri} has no current image for the patch to apply to")
        writer = _FileWriter(self.path, size)
        if not patch:
            return writer
        try:
            return _PatchingWriter(self.path, writer, progress)
        except BaseException:
            writer.abort()
            raise


# -- sim: and mtd: -----------------------------------------------------------


class _SessionWriter:
    """A streaming install into an A/B slot (or the raw device)."""

    def __init__(self, target: flash.Target, session: flash.InstallSession) -> None:
        self.target = target
        self.session = session
        self.result: flash.InstallResult | None = None

    def write(self, data: memoryview | bytes) -> None:
        self.session.write(data)

    def finish(self) -> None:
        # The core reads the whole slot back and checks it (A/B: then marks it
        # for a trial boot; the running slot stays the fallback).
        self.result = self.session.finish()

    def verify(self, size: int, sha256: str) -> None:
        if self.result is None:
            raise FlashError(f"{self.target.uri}: verify before the install finished")
        _check_written(self.target.uri, size, sha256, self.result.size, self.result.sha256)

    def commit(self) -> None:
        self.target.close()

    def abort(self) -> None:
        self.session.abort()
        self.target.close()


class _StagedInPlaceWriter:
    """Stages the download in a file, then runs the journalled in-place update."""

    def __init__(
        self,
        target: flash.Target,
        size: int,
        patch: bool,
        progress: ProgressCallback | None,
    ) -> None:
        self.target = target
        self.patch = patch
        self.progress = progress
        fd, name = tempfile.mkstemp(prefix="otaflash-staged-", dir=_staging_dir())
        self.staged = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.size = size
        self.result: tuple[int, str] | None = None

    def write(self, data: memoryview | bytes) -> None:
        self._file.write(data)

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.patch:
            done = self.target.apply_in_place(self.staged, progress=self.progress)
            self.result = (done.size, done.sha256)
        else:
            written = self.target.write(self.staged, layout="inplace", progress=self.progress)
            self.result = (written.size, written.sha256)

    def verify(self, size: int, sha256: str) -> None:
        if self.result is None:
            raise FlashError(f"{self.target.uri}: verify before the update finished")
        _check_written(self.target.uri, size, sha256, *self.result)

    def commit(self) -> None:
        self.staged.unlink(missing_ok=True)
        self.target.close()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        # A half-applied in-place update needs its file to finish after a cut:
        # keep the staged bytes unless nothing touched the flash yet.
        if self.result is None and not self._in_place_started():
            self.staged.unlink(missing_ok=True)
        self.target.close()

    def _in_place_started(self) -> bool:
        state = self.target.info().slots
        return state is not None and state.phase == "updating"


class FlashUpdateTarget:
    """A ``sim:`` or ``mtd:`` flash target through an update layout."""

    def __init__(self, uri: str, layout: UpdateLayout = "ab") -> None:
        self.uri = uri
        self.layout = layout
        # Sequential patches need the old image intact while the new one is
        # written: only the A/B layout has that. (In-place patches are made
        # for one slot geometry; apply them with `otaflash flash --delta`.)
        self.accepts_delta = layout == "ab"
        flash.open_target(uri).close()  # a bad URI fails here, before any download

    def begin(
        self,
        size: int,
        sha256: str,
        *,
        patch: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ImageWriter:
        target = flash.open_target(self.uri)
        try:
            if self.layout == "inplace":
                return _StagedInPlaceWriter(target, size, patch, progress)
            session = target.begin_install(
                size, sha256, layout=self.layout, patch=patch, progress=progress
            )
            return _SessionWriter(target, session)
        except BaseException:
            target.close()
            raise


def _staging_dir() -> str | None:
    return os.environ.get("OTAFLASH_STAGING_DIR")


def _flash_error(action: str, path: Path, error: OSError) -> FlashError:
    return FlashError(f"cannot {action} {path}: {error.strerror or error}")


register_target("file", FileTarget)
register_target("sim", FlashUpdateTarget)
register_target("mtd", FlashUpdateTarget)
