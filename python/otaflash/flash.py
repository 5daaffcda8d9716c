"""Flash targets: write, verify and inspect Linux MTD devices, simulated
flash and image files, raw or through a power-loss-safe update layout.

Targets are named by URI (these exact forms are stable)::

    mtd:/dev/mtdN
    sim:PATH?kind=nor|nand&size=BYTES&erase=BYTES&page=BYTES[&bad=3,7]
    file:PATH

A ``sim:`` file is created on first use and reopened with its own geometry
afterwards; it behaves like the kernel's nandsim (erase to 0xFF, programs
only clear bits, bad blocks fail with EIO). Extra ``sim:`` parameters:
``subpage``, ``oob``, ``failing=5,9`` (blocks that go bad when written),
``bitflips=P``, ``erase_us``/``program_us``/``read_us`` (timing model),
``realtime=1``, ``seed``.

>>> from otaflash import flash
>>> with flash.open_target("sim:/tmp/dev.sim?kind=nand&size=8M") as target:  # doctest: +SKIP
...     result = target.write("fw.bin", progress=ProgressBars())
...     target.verify("fw.bin")

Writes compare each erase block by SHA-256 first: a block that already
holds the bytes is skipped, a blank one is not erased; every written block
is read back. On NAND, bad blocks are skipped and a block that fails is
marked bad and its data moved to the next good one (nandwrite semantics).

Layouts (``layout=``): ``"raw"`` writes at ``offset``; ``"ab"`` writes the
inactive of two slots, verifies it and switches to a trial boot of it (an
unconfirmed trial rolls back); ``"inplace"`` rewrites a single slot with a
journal, so an interrupted run resumes and finishes. Both keep their state
in a small record at the start of the device (two copies, sequence number
and CRC). :meth:`Target.boot` is the hook a restarted device runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from otaflash import _core
from otaflash.errors import InputError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from otaflash.progress import ProgressCallback

__all__ = [
    "BootResult",
    "Geometry",
    "InPlaceResult",
    "InstallResult",
    "InstallSession",
    "Layout",
    "SlotState",
    "Target",
    "TargetInfo",
    "WriteResult",
    "open_target",
]

Layout = Literal["raw", "ab", "inplace"]


@dataclass(frozen=True)
class Geometry:
    kind: str
    """``nor``, ``nand``, ``ram`` (mtdram) or ``image`` (a file)."""
    size: int
    erase_size: int
    write_size: int
    page_size: int
    oob_size: int


@dataclass(frozen=True)
class SlotState:
    """The update layout's state record."""

    layout: str
    """``ab`` or ``inplace``."""
    phase: str
    """``idle``, ``writing``, ``trial`` (A/B) or ``updating`` (in place)."""
    active: int
    slots: list[dict[str, Any]]
    next: dict[str, Any]
    """What a restarted hook does: ``action`` is ``boot``, ``resume``,
    ``trial`` or ``rollback``, ``slot`` which slot."""
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class TargetInfo:
    uri: str
    name: str
    geometry: Geometry
    bad_blocks: list[int]
    """Offsets of erase blocks marked bad."""
    slots: SlotState | None


@dataclass(frozen=True)
class WriteResult:
    uri: str
    layout: str
    offset: int
    size: int
    sha256: str
    slot: int | None
    blocks: int
    blocks_unchanged: int
    erases: int
    erases_skipped: int
    bytes_programmed: int
    bad_blocks_skipped: list[int]
    blocks_relocated: list[int]
    steps: int | None


@dataclass(frozen=True)
class BootResult:
    action: str
    """What the record said: ``boot``, ``resume``, ``trial`` or ``rollback``."""
    resumed: bool
    boot_slot: int
    image: dict[str, Any] | None


