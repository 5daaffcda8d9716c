"""The serial benchmark rig: one emulated line per run, the device end and the
host end as the real programs (ours and the peers), timed the same way.

Every run goes through :class:`otaflash.sim.link.LinkEmulator` at the line
rate under test with 2 ms of latency each way (a USB-serial adapter's), and
checks that the device ended up with the image before the time counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from otaflash import flash
from otaflash.serial import protocol
from otaflash.serial import stm32 as stm32_host
from otaflash.sim.link import LinkEmulator

LATENCY = 0.002
ROOT = Path(__file__).resolve().parent.parent
#: Device-side files live on tmpfs: the benchmark measures the line, not a disk's fsync.
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


@dataclass
class Run:
    tool: str
    seconds: float
    size: int
    wire_bytes: int

    def record(self, baud: int) -> dict[str, object]:
        rate = self.size / self.seconds
        return {
            "tool": self.tool,
            "baud": baud,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "wire_bytes": self.wire_bytes,
            "effective_kbit_s": round(rate * 8 / 1000, 1),
            # Share of the raw line (baud/10 bytes per second, 8N1).
            "of_line_rate": round(rate / (baud / 10), 4),
        }


def _otaflash(*args: str) -> list[str]:
    return [sys.executable, "-m", "otaflash", *args]


def _scratch(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"otaflash-bench-{name}-", dir=SCRATCH))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def ours(image: Path, baud: int, *, compress: bool = True, old: Path | None = None) -> Run:
    """`otaflash agent` as the device, our host through the Python API."""
    work = _scratch("agent")
    target = work / "device.img"
    if old is not None:
        shutil.copyfile(old, target)
    try:
        with LinkEmulator(baud, latency=LATENCY) as link:
            agent = subprocess.Popen(
                _otaflash(
                    "agent", "--port", link.device_port, "--target", f"file:{target}",
                    "--baud", str(baud), "--once",
                ),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert agent.stderr is not None
                agent.stderr.readline()  # "serving ...": the port is open
                started = time.perf_counter()
                result = protocol.send(
                    link.host_port, image, baud=baud, agent_baud=baud, compress=compress
                )
                seconds = time.perf_counter() - started
            finally:
                _stop(agent)
        assert target.read_bytes() == image.read_bytes()
        return Run("otaflash", seconds, image.stat().st_size, result.details["wire_bytes"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ours_delta(patch: Path, new: Path, old: Path, baud: int) -> Run:
    """A patch through the agent into a simulated NOR flash with the A/B
    layout: the device reads its old image from the active slot, writes the
    new one into the other slot and reads it back; timed from the host's
    start until it has the agent's verified result."""
    work = _scratch("delta")
    uri = f"sim:{work}/device.sim?kind=nor&size=2M&erase=64k"
    with flash.open_target(uri) as device:  # the old image, installed and confirmed
        device.write(old, layout="ab")
        device.boot()
        device.confirm()
    try:
        with LinkEmulator(baud, latency=LATENCY) as link:
            agent = subprocess.Popen(
                _otaflash(
                    "agent", "--port", link.device_port, "--target", uri,
                    "--baud", str(baud), "--once",
                ),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert agent.stderr is not None
                agent.stderr.readline()
                started = time.perf_counter()
                result = protocol.send_delta(link.host_port, patch, baud=baud, agent_baud=baud)
                seconds = time.perf_counter() - started
            finally:
                _stop(agent)
        with flash.open_target(uri) as device:
            state = device.info().slots
            assert state is not None
            assert state.phase == "trial", state
            slot = state.slots[1 - state.active]
            assert device.read(slot["offset"], new.stat().st_size) == new.read_bytes()
        return Run("otaflash delta", seconds, new.stat().st_size, result.details["wire_bytes"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _on_tty(argv: list[str], tty: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
    try:
        return subprocess.Popen(argv, stdin=fd, stdout=fd, stderr=subprocess.PIPE, cwd=cwd)
    finally:
        os.close(fd)


def lrzsz(image: Path, baud: int) -> Run:
    """lrzsz `sb -k` (1 KiB YMODEM) to `rb`, timed from sb's start until rb
    exits with the whole file.

    Not until sb exits: rb flushes its tty output right after its last ACK
    and exits, and on a pty that flush can swallow the ACK before the line
    carries it, leaving sb waiting for it (a pty artefact, not a property of
    either program); sb gets a few seconds and is then stopped.
    """
    work = _scratch("lrzsz")
    try:
        with LinkEmulator(baud, latency=LATENCY) as link:
            rb = _on_tty(["rb"], link.device_port, cwd=work)
            sb = None
            try:
                time.sleep(1.5)  # rb is calling for a sender when sb starts
                started = time.perf_counter()
                sb = _on_tty(["sb", "-k", str(image)], link.host_port)
                _, err = rb.communicate(timeout=600)
                seconds = time.perf_counter() - started
                assert rb.returncode == 0, err
                try:
                    sb.communicate(timeout=2)
                except subprocess.TimeoutExpired:
                    _stop(sb)
            finally:
                _stop(rb)
                if sb is not None:
                    _stop(sb)
            wire = link.stats.to_device
        assert (work / image.name).read_bytes() == image.read_bytes()
        return Run("lrzsz sb -k", seconds, image.stat().st_size, wire)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stm32(image: Path, baud: int, *, tool: str) -> Run:
    """The STM32 bootloader emulator as the device; stm32flash or our host,
    both erasing what the image covers, writing, and reading it all back."""
    work = _scratch("stm32")
    flash = work / "flash.bin"
    try:
        with LinkEmulator(baud, latency=LATENCY) as link:
            device = subprocess.Popen(
                _otaflash(
                    "sim", "stm32", "--port", link.device_port, "--target", f"file:{flash}",
                    "--chip", "f407", "--parity", "none", "--baud", str(baud), "--json",
                ),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert device.stdout is not None
                assert json.loads(device.stdout.readline())["event"] == "ready"
                started = time.perf_counter()
                if tool == "stm32flash":
                    done = subprocess.run(
                        ["stm32flash", "-b", str(baud), "-m", "8n1", "-w", str(image), "-v",
                         link.host_port],
                        capture_output=True, text=True, timeout=900, check=False,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stdout + done.stderr
                else:
                    stm32_host.flash(link.host_port, image, baud=baud, parity="none")
                seconds = time.perf_counter() - started
            finally:
                _stop(device)
            wire = link.stats.to_device + link.stats.to_host
        size = image.stat().st_size
        assert flash.read_bytes()[:size] == image.read_bytes()
        name = "stm32flash -w -v" if tool == "stm32flash" else "otaflash --protocol stm32"
        return Run(name, seconds, size, wire)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def corpus(cache: Path) -> Path:
    """The MCU firmware pairs of the shared corpus (downloaded once into target/)."""
    script = Path(os.environ.get("OTAFLASH_CORPUS_FETCH", "/work/shared/corpus/fetch.sh"))
    pairs = ("greatfet-fw", "nrf52-connectivity")
    if not all((cache / pair / "new").exists() for pair in pairs):
        env = {**os.environ, "PAIRS_ONLY": " ".join(pairs)}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        subprocess.run(["bash", str(script), str(cache)], check=True, env=env, timeout=1200)
    return cache
