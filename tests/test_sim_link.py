"""The link emulator itself: it must impose what it claims, or every test and
benchmark built on it measures nothing."""

from __future__ import annotations

import os
import select
import time

import serial

from otaflash.sim.link import Faults, LinkEmulator


def _pump(link: LinkEmulator, payload: bytes, *, baud: int | None = None) -> tuple[bytes, float]:
    """Sends ``payload`` host -> device; returns what arrived and how long it took."""
    rate = baud or link.baud
    with (
        serial.Serial(link.host_port, rate, timeout=0) as host,
        serial.Serial(link.device_port, rate, timeout=0) as device,
    ):
        started = time.monotonic()
        host.write(payload)
        got = bytearray()
        line_time = len(payload) * 10 / rate + link.latency
        last = started
        while len(got) < len(payload):
            select.select([device.fileno()], [], [], 0.05)
            chunk = device.read(65536)
            now = time.monotonic()
            if chunk:
                got += chunk
                last = now
            elif now - started > line_time and now - last > 0.5:
                break  # dropped or cut: nothing more is coming
        return bytes(got), last - started


def test_bytes_take_ten_bit_times_each_and_arrive_intact() -> None:
    payload = os.urandom(11_520)  # one second at 115200 8N1
    with LinkEmulator(115_200) as link:
        got, seconds = _pump(link, payload)
    assert got == payload
    # Never faster than the line (a lower bound holds however busy the machine is).
    assert seconds >= 0.97


def test_latency_is_added_per_direction() -> None:
    with LinkEmulator(4_000_000, latency=0.25) as link:
        got, seconds = _pump(link, b"ping")
    assert got == b"ping"
    assert seconds >= 0.25


def test_bit_errors_hit_at_the_rate_asked_for() -> None:
    payload = bytes(100_000)
    with LinkEmulator(4_000_000, faults=Faults(ber=1e-4, direction="to_device"), seed=1) as link:
        got, _ = _pump(link, payload)
        corrupted = link.stats.corrupted
    assert len(got) == len(payload)
    flipped = sum(bin(b).count("1") for b in got)
    # 800,000 bits at 1e-4: about 80 flips; the seed makes it repeatable.
    assert 40 <= flipped <= 140
    assert corrupted == sum(1 for b in got if b)


def test_drops_lose_bytes_and_a_cut_stops_at_the_frame_asked_for() -> None:
    with LinkEmulator(4_000_000, faults=Faults(drop_rate=1e-3), seed=2) as link:
        got, _ = _pump(link, bytes(range(1, 256)) * 200)
    assert 51_000 - 120 <= len(got) < 51_000
    frames = b"".join(b"frame%d\x00" % i for i in range(10))
    with LinkEmulator(4_000_000, faults=Faults(disconnect_at_frame=4)) as link:
        got, _ = _pump(link, frames)
        assert link.disconnected
    assert got == b"".join(b"frame%d\x00" % i for i in range(4))


def test_a_rate_mismatch_garbles_like_a_real_uart() -> None:
    with LinkEmulator(115_200) as link:
        with (
            serial.Serial(link.host_port, 115_200, timeout=0) as host,
            serial.Serial(link.device_port, 9_600, timeout=0) as device,
        ):
            host.write(b"hello world")
            time.sleep(0.1)
            got = device.read(100)
        garbled = link.stats.garbled_by_rate_mismatch
    assert garbled == 11
    assert got != b"hello world"
