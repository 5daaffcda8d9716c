"""Pseudo-terminals as stand-in serial ports.

A :class:`PtyPort` is a pty whose far end programs open by :attr:`path`
(``/dev/pts/N``) and whose near end we drive. It looks enough like a
pyserial port (``fileno()``, ``port``, ``baudrate``) for the Rust core to
drive it through its file descriptor. We keep the far end open ourselves,
so a program that closes it and a new one that opens it later find the
same port, as with a real cable that stays plugged in.

Linux ptys carry neither parity nor modem-control lines: peers must use 8N1
and no DTR/RTS reset (``stm32flash -m 8n1``).
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty

__all__ = ["PtyPort"]


class PtyPort:
    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[2] |= termios.CLOCAL | termios.CREAD
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        #: What a program opens to talk to us.
        self.path: str = os.ttyname(self._slave)
        #: Ignored: a pty has no line rate (pyserial-compatible attribute).
        self.baudrate = 0

    @property
    def port(self) -> str:
        return self.path

    def fileno(self) -> int:
        return self._master

    def far_end(self) -> int:
        """Our own descriptor of the far end (for reading its termios)."""
        return self._slave

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PtyPort({self.path})"
