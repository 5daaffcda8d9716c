"""otaflash.flash and the flash/verify/info/slot verbs on simulated flash
and image files: what users and station scripts see (results, JSON, exit
codes, progress, cancel), and the update layouts end to end."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest

from otaflash import errors, flash
from otaflash.cli import main


def _image(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["--json" if i == 1 else a for i, a in enumerate([argv[0], "", *argv[1:]])])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}


def test_flash_verify_info_on_a_nand_sim_with_bad_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "fw.bin", 600_000, 1)
    uri = f"sim:{tmp_path}/dev.sim?kind=nand&size=4M&bad=0,2"
    code, record = _cli_json(capsys, "flash", "--target", uri, str(image))
    assert code == 0
    assert record["sha256"] == _sha(image.read_bytes())
    assert record["bad_blocks_skipped"] == [0, 2 * 131072]
    assert record["verified"] is True
    # Reopened by path alone: the geometry is in the file.
    code, record = _cli_json(capsys, "verify", "--target", f"sim:{tmp_path}/dev.sim", str(image))
    assert (code, record["match"]) == (0, True)
    code, info = _cli_json(capsys, "info", "--target", f"sim:{tmp_path}/dev.sim")
    assert info["bad_blocks"] == [0, 2 * 131072]
    assert info["geometry"]["kind"] == "nand"  # type: ignore[index]
    # The second write finds every block already right.
    code, record = _cli_json(capsys, "flash", "--target", f"sim:{tmp_path}/dev.sim", str(image))
    assert record["blocks_unchanged"] == record["blocks"] == 5


def test_blocks_going_bad_during_the_write_are_relocated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "fw.bin", 500_000, 2)
    uri = f"sim:{tmp_path}/dev.sim?kind=nand&size=4M&failing=1,3"
    code, record = _cli_json(capsys, "flash", "--target", uri, str(image))
    assert code == 0
    assert record["blocks_relocated"] == [131072, 3 * 131072]
    with flash.open_target(f"sim:{tmp_path}/dev.sim") as target:
        assert target.info().bad_blocks == [131072, 3 * 131072]
        target.verify(image)


def test_verify_exits_4_on_any_difference_and_names_the_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "fw.bin", 100_000, 3)
    out = tmp_path / "station.img"
    assert main(["flash", "--target", f"file:{out}", "--offset", "0x1000", str(image)]) == 0
    data = out.read_bytes()
    assert data[:0x1000] == b"\xff" * 0x1000
    assert data[0x1000:] == image.read_bytes()
    other = bytearray(image.read_bytes())
    other[54321] ^= 0x10
    (tmp_path / "other.bin").write_bytes(other)
    capsys.readouterr()
    code = main(["verify", "--target", f"file:{out}", "-o", "4k", str(tmp_path / "other.bin")])
    assert code == 4
    assert "0xd431" in capsys.readouterr().err
    assert main(["verify", "--target", f"file:{out}", str(image)]) == 4  # wrong offset


def test_bad_input_is_refused_before_the_flash_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = tmp_path / "nor.sim"
    uri = f"sim:{dev}?kind=nor&size=512k"
    small = _image(tmp_path / "small.bin", 70_000, 4)
    assert main(["flash", "--target", uri, str(small)]) == 0
    before = dev.read_bytes()
    big = _image(tmp_path / "big.bin", 600_000, 5)
    capsys.readouterr()
    assert main(["flash", "--target", str(uri), str(big)]) == 6
    assert "does not fit" in capsys.readouterr().err
    assert main(["flash", "--target", uri, "--offset", "100", str(small)]) == 6
    assert "not aligned to the 0x10000-byte erase block" in capsys.readouterr().err
    assert main(["flash", "--target", f"mtd:{small}", str(small)]) == 3
    assert "is not an MTD device" in capsys.readouterr().err
    assert main(["flash", "--target", "/dev/mtd0", str(small)]) == 3
    assert main(["flash", "--target", f"sim:{tmp_path}/x.sim?kind=emmc", str(small)]) == 3
    assert main(["flash", "--target", uri, str(tmp_path / "missing.bin")]) == 3
    assert dev.read_bytes() == before


def test_a_sim_file_keeps_its_geometry_and_refuses_another(tmp_path: Path) -> None:
    uri = f"sim:{tmp_path}/d.sim?kind=nor&size=1M&erase=4096&page=256"
    with flash.open_target(uri) as target:
        assert target.geometry() == flash.Geometry("nor", 1 << 20, 4096, 1, 256, 0)
    with flash.open_target(f"sim:{tmp_path}/d.sim") as target:
        assert target.geometry().erase_size == 4096
    with pytest.raises(errors.TargetError, match="exists with erase=4096"):
        flash.open_target(f"sim:{tmp_path}/d.sim?erase=65536")
    (tmp_path / "junk.sim").write_bytes(b"not a flash")
    with pytest.raises(errors.TargetError, match="not a simulated flash"):
        flash.open_target(f"sim:{tmp_path}/junk.sim")


def test_progress_reports_erase_program_verify_to_the_total(tmp_path: Path) -> None:
    image = _image(tmp_path / "fw.bin", 1_000_000, 6)
    seen: dict[str, list[tuple[int, int | None]]] = {}

    def progress(operation: str, done: int, total: int | None) -> None:
        seen.setdefault(operation, []).append((done, total))

    with flash.open_target(f"sim:{tmp_path}/d.sim?kind=nor&size=2M") as target:
        result = target.write(image, progress=progress)
    assert result.size == 1_000_000
    assert set(seen) == {"erase", "program", "verify"}
    for events in seen.values():
        assert events[-1] == (1_000_000, 1_000_000)
        assert [d for d, _ in events] == sorted(d for d, _ in events)


def test_a_raising_callback_stops_the_write_and_propagates(tmp_path: Path) -> None:
    image = _image(tmp_path / "fw.bin", 1_000_000, 7)

    class Stop(Exception):
        pass

    def progress(operation: str, done: int, total: int | None) -> None:
        raise Stop

    with (
        flash.open_target(f"sim:{tmp_path}/d.sim?kind=nor&size=2M") as target,
        pytest.raises(Stop),
    ):
        target.write(image, progress=progress)


def test_cancel_from_another_thread_stops_a_slow_write(tmp_path: Path) -> None:
    image = _image(tmp_path / "fw.bin", 1_000_000, 8)
    # Real-time timing model: 20 ms per 64 KiB erase, 1 ms per 256 B page.
    uri = f"sim:{tmp_path}/d.sim?kind=nor&size=2M&erase_us=20000&program_us=1000&realtime=1"
    target = flash.open_target(uri)
    timer = threading.Timer(0.3, target.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(errors.Cancelled):
        target.write(image)
    assert time.monotonic() - started < 2.0
    timer.join()


def test_ab_update_trial_confirm_and_rollback_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _image(tmp_path / "old.bin", 300_000, 9)
    new = _image(tmp_path / "new.bin", 310_000, 10)
    uri = f"sim:{tmp_path}/ab.sim?kind=nand&size=4M"
    code, record = _cli_json(capsys, "flash", "--layout", "ab", "--target", uri, str(old))
    assert (code, record["slot"]) == (0, 1)
    assert _cli_json(capsys, "slot", "boot", "--target", uri)[1]["action"] == "trial"
    assert _cli_json(capsys, "slot", "confirm", "--target", uri)[1]["confirmed"] == 1

    code, record = _cli_json(capsys, "flash", "--layout", "ab", "--target", uri, str(new))
    assert record["slot"] == 0
    # Trial boot, then a reboot without confirming: back to the old slot.
    assert _cli_json(capsys, "slot", "boot", "--target", uri)[1]["boot_slot"] == 0
    code, boot = _cli_json(capsys, "slot", "boot", "--target", uri)
    assert (boot["action"], boot["boot_slot"]) == ("rollback", 1)
    code, info = _cli_json(capsys, "info", "--target", uri)
    slots = info["slots"]
    assert slots["active"] == 1  # type: ignore[index]
    assert slots["slots"][1]["image"]["sha256"] == _sha(old.read_bytes())  # type: ignore[index]


def test_interrupted_updates_resume_through_the_boot_hook(tmp_path: Path) -> None:
    new = _image(tmp_path / "new.bin", 400_000, 11)
    uri = f"sim:{tmp_path}/ip.sim?kind=nor&size=2M&erase_us=2000&program_us=500&realtime=1"
    target = flash.open_target(uri)
    timer = threading.Timer(0.15, target.cancel)
    timer.start()
    with pytest.raises(errors.Cancelled):
        target.write(new, layout="inplace")
    timer.join()
    target.close()
    with flash.open_target(f"sim:{tmp_path}/ip.sim") as target:
        state = target.info().slots
        assert state is not None
        assert state.next["action"] == "resume"
        with pytest.raises(errors.SlotError, match="holds neither image; finish it"):
            target.boot()
        with pytest.raises(errors.SlotError, match="not the image"):
            target.boot(_image(tmp_path / "other.bin", 400_000, 12))
        result = target.boot(new)
        assert result.resumed
        assert result.image is not None
        assert result.image["sha256"] == _sha(new.read_bytes())
        assert target.read(2 * 65536, 400_000) == new.read_bytes()  # after 2 record blocks


def test_closed_targets_refuse_use(tmp_path: Path) -> None:
    target = flash.open_target(f"sim:{tmp_path}/d.sim?kind=nor&size=1M")
    target.close()
    with pytest.raises(errors.InputError, match="closed"):
        target.info()
