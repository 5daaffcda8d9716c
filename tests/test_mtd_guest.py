"""otaflash's MTD backend against the real kernel: a qemu guest with Debian's
kernel loads mtdram (/dev/mtd0, RAM-like, 64 KiB blocks) and nandsim
(/dev/mtd1, 128 MiB NAND with bad blocks 3 and 7, and a page that fails
when written), and everything we write is cross-checked with mtd-utils on
the same device: flashcp, nandwrite, nanddump and flash_erase.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from qemu_guest import GuestResult, QemuGuest, missing_tools

ERASE = 128 * 1024
#: nandsim: 128 MiB, 128 KiB blocks, 2 KiB pages; blocks 3 and 7 bad; the
#: first program of page 650 (block 10) fails with EIO.
NANDSIM = "nandsim id_bytes=0xec,0xa1,0x00,0x15 badblocks=3,7 weakpages=650:0"
MTDRAM = "mtdram total_size=4096 erase_size=64"

GUEST_SCRIPT = r"""
set -u
PY={python}
OTA={otaflash}
step() {{ echo "== $*"; }}
step info
$OTA info --json --target mtd:/dev/mtd1 > info_nand.json
$OTA info --json --target mtd:/dev/mtd0 > info_ram.json

step "mtdram: our writer, read back by dd"
$OTA flash --json --target mtd:/dev/mtd0 ram_a.bin > flash_ram.json; echo $? > flash_ram.rc
dd if=/dev/mtd0 of=ram_readback.bin bs=65536 count=16 status=none
step "mtdram: flashcp writes, we verify"
flashcp ram_b.bin /dev/mtd0; echo $? > flashcp.rc
$OTA verify --target mtd:/dev/mtd0 ram_b.bin > verify_ram_b.out 2>&1; echo $? > verify_ram_b.rc
$OTA verify --target mtd:/dev/mtd0 ram_a.bin > verify_ram_a.out 2>&1; echo $? > verify_ram_a.rc

step "nandsim: our writer over bad blocks and a failing page, read back by nanddump"
$OTA flash --json --target mtd:/dev/mtd1 nand_a.bin > flash_nand.json 2> flash_nand.err; echo $? > flash_nand.rc
nanddump --bb=skipbad -l {nand_a_size} -f nand_readback.bin /dev/mtd1 2> nanddump.err; echo $? > nanddump.rc
$OTA info --json --target mtd:/dev/mtd1 > info_nand_after.json

step "nandsim: flash_erase + nandwrite write, we verify"
flash_erase -q /dev/mtd1 0 40; echo $? > flash_erase.rc
nandwrite -q -p /dev/mtd1 nand_b.bin; echo $? > nandwrite.rc
$OTA verify --target mtd:/dev/mtd1 nand_b.bin > verify_nand_b.out 2>&1; echo $? > verify_nand_b.rc

step "bad input"
$OTA flash --target mtd:/dev/mtd1 --offset 4096 nand_a.bin > misaligned.out 2>&1; echo $? > misaligned.rc
$OTA flash --target mtd:/dev/mtd0 big.bin > big.out 2>&1; echo $? > big.rc
$OTA flash --target mtd:/dev/null ram_a.bin > notmtd.out 2>&1; echo $? > notmtd.rc
$OTA flash --target mtd:/dev/mtd0ro ram_a.bin > readonly.out 2>&1; echo $? > readonly.rc
dd if=/dev/mtd0 of=ram_after_bad_input.bin bs=65536 count=16 status=none

