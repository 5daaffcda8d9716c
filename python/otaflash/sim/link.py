"""An emulated serial line between two programs, with faults.

:class:`LinkEmulator` gives two pty paths, one for the host program and one
for the device program, and carries bytes between them the way a UART link
would: at the line rate (10 bit times per byte, 8N1), after a latency per
direction (a USB-serial adapter's), with a bounded transmit buffer (a sender
that outruns the line blocks, as on a real port). It can damage the traffic:
random bit errors at a bit error rate, dropped bytes, a stall, and a
disconnect after a number of frames (0x00 delimiters, for the otaflash
protocol) or bytes, either silent (the cable to the device is cut) or as a
hangup (the host's port vanishes, as when a USB adapter is pulled).

By default the rate follows each side's own terminal settings, so a baud
change negotiated by the two programs takes effect on the line, and bytes
sent at one rate and received at another arrive as garbage, as they would.
"""

from __future__ import annotations

import os
import random
import select
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from otaflash.sim.pty import PtyPort

__all__ = ["Faults", "LinkEmulator", "LinkStats"]

_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (
        1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000,
        576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000,
        4000000,
    )
    if hasattr(termios, f"B{rate}")
}  # fmt: skip


@dataclass(frozen=True)
class Faults:
    """What to do to the traffic. Byte counts and frames are host → device."""

    #: Probability that any one bit is flipped.
    ber: float = 0.0
    #: Probability that any one byte is lost.
    drop_rate: float = 0.0
    #: Apply ``ber``/``drop_rate`` to "both" directions, "to_device" or "to_host".
    direction: str = "both"
    #: Freeze the line for ``stall_seconds`` once this many bytes went to the device.
    stall_after_bytes: int | None = None
    stall_seconds: float = 0.0
    #: Cut the line after the Nth frame delimiter (0x00) sent to the device.
    disconnect_at_frame: int | None = None
    #: Cut the line after this many bytes sent to the device.
    disconnect_after_bytes: int | None = None
    #: On a cut, also hang up the host's pty (its port "disappears").
    hangup: bool = False


@dataclass
class LinkStats:
    to_device: int = 0
    to_host: int = 0
    frames_to_device: int = 0
    corrupted: int = 0
    dropped: int = 0
    lost_in_disconnect: int = 0
    garbled_by_rate_mismatch: int = 0
    disconnects: int = 0
    stalls: int = 0


@dataclass
class _Direction:
    name: str
    src: PtyPort
    dst: PtyPort
    line_free_at: float = 0.0
    pending: deque[tuple[float, bytes]] = field(default_factory=deque)
    outbuf: bytearray = field(default_factory=bytearray)
    rate: int = 115200


