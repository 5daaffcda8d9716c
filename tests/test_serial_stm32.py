"""The STM32 bootloader emulator proven by real tools, then our host on it.

stm32flash (Debian) and stm32loader (PyPI, through its documented library
API: its command line toggles DTR/RTS to reset the chip, which ptys refuse)
write, verify, read, erase and start images on the emulated F103 and F407;
then our host does the same on the same emulator, also across an emulated
line shared with stm32flash.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import serial
from stm32loader.bootloader import CommandError, Stm32Bootloader

from otaflash import errors, flash
from otaflash.serial import stm32 as host
from otaflash.sim import stm32 as emulator
from otaflash.sim.link import Faults, LinkEmulator
from otaflash.sim.pty import PtyPort
from tests.conftest import run_otaflash
from tests.serial_helpers import Background, Thread, otaflash_argv

FLASH = 0x0800_0000
CHIPS = {"f103": (0x410, 128 * 1024, "F1"), "f407": (0x413, 1024 * 1024, "F4")}


@dataclass
class Chip:
    name: str
    port: str
    flash: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    def contents(self) -> bytes:
        return self.flash.read_bytes()


@pytest.fixture(params=sorted(CHIPS))
def chip(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chip]:
    name: str = request.param
    flash = tmp_path / f"{name}-flash.bin"
    with PtyPort() as pty:
        state = Chip(name, pty.path, flash)

        def serve(stop: threading.Event) -> None:
            emulator.serve(pty, f"file:{flash}", chip=name, on_event=state.events.append, stop=stop)

        thread = Thread(serve)
        yield state
        assert thread.stop() is None


def image_for(size: int, seed: int = 5) -> bytes:
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(size))


def stm32flash(*args: str) -> subprocess.CompletedProcess[str]:
    # -m 8n1: ptys cannot carry the bootloader's even parity.
    return subprocess.run(
        ["stm32flash", "-b", "115200", "-m", "8n1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stm32flash_writes_verifies_reads_and_starts(chip: Chip, tmp_path: Path) -> None:
    pid, size, _ = CHIPS[chip.name]
    data = image_for(70_001)  # crosses pages on both parts, not a multiple of 4
    image = tmp_path / "app.bin"
    image.write_bytes(data)
    done = stm32flash("-w", str(image), "-v", "-g", hex(FLASH), chip.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Device ID    : {pid:#06x}" in done.stdout
    flash = chip.contents()
    assert len(flash) == size
    assert flash[: len(data)] == data
    assert set(flash[len(data) :]) == {0xFF}, "only the covered pages were written"
    kinds = [e["event"] for e in chip.events]
    assert kinds == ["connected", "erased", "go"], chip.events
    assert chip.events[-1]["address"] == FLASH

    back = tmp_path / "back.bin"
    done = stm32flash("-r", str(back), "-S", f"{FLASH:#x}:{len(data)}", chip.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert back.read_bytes() == data

    # Writing again without erasing is refused, as real flash refuses it.
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(~b & 0xFF for b in data[:4096]))
    done = stm32flash("-e", "0", "-w", str(other), chip.port)
    assert done.returncode != 0
    assert chip.contents()[: len(data)] == data

    # Erase only (-o): back to 0xFF.
    done = stm32flash("-o", chip.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(chip.contents()) == {0xFF}


def test_stm32loader_drives_the_emulator(chip: Chip) -> None:
    pid, size, family = CHIPS[chip.name]
    data = image_for(5000, seed=9)
    with serial.Serial(chip.port, 115200, timeout=5) as port:
        loader = Stm32Bootloader(port, device_family=family, verbosity=0)
        loader.reset_from_system_memory()
        assert loader.get() in (0x22, 0x31)
        assert loader.get_version() in (0x22, 0x31)
        assert loader.get_id() == pid
        if family == "F1":
            flash_kib, uid = loader.get_flash_size(), loader.get_uid()
        else:
            flash_kib, uid = loader.get_flash_size_and_uid()
        assert flash_kib == size // 1024
        assert len(uid) == 12
        loader.erase_memory(pages=None)
        loader.write_memory_data(FLASH, data)
        Stm32Bootloader.verify_data(loader.read_memory_data(FLASH, len(data)), data)
        assert chip.contents()[: len(data)] == data
        loader.go(FLASH)
        assert chip.events[-1] == {"event": "go", "address": FLASH}
        # After GO the part runs the application; a new session starts with 0x7F.
        loader.reset_from_system_memory()
        loader.readout_protect()
        loader.reset_from_system_memory()
        with pytest.raises(CommandError):
            loader.read_memory(FLASH, 16)
    # Readout protection also stops our host, with a clear error.
    image = chip.flash.parent / "blocked.bin"
    image.write_bytes(data)
    with pytest.raises(errors.DeviceError, match="refused"):
        host.flash(chip.port, image, parity="none", erase="none")
    # stm32flash -k lifts it with the mass erase the part performs.
    done = stm32flash("-k", chip.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(chip.contents()) == {0xFF}


def test_our_host_flashes_verifies_and_starts(chip: Chip, tmp_path: Path) -> None:
    data = image_for(50_003, seed=3)
    image = tmp_path / "fw.bin"
    image.write_bytes(data)
    done = run_otaflash(
        ["flash", "--protocol", "stm32", "--port", chip.port, "--parity", "none", "--go",
         "--json", str(image)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["verified"] is True
    assert record["pid"] == f"{CHIPS[chip.name][0]:#05x}"
    assert record["started_at"] == FLASH
    assert chip.contents()[: len(data)] == data
    assert chip.events[-1] == {"event": "go", "address": FLASH}

    info = host.info(chip.port, parity="none")
    assert info["flash_size"] == CHIPS[chip.name][1]

    # The same image at an address past the end of flash: refused up front.
    done = run_otaflash(
        ["flash", "--protocol", "stm32", "--port", chip.port, "--parity", "none",
         "--address", hex(FLASH + CHIPS[chip.name][1] - 1024), str(image)]
    )  # fmt: skip
    assert done.returncode == 3
    assert b"do not fit" in done.stderr


def test_our_host_and_stm32flash_agree_on_the_same_emulated_line(tmp_path: Path) -> None:
    data = image_for(20_000, seed=1)
    image = tmp_path / "fw.bin"
    image.write_bytes(data)
    results = {}
    for tool in ("stm32flash", "otaflash"):
        flash = tmp_path / f"{tool}-flash.bin"
        with LinkEmulator(115_200, latency=0.002) as link:
            device = Background(
                otaflash_argv(
                    "sim", "stm32", "--port", link.device_port, "--target", f"file:{flash}",
                    "--chip", "f103", "--parity", "none", "--json",
                )
            )  # fmt: skip
            try:
                device.ready()
                if tool == "stm32flash":
                    done = stm32flash("-w", str(image), "-v", link.host_port)
                    assert done.returncode == 0, done.stdout + done.stderr
                else:
                    host.flash(link.host_port, image, parity="none")
            finally:
                device.stop()
        results[tool] = flash.read_bytes()
    assert results["stm32flash"] == results["otaflash"]
    assert results["otaflash"][: len(data)] == data


def test_a_line_cut_mid_write_is_a_clear_failure(tmp_path: Path) -> None:
    data = image_for(30_000)
    image = tmp_path / "fw.bin"
    image.write_bytes(data)
    flash = tmp_path / "flash.bin"
    with LinkEmulator(921_600, faults=Faults(disconnect_after_bytes=12_000)) as link:
        device = Background(
            otaflash_argv(
                "sim", "stm32", "--port", link.device_port, "--target", f"file:{flash}",
                "--chip", "f103", "--parity", "none", "--json",
            )
        )  # fmt: skip
        try:
            device.ready()
            with pytest.raises(errors.LinkTimeoutError):
                host.flash(link.host_port, image, parity="none")
        finally:
            device.stop()
    assert flash.read_bytes()[: len(data)] != data


def test_sim_cli_serves_a_new_pty_and_stops_on_sigterm(tmp_path: Path) -> None:
    flash = tmp_path / "flash.bin"
    device = Background(
        otaflash_argv("sim", "stm32", "--port", "pty", "--target", f"file:{flash}", "--json")
    )
    try:
        ready = device.ready()
        assert ready["event"] == "ready"
        assert os.path.exists(ready["port"])
        done = stm32flash(ready["port"])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "STM32F40xxx/41xxx" in done.stdout
    finally:
        code, out, err = device.stop()
    assert code == 0, err
    assert '"event":"connected"' in out
    assert flash.stat().st_size == 1024 * 1024


def test_the_emulated_flash_can_live_in_a_simulated_nor_flash(tmp_path: Path) -> None:
    uri = f"sim:{tmp_path}/f103.sim"
    data = image_for(70_001)
    image = tmp_path / "app.bin"
    image.write_bytes(data)

    def emulator_run(*stm32flash_args: str) -> None:
        device = Background(
            otaflash_argv("sim", "stm32", "--port", "pty", "--target", uri, "--chip", "f103",
                          "--json")
        )  # fmt: skip
        try:
            port = device.ready()["port"]
            done = stm32flash(*stm32flash_args, port)
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            code, _, err = device.stop()
        assert code == 0, err

    emulator_run("-w", str(image), "-v")
    with flash.open_target(uri) as target:
        info = target.info()
        contents = target.read(0, info.geometry.size)
    # Made to the chip's measure: its flash size, its 1 KiB pages as erase blocks.
    assert (info.geometry.kind, info.geometry.size, info.geometry.erase_size) == (
        "nor",
        128 * 1024,
        1024,
    )
    assert contents[: len(data)] == data
    assert set(contents[len(data) :]) == {0xFF}
    # The flash outlives the emulator: a new one reads the same bytes back.
    back = tmp_path / "back.bin"
    emulator_run("-r", str(back), "-S", f"{FLASH:#x}:{len(data)}")
    assert back.read_bytes() == data


def test_bad_emulator_targets_are_refused(tmp_path: Path) -> None:
    done = run_otaflash(["sim", "stm32", "--port", "pty", "--target", "ftp:x"])
    assert done.returncode == 3
    for query, complaint in [
        ("kind=nor&size=256k", b"size=131072"),
        ("kind=nor&size=128k&erase=4k", b"erase=1024"),
        ("kind=nand&size=1M", b"NOR"),
    ]:
        target = f"sim:{tmp_path}/{query.replace('&', '-')}.sim?{query}"
        done = run_otaflash(["sim", "stm32", "--port", "pty", "--target", target, "--chip", "f103"])
        assert done.returncode == 3, (query, done.stderr)
        assert complaint in done.stderr, (query, done.stderr)
    done = run_otaflash(
        ["sim", "stm32", "--port", "pty", "--target", f"file:{tmp_path}/f", "--chip", "z80"]
    )
    assert done.returncode == 3
    assert b"f103" in done.stderr
    wrong_size = tmp_path / "small.bin"
    wrong_size.write_bytes(b"\xff" * 1000)
    done = run_otaflash(["sim", "stm32", "--port", "pty", "--target", f"file:{wrong_size}"])
    assert done.returncode == 3
    assert b"1000 bytes" in done.stderr
