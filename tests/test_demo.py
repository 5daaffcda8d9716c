"""`otaflash demo` as a user runs it (a separate process), and the synthetic
firmware it is built on."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
import zlib
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from otaflash import delta, flash
from otaflash.admin import AdminClient
from otaflash.demo import DEVICE, PRODUCT, SERIAL_DEVICE
from otaflash.progress import ProgressBars
from otaflash.server import EmbeddedServer
from otaflash.sim import firmware

from .conftest import run_otaflash

MIB = 1 << 20
STAGES = {
    "firmware",
    "provision",
    "server",
    "publish",
    "check",
    "download",
    "flash",
    "verify",
    "serial",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def demo_json(*args: str) -> dict[str, Any]:
    result = run_otaflash(["demo", "--json", *args])
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # one record, nothing else on stdout
    record: dict[str, Any] = json.loads(lines[0])
    return record


def assert_steps_end_in_one_100(steps: list[int]) -> None:
    assert steps[0] == 1
    assert steps == sorted(steps)
    assert steps.count(100) == 1
    assert steps[-1] == 100


# -- the demo ----------------------------------------------------------------------


def test_the_demo_updates_the_device_over_a_delta() -> None:
    record = demo_json()
    v1, v2 = firmware.build(MIB, 1), firmware.build(MIB, 2)
    assert record["ok"] is True
    assert (record["fromVersion"], record["toVersion"]) == ("1.0.0", "2.0.0")
    assert record["delta"] is True
    assert record["imageSize"] == len(v2) == MIB
    assert record["transferred"] == record["deltaSize"]
    # The delta is a small fraction of the image: realistic changes, not a rebuild.
    assert record["ratio"] == pytest.approx(record["transferred"] / MIB, abs=1e-5)
    assert 0.005 < record["ratio"] < 0.2
    assert record["transferred"] < len(zlib.compress(v2, 9)) / 5
    assert record["sha256"] == sha256(v2) != sha256(v1)
    assert record["verifiedSha256"] == sha256(v2)
    assert record["slotSha256"] == sha256(v2)
    assert record["bootSlot"] == "B"  # 1.0.0 ran from A; the update went to B
    assert_steps_end_in_one_100(record["steps"])
    assert record["deviceVersion"] == "2.0.0"
    seconds = record["seconds"]
    assert set(seconds) >= STAGES
    assert all(value >= 0 for value in seconds.values())
    assert seconds["total"] >= sum(seconds[stage] for stage in STAGES) - 0.01
    # The second device, through its agent on the serial line: the same delta,
    # rebuilt on the device and verified there.
    leg = record["serial"]
    assert leg["device"] == SERIAL_DEVICE
    assert leg["sent"] == record["deltaSize"]
    assert 0 < leg["wireBytes"] < record["imageSize"] / 5
    assert leg["verifiedSha256"] == leg["slotSha256"] == sha256(v2)
    assert leg["bootSlot"] == "B"
    assert leg["deviceVersion"] == "2.0.0"
    assert record["kept"] is None
    path = record["target"].partition(":")[2].partition("?")[0]
    assert not Path(path).exists()  # the temporary work directory is gone


def test_full_transfers_the_whole_image() -> None:
    record = demo_json("--full", "--size", "256k")
    assert record["delta"] is False
    assert record["imageSize"] == 256 << 10
    assert record["transferred"] == 256 << 10
    assert record["ratio"] == 1.0
    assert record["deltaSize"] < record["transferred"]  # the delta was there, not taken
    assert record["sha256"] == record["slotSha256"] == sha256(firmware.build(256 << 10, 2))
    assert_steps_end_in_one_100(record["steps"])
    assert record["deviceVersion"] == "2.0.0"


def test_keep_leaves_a_device_running_v2_and_a_server_that_knows_it(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    size = 256 << 10
    result = run_otaflash(["demo", "--keep", str(keep), "--size", "256k"])
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    v2 = firmware.build(size, 2)
    assert text.splitlines()[-1].startswith(f"ok: {DEVICE} updated 1.0.0 -> 2.0.0 with a delta")
    assert sha256(v2) in text
    assert "100 once" in text

    uri = f"sim:{keep / 'device.sim'}"
    info = run_otaflash(["info", "--target", uri, "--json"])
    assert info.returncode == 0, info.stderr.decode()
    slots = json.loads(info.stdout)["slots"]
    assert slots["active"] == 1
    assert slots["phase"] == "idle"
    assert slots["slots"][1]["image"] == {"size": size, "sha256": sha256(v2)}
    # The flash itself, not only its record, holds 2.0.0 in B, and 1.0.0 still in A.
    with flash.open_target(uri) as device:
        state = device.info().slots
        assert state is not None
        assert device.read(state.slots[1]["offset"], size) == v2
        assert device.read(state.slots[0]["offset"], size) == firmware.build(size, 1)
    verify = run_otaflash(
        [
            "verify",
            "--target",
            uri,
            "--offset",
            str(slots["slots"][1]["offset"]),
            str(keep / "firmware" / "demo-2.0.0.bin"),
        ]
    )
    assert verify.returncode == 0, verify.stderr.decode()
    # The downloaded delta is kept, and the server's data serves again.
    downloads = [
        p
        for p in (keep / "downloads").iterdir()
        if not p.name.endswith(".part") and not p.name.startswith(SERIAL_DEVICE)
    ]
    assert len(downloads) == 1
    # The serial device's flash holds 2.0.0 in B too, written by its agent.
    with flash.open_target(f"sim:{keep / 'serial-device.sim'}") as device:
        state = device.info().slots
        assert state is not None
        assert state.active == 1
        assert device.read(state.slots[1]["offset"], size) == v2
    (steps_line,) = [line for line in text.splitlines() if line.startswith("progress ")]
    steps = [int(word) for word in steps_line.split("(")[0].split()[2:]]
    assert_steps_end_in_one_100(steps)
    with EmbeddedServer(keep / "server") as server:
        admin = AdminClient(server.url, server.admin_token)
        device = admin.device(PRODUCT, DEVICE)
        assert device["modules"][0]["version"] == "2.0.0"
        assert [p["step"] for p in device["progress"]] == steps  # what the server was told
        (package,) = [p for p in admin.packages(PRODUCT) if p["version"] == "2.0.0"]
        assert package["deltas"][0]["sha256"] == sha256(downloads[0].read_bytes())

    again = run_otaflash(["demo", "--keep", str(keep), "--size", "256k"])
    assert again.returncode == 3
    assert again.stderr.decode().count("\n") == 1
    assert "is not empty" in again.stderr.decode()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--size", "12k"], 3, "outside 64k..64M"),
        (["--size", "lots"], 3, "is not a number"),
    ],
)
def test_bad_options_fail_in_one_line(args: list[str], code: int, message: str) -> None:
    result = run_otaflash(["demo", *args])
    assert result.returncode == code
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1
    assert message in err


def run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Runs the CLI on a pseudo-terminal (80 columns), like a person at a shell."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-m", "otaflash", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_on_a_terminal_progress_bars_and_stages_show_but_not_with_json() -> None:
    code, screen = run_in_pty(["demo", "--size", "128k"])
    assert code == 0, screen
    assert "demo download:" in screen  # a tqdm bar
    assert "demo program:" in screen
    assert "demo: publishing" in screen
    assert "ok: " in screen
    code, screen = run_in_pty(["demo", "--size", "128k", "--json"])
    assert code == 0, screen
    assert "demo download" not in screen
    assert "demo: " not in screen
    (line,) = [line for line in screen.splitlines() if line.strip()]
    assert json.loads(line)["ok"] is True


# -- the synthetic firmware ---------------------------------------------------------


def test_firmware_is_deterministic_and_exactly_the_size() -> None:
    size = 300_000
    series = firmware.FirmwareSeries(size)
    v1, v2, v3 = series.image(1), series.image(2), series.image(3)
    assert len(v1) == len(v2) == len(v3) == size
    assert v1 == firmware.build(size, 1)
    assert v3 == firmware.build(size, 3)
    assert len({v1, v2, v3}) == 3
    assert firmware.build(size, 1, seed=7) != v1
    # The same bytes on every machine: pinned.
    assert sha256(firmware.build(64 << 10, 2))[:16] == "17a0371c10dc9a39"
    with pytest.raises(ValueError, match="outside"):
        firmware.FirmwareSeries(1000)


def test_firmware_looks_like_a_cortex_m_image() -> None:
    image = firmware.build(MIB, 1)
    words = struct.unpack_from("<2I", image)
    assert words[0] == firmware.RAM_TOP  # initial stack pointer
    reset = words[1]
    assert reset & 1  # Thumb
    start = (reset & ~1) - firmware.FLASH_BASE
    assert image[start + 1] == 0xB5  # push {..., lr}
    descriptor = firmware.VECTORS * 4
    magic, version, size = struct.unpack_from("<3I", image, descriptor)
    assert (magic, version >> 16, size) == (firmware.DESCRIPTOR_MAGIC, 1, MIB)
    assert b"otaflash-demo firmware 1.0.0 (build " in image
    # Neither random nor empty: compresses like code does.
    assert 0.6 < len(zlib.compress(image, 9)) / len(image) < 0.9
    assert image.endswith(b"\xff" * 1024)  # erased padding
    assert image.count(0) < len(image) // 10
    # BL instructions call function starts (a push), as a linker would have them.
    halfwords = struct.unpack(f"<{len(image) // 2}H", image)
    calls = hits = 0
    for i in range(0, 400_000, 2):
        first, second = halfwords[i], halfwords[i + 1]
        if first & 0xF800 != 0xF000 or second & 0xD000 != 0xD000:
            continue
        s = first >> 10 & 1
        i1 = ~(second >> 13 ^ s) & 1
        i2 = ~(second >> 11 ^ s) & 1
        offset = s << 24 | i1 << 23 | i2 << 22 | (first & 0x3FF) << 12 | (second & 0x7FF) << 1
        offset -= s << 25
        target = 2 * i + 4 + offset
        calls += 1
        hits += 0 <= target < len(image) - 1 and image[target + 1] == 0xB5
    assert calls > 5000
    assert hits / calls > 0.95


def test_a_release_is_a_small_delta_from_the_last() -> None:
    v1, v2 = firmware.build(MIB, 1), firmware.build(MIB, 2)
    assert b"otaflash-demo firmware 2.0.0 (build " in v2
    # Addresses moved: most of the image differs byte for byte ...
    same = sum(a == b for a, b in zip(v1[:100_000], v2[:100_000], strict=True))
    assert same < 95_000
    # ... yet the engine's patch is a small fraction of it, and of its compressed size.
    patch = delta.diff_bytes(v1, v2)
    assert len(patch) < MIB // 8
    assert len(patch) < len(zlib.compress(v2, 9)) // 5


# -- progress bars -----------------------------------------------------------------


def test_an_operation_that_runs_again_gets_a_new_bar() -> None:
    stream = StringIO()
    bars = ProgressBars(label="dev", stream=stream)
    bars("erase", 50, 100)
    bars("erase", 100, 100)
    bars("erase", 100, 100)  # a repeated final call draws nothing
    first = len(stream.getvalue())
    bars("erase", 100, 100)
    assert len(stream.getvalue()) == first
    bars("erase", 30, 100)  # a second write of the same size
    assert "dev erase:" in stream.getvalue()[first:]
    bars.close()


def test_the_demo_stages_need_no_terminal() -> None:
    # Not a terminal (a CI log): no bars, no stage lines; the summary only.
    result = subprocess.run(
        [sys.executable, "-m", "otaflash", "demo", "--size", "64k", "--quiet"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    (line,) = result.stdout.decode().splitlines()
    assert line.startswith(f"ok: {DEVICE} updated 1.0.0 -> 2.0.0 with a delta: ")


def test_a_damaged_delta_fails_the_demo_and_leaves_1_0_0_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from otaflash import cli, demo

    publish = demo._Run.publish

    def publish_then_damage(self: demo._Run, admin: AdminClient, old: Path, new: Path) -> int:
        size = publish(self, admin, old, new)
        (blob,) = [
            p
            for p in (self.workdir / "server").rglob("*")
            if p.is_file() and p.stat().st_size == size
        ]
        data = bytearray(blob.read_bytes())
        data[size // 2] ^= 0x40
        blob.write_bytes(bytes(data))
        return size

    monkeypatch.setattr(demo._Run, "publish", publish_then_damage)
    keep = tmp_path / "kept"
    code = cli.main(["demo", "--json", "--size", "128k", "--keep", str(keep)])
    out, err = capsys.readouterr()
    assert code == 4, err
    (line,) = out.splitlines()
    record = json.loads(line)
    assert record["error_type"] == "VerifyError"
    assert record["exit_code"] == 4
    assert err.count("\n") == 1
    assert err.startswith("otaflash: error: ")
    with flash.open_target(f"sim:{keep / 'device.sim'}") as device:
        state = device.info().slots
        assert state is not None
        assert state.active == 0
        # The restarted device boots 1.0.0 from slot A.
        booted = device.boot()
        assert booted.boot_slot == 0
        assert booted.image is not None
        assert booted.image["sha256"] == sha256(firmware.build(128 << 10, 1))
