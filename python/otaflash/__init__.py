"""otaflash: over-the-air firmware updates for real devices.

The public API lives in submodules (``otaflash.hashing``, ``otaflash.errors``,
...). Importing this package loads nothing else: ``otaflash.errors`` stays
usable without the extension, and the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["__version__"]

if TYPE_CHECKING:
    __version__: str


def __getattr__(name: str) -> str:
    if name == "__version__":
        from otaflash._core import __version__  # noqa: PLC0415 (lazy on purpose)

        return __version__
    raise AttributeError(f"module 'otaflash' has no attribute {name!r}")
