"""otaflash: over-the-air firmware updates for real devices.

The public API lives in submodules (``otaflash.hashing``, ``otaflash.errors``,
...); importing this package stays cheap so the command line starts fast.
"""

from otaflash._core import __version__

__all__ = ["__version__"]