class LinkEmulator:
    """A serial line between ``host_port`` and ``device_port`` (pty paths)."""

    def __init__(
        self,
        baud: int = 115200,
        *,
        latency: float = 0.0,
        faults: Faults | None = None,
        follow_termios: bool = True,
        tx_buffer: int = 4096,
        seed: int | None = None,
    ) -> None:
        self.baud = baud
        self.latency = latency
        self.faults = faults or Faults()
        self.follow_termios = follow_termios
        self.tx_buffer = tx_buffer
        self.stats = LinkStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._host = PtyPort()
        self._device = PtyPort()
        for pty in (self._host, self._device):
            self._set_speed(pty, baud)
        self._to_device = _Direction("to_device", self._host, self._device, rate=baud)
        self._to_host = _Direction("to_host", self._device, self._host, rate=baud)
        self._disconnected = False
        self._stall_until = 0.0
        self._stalled_once = False
        self._next_error = {"to_device": 0, "to_host": 0}
        self._next_drop = {"to_device": 0, "to_host": 0}
        self._position = {"to_device": 0, "to_host": 0}
        self._running = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._reset_fault_positions()

    # -- public ---------------------------------------------------------------

    @property
    def host_port(self) -> str:
        """The pty path the host program opens."""
        return self._host.path

    @property
    def device_port(self) -> str:
        """The pty path the device program opens."""
        return self._device.path

    def start(self) -> LinkEmulator:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="link-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._host.close()
        self._device.close()

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults) -> None:
        """New faults from now on (positions count from now)."""
        with self._lock:
            self.faults = faults
            self._stalled_once = False
            self._reset_fault_positions()
        os.write(self._wake_w, b"x")

    def reconnect(self, faults: Faults | None = None) -> None:
        """Plugs the cable back in (a new host pty if the old one was hung up)."""
        with self._lock:
            if self._host.fileno() < 0:
                self._host = PtyPort()
                self._set_speed(self._host, self.baud)
                self._to_device.src = self._host
                self._to_host.dst = self._host
            for direction in (self._to_device, self._to_host):
                direction.pending.clear()
                direction.outbuf.clear()
                direction.line_free_at = 0.0
            self._disconnected = False
            self.faults = faults or Faults()
            self._stalled_once = False
            self._reset_fault_positions()
            self.stats.frames_to_device = 0
            self._position = {"to_device": 0, "to_host": 0}
        os.write(self._wake_w, b"x")

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    # -- internals ------------------------------------------------------------

    @staticmethod
    def _set_speed(pty: PtyPort, baud: int) -> None:
        code = {rate: code for code, rate in _SPEEDS.items()}.get(baud)
        if code is None:
            return
        attrs = termios.tcgetattr(pty.far_end())
        attrs[4] = attrs[5] = code
        termios.tcsetattr(pty.far_end(), termios.TCSANOW, attrs)

    def _rate_of(self, pty: PtyPort) -> int:
        if not self.follow_termios:
            return self.baud
        try:
            code = termios.tcgetattr(pty.far_end())[5]
        except (termios.error, OSError):
            return self.baud
        return _SPEEDS.get(code, self.baud)

    def _gap(self, probability: float) -> int:
        """Bytes until the next event of a per-byte ``probability`` (geometric)."""
        if probability <= 0:
            return 1 << 62
        return int(self._rng.expovariate(probability)) + 1

    def _reset_fault_positions(self) -> None:
        byte_error = 1 - (1 - self.faults.ber) ** 8
        for name in ("to_device", "to_host"):
            applies = self.faults.direction in ("both", name)
            self._next_error[name] = self._position.get(name, 0) + self._gap(
                byte_error if applies else 0
            )
            self._next_drop[name] = self._position.get(name, 0) + self._gap(
                self.faults.drop_rate if applies else 0
            )

    def _damage(self, name: str, data: bytes) -> bytes:
        """Bit errors and drops by position in the stream, skipping geometrically."""
        start = self._position[name]
        end = start + len(data)
        self._position[name] = end
        if self._next_error[name] >= end and self._next_drop[name] >= end:
            return data
        out = bytearray(data)
        byte_error = 1 - (1 - self.faults.ber) ** 8
        while self._next_error[name] < end:
            i = self._next_error[name] - start
            out[i] ^= 1 << self._rng.randrange(8)
            self.stats.corrupted += 1
            self._next_error[name] += self._gap(byte_error)
        drops: list[int] = []
        while self._next_drop[name] < end:
            drops.append(self._next_drop[name] - start)
            self.stats.dropped += 1
            self._next_drop[name] += self._gap(self.faults.drop_rate)
        for i in reversed(drops):
            del out[i]
        return bytes(out)

    def _cut_point(self, data: bytes) -> int | None:
        """Where in ``data`` (host → device) the line is cut, if it is."""
        faults = self.faults
        if faults.disconnect_at_frame is not None:
            wanted = faults.disconnect_at_frame - self.stats.frames_to_device
            index = -1
            for _ in range(max(wanted, 0)):
                index = data.find(0, index + 1)
                if index < 0:
                    break
            if wanted <= 0:
                return 0
            if index >= 0:
                return index + 1
        if faults.disconnect_after_bytes is not None:
            left = faults.disconnect_after_bytes - self._position["to_device"]
            if left < len(data):
                return max(left, 0)
        return None

    def _take(self, direction: _Direction, data: bytes, now: float) -> None:
        name = direction.name
        if self._disconnected:
            self.stats.lost_in_disconnect += len(data)
            return
        cut = None
        if name == "to_device":
            cut = self._cut_point(data)
            kept = data if cut is None else data[:cut]
            self.stats.frames_to_device += kept.count(0)
            before = self._position[name]
            self.stats.to_device += len(kept)
            stall_at = self.faults.stall_after_bytes
            if (
                stall_at is not None
                and not self._stalled_once
                and before <= stall_at < before + len(kept)
            ):
                self._stalled_once = True
                self.stats.stalls += 1
                self._stall_until = now + self.faults.stall_seconds
            data = kept
        else:
            self.stats.to_host += len(data)
        data = self._damage(name, data)
        sender = self._rate_of(direction.src)
        receiver = self._rate_of(direction.dst)
        direction.rate = sender
        if sender != receiver and data:
            # Sent at one rate, sampled at another: the receiver sees noise.
            self.stats.garbled_by_rate_mismatch += len(data)
            data = bytes(self._rng.randrange(256) for _ in data)
        byte_time = 10.0 / sender
        piece = max(1, int(sender / 10 * 0.002))
        at = max(now, direction.line_free_at)
        for i in range(0, len(data), piece):
            chunk = data[i : i + piece]
            at += len(chunk) * byte_time
            direction.pending.append((at + self.latency, chunk))
        direction.line_free_at = max(at, direction.line_free_at)
        if cut is not None:
            # What was already on the line gets through; the rest is lost.
            self._disconnect()

    def _disconnect(self) -> None:
        self._disconnected = True
        self.stats.disconnects += 1
        if self.faults.hangup:
            # The adapter vanishes at once: nothing more reaches the host.
            self._to_host.pending.clear()
            self._to_host.outbuf.clear()
            self._host.close()

    def _backlog(self, direction: _Direction, now: float) -> float:
        return max(0.0, direction.line_free_at - now) * direction.rate / 10

    def _deliver(self, now: float) -> None:
        """Writes what is due to each receiver (nothing while stalled)."""
        stalled = now < self._stall_until
        for d in (self._to_device, self._to_host):
            if d.dst.fileno() < 0:
                d.pending.clear()
                continue
            while not stalled and d.pending and d.pending[0][0] <= now:
                d.outbuf += d.pending.popleft()[1]
            if not d.outbuf:
                continue
            try:
                written = os.write(d.dst.fileno(), d.outbuf)
                del d.outbuf[:written]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                d.outbuf.clear()

    def _wait_sets(self, now: float) -> tuple[list[int], list[int], float]:
        """What to select on, and for how long."""
        directions = (self._to_device, self._to_host)
        # A full transmit buffer holds the sender off, as a real port's does.
        readers = [
            d.src.fileno()
            for d in directions
            if d.src.fileno() >= 0 and self._backlog(d, now) < self.tx_buffer
        ]
        writers = [d.dst.fileno() for d in directions if d.outbuf and d.dst.fileno() >= 0]
        wait = 0.05
        due = [d.pending[0][0] for d in directions if d.pending]
        if due:
            wait = min(wait, max(0.0, min(due) - now))
        if now < self._stall_until:
            wait = min(wait, self._stall_until - now)
        if len(readers) < sum(1 for d in directions if d.src.fileno() >= 0):
            wait = min(wait, 0.002)
        return readers, writers, wait

    def _run(self) -> None:
        directions = (self._to_device, self._to_host)
        while self._running:
            with self._lock:
                self._deliver(time.monotonic())
                readers, writers, wait = self._wait_sets(time.monotonic())
            try:
                ready, _, _ = select.select([*readers, self._wake_r], writers, [], wait)
            except (OSError, ValueError):
                continue
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            with self._lock:
                now = time.monotonic()
                for d in directions:
                    fd = d.src.fileno()
                    if fd < 0 or fd not in ready:
                        continue
                    try:
                        data = os.read(fd, 4096)
                    except OSError:
                        # EAGAIN, or nobody has the far end open right now (EIO).
                        continue
                    if data:
                        self._take(d, data, now)