class Target:
    """An open flash target; a context manager. Long operations release the
    GIL, report progress as :mod:`otaflash.progress` describes, stop on
    Ctrl-C, and can be stopped from another thread with :meth:`cancel`."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._target: _core.FlashTarget | None = _core.FlashTarget(uri)

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def _core(self) -> _core.FlashTarget:
        if self._target is None:
            raise InputError(f"{self._uri}: the target is closed")
        return self._target

    def close(self) -> None:
        """Closes the device (a closed target refuses further use)."""
        self._target = None

    def geometry(self) -> Geometry:
        return Geometry(**self._core.geometry())

    def info(self) -> TargetInfo:
        layout = self._core.layout()
        return TargetInfo(
            uri=self.uri,
            name=self._core.name,
            geometry=self.geometry(),
            bad_blocks=self._core.bad_blocks(),
            slots=_slot_state(layout) if layout is not None else None,
        )

    def write(
        self,
        image: str | os.PathLike[str],
        offset: int = 0,
        *,
        layout: Layout = "raw",
        progress: ProgressCallback | None = None,
        skip_blank: bool = True,
        skip_unchanged: bool = True,
    ) -> WriteResult:
        """Writes the image file; raises :class:`~otaflash.errors.GeometryError`
        before touching the flash when it does not fit or ``offset`` is not
        erase-block aligned."""
        raw = self._core.write(
            os.fspath(image), offset, layout, progress, skip_blank, skip_unchanged
        )
        return WriteResult(
            uri=self.uri,
            layout=raw["layout"],
            offset=raw["offset"],
            size=raw["size"],
            sha256=raw["sha256"],
            slot=raw.get("slot"),
            blocks=raw.get("blocks", 0),
            blocks_unchanged=raw.get("blocks_unchanged", 0),
            erases=raw.get("erases", 0),
            erases_skipped=raw.get("erases_skipped", 0),
            bytes_programmed=raw.get("bytes_programmed", 0),
            bad_blocks_skipped=raw.get("bad_blocks_skipped", []),
            blocks_relocated=raw.get("blocks_relocated", []),
            steps=raw.get("steps"),
        )

    def verify(
        self,
        image: str | os.PathLike[str],
        offset: int = 0,
        *,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Checks the target holds exactly the image at ``offset`` (bad blocks
        skipped on NAND); returns the SHA-256 hex, raises
        :class:`~otaflash.errors.VerifyError` at the first difference."""
        return self._core.verify(os.fspath(image), offset, progress)

    def read(self, offset: int, size: int) -> bytes:
        return self._core.read(offset, size)

    def boot(
        self,
        image: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> BootResult:
        """The hook a restarted device runs: finishes an interrupted update
        (given its image), then decides which slot boots (A/B: a pending
        trial uses a try, an unconfirmed trial out of tries rolls back)."""
        raw = self._core.boot(os.fspath(image) if image is not None else None, progress)
        return BootResult(
            action=raw["action"],
            resumed=raw["resumed"],
            boot_slot=raw["boot_slot"],
            image=raw["image"],
        )

    def confirm(self) -> int | None:
        """The running A/B image is good: its trial becomes the active slot."""
        return self._core.confirm()

    def begin_install(
        self,
        size: int,
        sha256: str,
        *,
        layout: Literal["ab", "raw"] = "ab",
        patch: bool = False,
        progress: ProgressCallback | None = None,
        skip_blank: bool = True,
        skip_unchanged: bool = True,
    ) -> InstallSession:
        """Starts a streaming install of an image of ``size`` bytes with that
        SHA-256: feed it with :meth:`InstallSession.write` as the bytes arrive
        (a download), then :meth:`InstallSession.finish`. With ``patch``, the
        bytes are a sequential patch from the active slot's image to the new
        one (``ab`` layout only), applied on the way in."""
        return InstallSession(
            _core.begin_install(
                self._core, size, sha256, layout, patch, progress, skip_blank, skip_unchanged
            )
        )

    def apply_in_place(
        self, patch: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> InPlaceResult:
        """Applies an in-place patch file to the single slot (the layout is
        created on a device without one), or finishes it after a power cut:
        run it again with the same patch. The patch is checked whole and the
        slot's old image against it before the first block is replaced."""
        raw = _core.apply_patch_in_place(self._core, os.fspath(patch), progress)
        return InPlaceResult(
            size=raw["size"],
            sha256=raw["sha256"],
            steps=raw["steps"],
            resumed_from=raw["resumed_from"],
        )

    def cancel(self) -> None:
        self._core.cancel()

    def __enter__(self) -> Target:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Target({self.uri!r})"


@dataclass(frozen=True)
class InPlaceResult:
    size: int
    sha256: str
    steps: int
    """Block replacements the update takes in all."""
    resumed_from: int
    """Steps already done before this run (0 for a fresh start)."""


@dataclass(frozen=True)
class InstallResult:
    layout: str
    slot: int | None
    """The slot now on trial (``ab``), None for ``raw``."""
    size: int
    sha256: str
    """SHA-256 of the bytes written, read back from the flash."""
    blocks: int
    blocks_unchanged: int
    erases: int
    erases_skipped: int
    bytes_programmed: int


class InstallSession:
    """A streaming install under way (see :meth:`Target.begin_install`).

    Bytes are queued to a native thread that writes (or patches) as they
    come; an error there surfaces from the next :meth:`write` or from
    :meth:`finish`. :meth:`abort` stops it; the running image is never
    touched.
    """

    def __init__(self, session: _core.InstallSession) -> None:
        self._session = session

    def write(self, data: Buffer) -> None:
        self._session.write(data)

    def finish(self) -> InstallResult:
        """Finishes, reads the image back and checks its SHA-256 (``ab``:
        then switches to a trial of the new slot); raises
        :class:`~otaflash.errors.VerifyError` if it differs."""
        raw = self._session.finish()
        return InstallResult(
            layout=raw["layout"],
            slot=raw["slot"],
            size=raw["size"],
            sha256=raw["sha256"],
            blocks=raw["blocks"],
            blocks_unchanged=raw["blocks_unchanged"],
            erases=raw["erases"],
            erases_skipped=raw["erases_skipped"],
            bytes_programmed=raw["bytes_programmed"],
        )

    def abort(self) -> None:
        self._session.abort()


def open_target(uri: str) -> Target:
    """Opens a target URI; raises :class:`~otaflash.errors.TargetError` for a
    malformed URI or a path that is not what its scheme says."""
    return Target(uri)


def _slot_state(raw: dict[str, Any]) -> SlotState:
    return SlotState(
        layout=raw["layout"],
        phase=raw["phase"],
        active=raw["active"],
        slots=raw["slots"],
        next=raw["next"],
        raw=raw,
    )
