"""What a serial flash returns, whatever the protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FlashResult"]


@dataclass
class FlashResult:
    """The outcome of flashing over a serial port.

    ``verified`` is true only when the device's contents were read back and
    compared (a SHA-256 from the otaflash agent, READ_MEMORY for the STM32
    bootloader); YMODEM has no read-back, so it is false there even though
    every block was acknowledged.
    """

    protocol: str
    port: str
    size: int
    seconds: float
    verified: bool
    sha256: str | None = None
    baud: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_bits_per_second(self) -> float:
        """Image bits delivered per second of wall time (10 line bits per byte aside)."""
        return self.size * 8 / self.seconds if self.seconds > 0 else 0.0

    def as_record(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "port": self.port,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
            "sha256": self.sha256,
            "baud": self.baud,
            **self.details,
        }
