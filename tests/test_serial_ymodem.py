"""YMODEM against real peers: lrzsz `rb` and `sb`, and a real U-Boot `loady`
(Debian's u-boot-qemu under qemu), plus a noisy emulated line."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import serial

from otaflash import errors
from otaflash.serial import ymodem
from otaflash.sim.link import Faults, LinkEmulator
from otaflash.sim.pty import PtyPort
from tests.conftest import run_otaflash
from tests.serial_helpers import Background, on_tty, otaflash_argv

UBOOT_ROM = Path("/usr/lib/u-boot/qemu-x86/u-boot.rom")


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    # Not a multiple of 128 or 1024, with CP/M EOF bytes at the end: the
    # receiver must trim to the declared size, not strip padding.
    path.write_bytes(bytes(range(256)) * 300 + b"tail\x1a\x1a")
    return path


@pytest.mark.parametrize("block_size", [1024, 128])
def test_our_sender_to_lrzsz_rb(tmp_path: Path, payload: Path, block_size: int) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # A line between us, not a bare pty: rb flushes its input right after each
    # ACK, and only a real line's transit time keeps the next packet clear of that.
    with LinkEmulator(921_600) as link:
        rb = on_tty(["rb"], link.device_port, cwd=inbox)
        try:
            result = ymodem.send(link.host_port, payload, baud=921_600, block_size=block_size)
            code, _, err = rb.wait(30)
        finally:
            rb.stop()
    assert code == 0, err
    assert (inbox / "fw.bin").read_bytes() == payload.read_bytes()
    assert result.size == payload.stat().st_size
    assert not result.verified, "YMODEM has no read-back: never claim one"
    expected_blocks = -(-result.size // block_size)
    assert result.details["blocks"] in (expected_blocks, expected_blocks + 1)


@pytest.mark.parametrize("flags", [["-k"], []], ids=["sb -k (1 KiB)", "sb (128 B)"])
def test_lrzsz_sb_to_our_receiver(tmp_path: Path, payload: Path, flags: list[str]) -> None:
    second = tmp_path / "notes.txt"
    second.write_bytes(b"a second file in the same batch\n")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with PtyPort() as port:
        sb = on_tty(["sb", *flags, str(payload), str(second)], port.path)
        try:
            files = ymodem.receive(port, inbox, start_timeout=20)
            code, _, err = sb.wait(30)
        finally:
            sb.stop()
    assert code == 0, err
    assert [f["name"] for f in files] == ["fw.bin", "notes.txt"]
    assert (inbox / "fw.bin").read_bytes() == payload.read_bytes()
    assert (inbox / "notes.txt").read_bytes() == second.read_bytes()


def test_u_boot_style_receiver_acks_the_first_eot(tmp_path: Path, payload: Path) -> None:
    """`otaflash sim ymodem --uboot` against `otaflash flash --protocol ymodem`."""
    received = tmp_path / "got.bin"
    with PtyPort() as line:
        device = Background(
            otaflash_argv(
                "sim", "ymodem", "--port", line.path, "--target", f"file:{received}",
                "--uboot", "--start-timeout", "20", "--json",
            )
        )  # fmt: skip
        try:
            result = ymodem.send(line, payload)
            code, out, err = device.wait(30)
        finally:
            device.stop()
    assert code == 0, err
    assert received.read_bytes() == payload.read_bytes()
    assert result.details["first_eot_acked"] is True
    assert '"name":"fw.bin"' in out


def test_a_noisy_line_costs_retransmissions_not_bytes(tmp_path: Path, payload: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # Noise on the packets, which CRC-16 protects; the bare ACK/NAK bytes have no
    # protection in YMODEM, so noise there is a property of the protocol, not ours.
    faults = Faults(ber=1e-5, direction="to_device")
    with LinkEmulator(921_600, latency=0.002, faults=faults, seed=11) as link:
        rb = on_tty(["rb"], link.device_port, cwd=inbox)
        try:
            result = ymodem.send(link.host_port, payload, baud=921_600, timeout=1)
            code, _, err = rb.wait(60)
        finally:
            rb.stop()
        corrupted = link.stats.corrupted
    assert code == 0, err
    assert corrupted > 0
    assert result.details["retransmitted"] > 0
    assert (inbox / "fw.bin").read_bytes() == payload.read_bytes()


def test_no_receiver_is_a_timeout_that_says_what_to_start(payload: Path) -> None:
    with PtyPort() as port, pytest.raises(errors.LinkTimeoutError, match="loady"):
        ymodem.send(port, payload, start_timeout=0.5)


class UBoot:
    """Debian's U-Boot for qemu-x86, its serial console on a pty."""

    def __init__(self) -> None:
        qemu = shutil.which("qemu-system-i386")
        assert qemu, "qemu-system-x86 is a test dependency (scripts/system-deps.sh)"
        assert UBOOT_ROM.exists(), "u-boot-qemu is a test dependency (scripts/system-deps.sh)"
        self.proc = subprocess.Popen(
            [qemu, "-bios", str(UBOOT_ROM), "-display", "none", "-monitor", "none",
             "-serial", "pty", "-nic", "none", "-m", "128", "-no-reboot"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(/dev/pts/\d+)", line)
        assert match, line
        self.console = serial.Serial(match.group(1), 115200, timeout=0.2)

    def read_until(self, marker: bytes, timeout: float, poke: bool = False) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if poke:
                self.console.write(b"\n")
            seen += self.console.read(4096)
        assert marker in seen, seen[-500:]
        return seen

    def command(self, text: str, until: bytes, timeout: float = 10) -> bytes:
        self.console.write(text.encode() + b"\n")
        return self.read_until(until, timeout)

    def close(self) -> None:
        self.console.close()
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.slow
def test_our_sender_to_a_real_u_boot_loady(tmp_path: Path) -> None:
    data = bytes((i * 31 + (i >> 9)) & 0xFF for i in range(40_000)) + b"\x1a" * 3
    image = tmp_path / "u-boot-payload.bin"
    image.write_bytes(data)
    uboot = UBoot()
    try:
        uboot.read_until(b"autoboot", 60)
        uboot.read_until(b"=> ", 10, poke=True)
        uboot.command("loady 0x1000000", b"ymodem) download")
        result = ymodem.send(uboot.console, image, start_timeout=15)
        summary = uboot.read_until(b"=> ", 10)
        assert b"Total Size" in summary, summary
        assert f"= {len(data)} Bytes".encode() in summary, summary
        crc = uboot.command(f"crc32 0x1000000 {len(data):x}", b"=> ")
    finally:
        uboot.close()
    assert result.details["first_eot_acked"] is True, "U-Boot ACKs the first EOT"
    assert f"{zlib.crc32(data):08x}".encode() in crc, crc


def test_cli_sends_ymodem_to_rb(tmp_path: Path, payload: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with LinkEmulator(921_600) as link:
        rb = on_tty(["rb"], link.device_port, cwd=inbox)
        try:
            done = run_otaflash(
                ["flash", "--protocol", "ymodem", "--port", link.host_port, "--baud", "921600",
                 "--json", str(payload)]
            )  # fmt: skip
            code, _, err = rb.wait(30)
        finally:
            rb.stop()
    assert done.returncode == 0, done.stderr.decode()
    assert code == 0, err
    assert b'"protocol":"ymodem"' in done.stdout
    assert b'"verified":false' in done.stdout
    assert (inbox / "fw.bin").read_bytes() == payload.read_bytes()