step "A/B on nandsim"
$OTA flash --json --layout ab --target mtd:/dev/mtd1 nand_a.bin > ab_flash.json; echo $? > ab_flash.rc
$OTA slot boot --json --target mtd:/dev/mtd1 > ab_boot.json
$OTA slot confirm --json --target mtd:/dev/mtd1 > ab_confirm.json
$OTA info --json --target mtd:/dev/mtd1 > ab_info.json
step done
"""


def _sha(path: Path, size: int | None = None) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data if size is None else data[:size]).hexdigest()


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GuestResult]:
    missing = missing_tools()
    assert not missing, f"missing {missing}: run `make system-deps`"
    work = tmp_path_factory.mktemp("mtd-guest")
    rng = __import__("random").Random(4)
    (work / "ram_a.bin").write_bytes(rng.randbytes(1_000_000))
    (work / "ram_b.bin").write_bytes(rng.randbytes(700_000))
    (work / "big.bin").write_bytes(rng.randbytes(4 * 1024 * 1024 + 1))
    (work / "nand_a.bin").write_bytes(rng.randbytes(1_500_000))
    (work / "nand_b.bin").write_bytes(rng.randbytes(2_000_000))
    script = GUEST_SCRIPT.format(
        python=Path(sys.executable).parent / "python",
        otaflash=Path(sys.executable).parent / "otaflash",
        nand_a_size=1_500_000,
    )
    result = QemuGuest().run(script, workdir=work, modprobe=[MTDRAM, NANDSIM], timeout=540)
    assert result.returncode == 0, f"{result.output}\n{result.console[-3000:]}"
    return work, result


def _json(work: Path, name: str) -> Any:
    return json.loads((work / name).read_text())


def _rc(work: Path, name: str) -> int:
    return int((work / f"{name}.rc").read_text())


@pytest.mark.slow
def test_guest_sees_mtdram_and_nandsim_geometry_and_bad_blocks(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    ram = _json(work, "info_ram.json")
    assert ram["geometry"]["kind"] == "ram"
    assert ram["geometry"]["size"] == 4 << 20
    assert ram["geometry"]["erase_size"] == 64 << 10
    nand = _json(work, "info_nand.json")
    assert nand["geometry"] == {
        "kind": "nand",
        "size": 128 << 20,
        "erase_size": ERASE,
        "write_size": 2048,
        "page_size": 2048,
        "oob_size": 64,
    }
    assert nand["bad_blocks"] == [3 * ERASE, 7 * ERASE]


@pytest.mark.slow
def test_our_mtdram_write_reads_back_identical_and_we_verify_flashcp(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, result = guest_run
    assert _rc(work, "flash_ram") == 0, result.output
    record = _json(work, "flash_ram.json")
    assert record["sha256"] == _sha(work / "ram_a.bin")
    assert _sha(work / "ram_readback.bin", 1_000_000) == _sha(work / "ram_a.bin")
    assert _rc(work, "flashcp") == 0
    assert _rc(work, "verify_ram_b") == 0, (work / "verify_ram_b.out").read_text()
    assert _rc(work, "verify_ram_a") == 4
    assert "mismatch" in (work / "verify_ram_a.out").read_text()


@pytest.mark.slow
def test_our_nand_write_skips_bad_blocks_relocates_a_failing_one_like_nanddump_reads(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "flash_nand") == 0, (work / "flash_nand.err").read_text()
    record = _json(work, "flash_nand.json")
    assert record["bad_blocks_skipped"][:2] == [3 * ERASE, 7 * ERASE]
    assert record["blocks_relocated"] == [10 * ERASE]
    assert _rc(work, "nanddump") == 0, (work / "nanddump.err").read_text()
    assert _sha(work / "nand_readback.bin", 1_500_000) == _sha(work / "nand_a.bin")
    after = _json(work, "info_nand_after.json")
    assert after["bad_blocks"] == [3 * ERASE, 7 * ERASE, 10 * ERASE]


@pytest.mark.slow
def test_we_verify_what_nandwrite_wrote_around_bad_blocks(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "flash_erase") == 0
    assert _rc(work, "nandwrite") == 0
    assert _rc(work, "verify_nand_b") == 0, (work / "verify_nand_b.out").read_text()


@pytest.mark.slow
def test_bad_input_is_refused_before_any_erase_on_real_mtd(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "misaligned") == 6
    assert "not aligned" in (work / "misaligned.out").read_text()
    assert _rc(work, "big") == 6
    assert "does not fit" in (work / "big.out").read_text()
    assert _rc(work, "notmtd") == 3
    assert "is not an MTD device" in (work / "notmtd.out").read_text()
    assert _rc(work, "readonly") == 6
    assert "read-only" in (work / "readonly.out").read_text()
    # flashcp's image is still there: nothing was erased by the refused runs.
    after = (work / "ram_after_bad_input.bin").read_bytes()
    assert after[:700_000] == (work / "ram_b.bin").read_bytes()


@pytest.mark.slow
def test_ab_layout_on_nandsim(guest_run: tuple[Path, GuestResult]) -> None:
    work, _ = guest_run
    assert _rc(work, "ab_flash") == 0
    flashed = _json(work, "ab_flash.json")
    assert flashed["slot"] == 1
    assert _json(work, "ab_boot.json")["action"] == "trial"
    assert _json(work, "ab_confirm.json")["confirmed"] == 1
    info = _json(work, "ab_info.json")
    assert info["slots"]["active"] == 1
    assert info["slots"]["slots"][1]["image"]["sha256"] == _sha(work / "nand_a.bin")


def test_guest_harness_builds_a_cpio_the_kernel_format_expects() -> None:
    from qemu_guest import _cpio

    archive = _cpio([("init", 0o100755, b"#!/bin/sh\n")])
    assert archive.startswith(b"070701")
    assert b"TRAILER!!!" in archive
    assert len(archive) % 4 == 0
