"""Delta patches: make them, apply them while streaming, describe them.

The patch format (``docs/patch-format.md``) carries the sizes and SHA-256 of
the old and new images: :func:`apply` and :class:`Applier` refuse a wrong old
image before writing anything, and report success only after the new image's
SHA-256 matched. BSDIFF40 patches (``bsdiff``, ``bsdiff4``) apply the same way
(that format has no hashes to check the old image against).

>>> from otaflash import delta
>>> old = bytes(range(256)) * 64
>>> new = old[:5000] + b"new code" + old[5000:]
>>> patch = delta.diff_bytes(old, new)
>>> out = bytearray()
>>> applier = delta.Applier(old, out.extend)
>>> applier.feed(patch)
>>> applier.finish().new_size == len(new), bytes(out) == new
(True, True)

Native work releases the GIL; progress callbacks follow :mod:`otaflash.progress`
and Ctrl-C interrupts long work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otaflash import _core
from otaflash.errors import InputError, VerifyError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from otaflash.progress import ProgressCallback

__all__ = [
    "DEFAULT_MAX_WORKING_SET",
    "Applier",
    "ApplyResult",
    "PatchInfo",
    "RebuiltStream",
    "apply",
    "checkpoint_offsets",
    "diff",
    "diff_bytes",
    "patch_info",
    "rebuilt_stream",
]

#: The applier refuses patches needing more working memory than this by default.
DEFAULT_MAX_WORKING_SET = 4 << 20
_DEFAULT_READ_CACHE = 256 << 10


@dataclass(frozen=True)
class ApplyResult:
    """A verified apply: the new image's size and SHA-256."""

    format: str
    new_size: int
    new_sha256: str
    patch_size: int


@dataclass(frozen=True)
class PatchInfo:
    """What a patch's header says (``fields`` has everything, see ``patch-info``)."""

    format: str
    #: None for VCDIFF, whose windows only say their own sizes.
    new_size: int | None
    patch_size: int | None
    fields: dict[str, Any]


class Applier:
    """Streaming apply: ``feed(chunk)`` as patch bytes arrive, then ``finish()``.

    ``old`` is a path, a bytes-like image, or a callable ``read_at(offset, length)
    -> bytes`` (then pass ``old_size``); ``sink`` is a path (created; with a
    ``checkpoint`` it is cut at the checkpoint's output offset) or a callable
    ``write(data)``. ``checkpoint()`` returns the latest resume point (bytes) or
    None; keep it only once the sink has stored ``output_offset`` bytes durably.
    To resume after a power cut, pass it as ``checkpoint=`` and feed the patch
    from :func:`checkpoint_offsets`'s patch offset on.
    """

    def __init__(
        self,
        old: str | os.PathLike[str] | Buffer | Callable[[int, int], Buffer],
        sink: str | os.PathLike[str] | Callable[[bytes], object],
        *,
        old_size: int | None = None,
        checkpoint: Buffer | None = None,
        max_working_set: int = DEFAULT_MAX_WORKING_SET,
        read_cache: int = _DEFAULT_READ_CACHE,
        progress: ProgressCallback | None = None,
    ) -> None:
        if isinstance(sink, os.PathLike):
            sink = os.fspath(sink)
        self._inner = _core.Applier(
            old,
            sink,
            old_size=old_size,
            checkpoint=checkpoint,
            max_working_set=max_working_set,
            read_cache=read_cache,
            progress=progress,
        )

    def feed(self, chunk: Buffer) -> None:
        """Pushes the next patch bytes, of any size."""
        self._inner.feed(chunk)

    def finish(self) -> ApplyResult:
        """Checks the whole patch and the new image's SHA-256; raises if anything is off."""
        return ApplyResult(*self._inner.finish())

    def checkpoint(self) -> bytes | None:
        return self._inner.checkpoint()

    @property
    def patch_offset(self) -> int:
        """Where in the patch the next ``feed`` continues."""
        return self._inner.patch_offset

    @property
    def output_offset(self) -> int:
        """Output bytes handed to the sink so far (unverified until ``finish``)."""
        return self._inner.output_offset

    @property
    def working_set(self) -> int | None:
        """Working memory of this apply in bytes, once the header is in."""
        return self._inner.working_set


def checkpoint_offsets(checkpoint: Buffer) -> tuple[int, int]:
    """``(patch_offset, output_offset)`` of a checkpoint from :meth:`Applier.checkpoint`."""
    return _core.checkpoint_offsets(checkpoint)


