"""DfuSe memory layouts (``@Internal Flash /0x08000000/64*002Kg``): which
memory an alt setting holds, which pages an image needs erased, and whether
it fits at all. Parsing and planning run in the Rust core."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otaflash import _core

__all__ = ["MemoryLayout", "Segment"]


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    """One past the last byte."""
    page_size: int
    readable: bool
    erasable: bool
    writable: bool


@dataclass(frozen=True)
class MemoryLayout:
    name: str
    segments: tuple[Segment, ...]
    text: str
    """The alt setting's name it was read from."""

    @classmethod
    def parse(cls, text: str) -> MemoryLayout:
        """Raises :class:`~otaflash.errors.InputError` for a name that is not a layout."""
        name, segments = _core.dfuse_layout(text)
        return cls(name, tuple(Segment(*s) for s in segments), text)

    @property
    def start(self) -> int:
        return min(s.start for s in self.segments)

    @property
    def size(self) -> int:
        return sum(s.end - s.start for s in self.segments)

    def erase_plan(self, regions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Pages ``(start, size)`` to erase before writing ``regions``
        ``(start, length)``; raises :class:`~otaflash.errors.GeometryError`
        when a byte falls outside writable memory."""
        return _core.dfuse_erase_plan(self.text, list(regions))

    def readable(self, start: int, length: int) -> bool:
        at, end = start, start + length
        while at < end:
            segment = next((s for s in self.segments if s.start <= at < s.end), None)
            if segment is None or not segment.readable:
                return False
            at = segment.end
        return True