def diff_bytes(
    old: Buffer,
    new: Buffer,
    *,
    kind: str = "sequential",
    level: int | None = None,
    window_log: int = 21,
    block_size: int | None = None,
    frame_size: int | None = None,
    slot_size: int | None = None,
    threads: int = 0,
    compression: str = "zstd",
    progress: ProgressCallback | None = None,
) -> bytes:
    """A patch turning ``old`` into ``new``.

    ``kind`` is ``sequential`` (the new image goes elsewhere: A/B slot, file) or
    ``in-place`` (it overwrites the old one in a single slot of ``slot_size``
    bytes with ``block_size`` erase blocks). ``window_log`` and ``block_size``
    set the applier's working memory (about ``2**window_log + block_size``).
    ``compression`` is ``zstd`` (fast to apply), ``lzma2`` (the smallest
    patches, for slow or metered links; applies several times slower) or
    ``none``; ``level`` defaults to the codec's strongest (zstd 19, xz 9).
    ``progress("patch", done, total)`` is called while it works; Ctrl-C stops it.
    """
    return _core.diff(
        old,
        new,
        kind=kind,
        level=level,
        window_log=window_log,
        block_size=block_size,
        frame_size=frame_size,
        slot_size=slot_size,
        threads=threads,
        compression=compression,
        progress=progress,
    )


def diff(
    old: str | os.PathLike[str],
    new: str | os.PathLike[str],
    patch: str | os.PathLike[str],
    **options: Any,
) -> PatchInfo:
    """Writes a patch file turning file ``old`` into file ``new``; options as :func:`diff_bytes`."""
    old_bytes = _read(old)
    new_bytes = _read(new)
    data = diff_bytes(old_bytes, new_bytes, **options)
    _write_atomically(patch, data)
    return patch_info(data)


def apply(
    old: str | os.PathLike[str],
    patch: str | os.PathLike[str],
    new: str | os.PathLike[str],
    *,
    max_working_set: int = DEFAULT_MAX_WORKING_SET,
    progress: ProgressCallback | None = None,
) -> ApplyResult:
    """Applies patch file ``patch`` to file ``old``, writing file ``new``.

    The output goes to ``NEW.part`` and is renamed to ``new`` only after its
    SHA-256 matched the patch's; on any error nothing is left at ``new``.
    Because that file is discarded on error, the old image is hashed on a
    second thread while the patch is applied rather than before it (a wrong
    old image still fails, naming the hash the patch needs).
    """
    target = os.fspath(new)
    partial = target + ".part"
    try:
        result = _core.apply_file(
            os.fspath(old),
            os.fspath(patch),
            partial,
            max_working_set=max_working_set,
            old_check="alongside",
            progress=progress,
        )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    os.replace(partial, target)
    return ApplyResult(*result)


def patch_info(patch: str | os.PathLike[str] | Buffer) -> PatchInfo:
    """Reads a patch's header (a path, or the patch's first bytes)."""
    if isinstance(patch, str | os.PathLike):
        with open(patch, "rb") as f:
            head = f.read(_core.PATCH_HEADER_MAX)
    else:
        head = bytes(memoryview(patch)[: _core.PATCH_HEADER_MAX])
    fields = _core.patch_info(head)
    return PatchInfo(
        format=str(fields["format"]),
        new_size=None if fields["new_size"] is None else int(fields["new_size"]),
        patch_size=fields.get("patch_size"),
        fields=dict(fields),
    )


@dataclass(frozen=True)
class RebuiltStream:
    """A new image rebuilt from an old one and a patch, checked whole before
    any byte of it is handed out: iterate ``chunks()`` to get it again."""

    size: int
    sha256: str
    old: str
    patch: str
    chunk_size: int

    def chunks(self) -> Iterator[bytes]:
        """The new image, in pieces as the applier makes them."""
        out: list[bytes] = []
        applier = Applier(self.old, out.append)
        with open(self.patch, "rb") as f:
            while block := f.read(self.chunk_size):
                applier.feed(block)
                if out:
                    yield b"".join(out)
                    out.clear()
        applier.finish()
        if out:
            yield b"".join(out)


def rebuilt_stream(
    old: str | os.PathLike[str],
    patch: str | os.PathLike[str],
    *,
    chunk_size: int = 64 << 10,
    progress: ProgressCallback | None = None,
) -> RebuiltStream:
    """For a device that takes whole images (a DFU bootloader): applies
    ``patch`` to the file ``old`` once without keeping the output, so a
    corrupt or foreign patch fails before any device is touched, and returns
    the new image's size, its SHA-256 and a way to stream it. Memory stays
    bounded (the applier's working set and one chunk)."""
    digest = hashlib.sha256()
    size = 0

    def measure(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)

    applier = Applier(old, measure, progress=progress)
    with open(patch, "rb") as f:
        while block := f.read(chunk_size):
            applier.feed(block)
    result = applier.finish()
    # BSDIFF40 patches carry no hash; the applier's own check covers ours.
    if result.new_sha256 and result.new_sha256 != digest.hexdigest():
        raise VerifyError(f"{os.fspath(patch)}: the rebuilt image does not match the patch")
    return RebuiltStream(size, digest.hexdigest(), os.fspath(old), os.fspath(patch), chunk_size)


def _read(path: str | os.PathLike[str]) -> bytes:
    if os.path.isdir(path):
        raise InputError(f"{os.fspath(path)} is a directory, not an image file")
    with open(path, "rb") as f:
        return f.read()


def _write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    target = os.fspath(path)
    partial = target + ".part"
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, target)
