"""USB DFU through the real Linux USB stack: in a qemu guest with Debian's
kernel, the emulated STM32 bootloader is plugged into ``vhci_hcd`` over
USB/IP (:mod:`otaflash.sim.usbip`); usbcore enumerates it and both the real
``dfu-util`` and our host (pyusb on libusb) flash it and read it back, each
checking the other's work. Bad input, a device error and an unplugged
device go through the same stack."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from otaflash.usb.files import add_suffix, write_dfuse

sys.path.insert(0, str(Path(__file__).parent))
from qemu_guest import GuestResult, QemuGuest, missing_tools

ROOT = Path(__file__).resolve().parent.parent
BASE = 0x0800_0000
SIZE_A = 20_000
SIZE_B = (6000, 1500)
SIZE_C = (4096, 3000)

READBACK = r"""
import sys
from otaflash.usb import find_dfu_devices, parse_selector
from otaflash.usb.dfu import DfuDevice
serial, address, size, out = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), sys.argv[4]
info = find_dfu_devices(parse_selector(f"0483:df11,serial={serial}"))[0]
with DfuDevice(info, info.alt_setting(0)) as dev:
    dev.ensure_idle()
    open(out, "wb").write(b"".join(dev.read(address, size)))
"""

GUEST_SCRIPT = r"""
set -u
PY={python}
OTA={otaflash}
step() {{ echo "== $(cut -d" " -f1 /proc/uptime) $*"; }}
ours() {{ out=$1; shift; $OTA "$@" > $out.out 2> $out.err; echo $? > $out.rc; }}
du() {{ out=$1; shift; dfu-util "$@" > $out.txt 2>&1; echo $? > $out.rc; }}

step "seven emulated devices, one process, each on its own vhci port"
mkdir -p ready
$PY -m otaflash.sim.dfu --flash "sim:$PWD/{{serial}}.sim?kind=nor&size=128k&erase=2k" \
    --ready-dir ready --device serial=A --device serial=B --device serial=C \
    --device serial=E,write-error-at=0x08002000 --device serial=U,disconnect-after-blocks=3 \
    --device serial=R,runtime --device serial=P,plain > devices.log 2>&1 &
echo $! > devices.pid
for i in $(seq 1 900); do [ $(ls ready | wc -l) -ge 7 ] && break; sleep 0.1; done
ls ready
sleep 0.5
du list_dfu_util -l
ours list_ours list --json

step "dfu-util writes a raw image and reads it back; our host reads it back too"
du du_dn_a -S A -a 0 -s 0x08000000 -D raw_a.bin
du du_up_a -S A -a 0 -s 0x08000000:{size_a} -U du_up_a.bin
$PY readback.py A 0x08000000 {size_a} ours_up_a.bin > ours_up_a.txt 2>&1; echo $? > ours_up_a.rc

step "our host writes a two-element DfuSe file; dfu-util reads each element back"
ours ours_b flash --json --usb 0483:df11,serial=B app_b.dfu
du du_up_b1 -S B -a 0 -s 0x08000000:{size_b1} -U du_up_b1.bin
du du_up_b2 -S B -a 0 -s 0x08008000:{size_b2} -U du_up_b2.bin

step "dfu-util writes a DfuSe file we made; then bad input leaves it alone"
du du_dn_c -S C -a 0 -D app_c.dfu
ours wrongpid flash --usb 0483:df11,serial=C wrongpid.bin
ours big flash --usb 0483:df11,serial=C big.bin
$PY readback.py C 0x08010000 {size_c2} ours_up_c2.bin > ours_up_c2.txt 2>&1; echo $? > ours_up_c2.rc

step "errWRITE mid-way"
ours errwrite flash --usb 0483:df11,serial=E raw_a.bin
du e_after -S E -a 0 -s 0x08000000:2048 -U e_after.bin

step "unplugged mid-download"
ours unplug flash --usb 0483:df11,serial=U raw_a.bin

step "a device in run-time mode is detached into DFU mode"
ours detach flash --json --usb 0483:5740,serial=R raw_a.bin

step "plain DFU 1.1"
du du_plain -S P -a 0 -D plain_a.bin
du du_plain_up -S P -a 0 -U du_plain_up.bin
ours plain_ours flash --json --usb 0483:df11,serial=P plain_b.bin
du du_plain_up_b -S P -a 0 -U du_plain_up_b.bin

step "leave: the device runs the image"
ours leave flash --json --usb 0483:df11,serial=B --leave raw_a.bin
sleep 2
du list_after -l
kill $(cat devices.pid)
step done
"""


def _rand(size: int, seed: int) -> bytes:
    return __import__("random").Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GuestResult]:
    missing = missing_tools()
    assert not missing, f"missing {missing}: run `make system-deps`"
    work = tmp_path_factory.mktemp("usb-guest")
    (work / "readback.py").write_text(READBACK)
    (work / "raw_a.bin").write_bytes(_rand(SIZE_A, 1))
    write_dfuse(
        work / "app_b.dfu",
        [
            (
                0,
                "Internal Flash",
                [(BASE, _rand(SIZE_B[0], 2)), (BASE + 0x8000, _rand(SIZE_B[1], 3))],
            )
        ],
        0x0483,
        0xDF11,
    )
    write_dfuse(
        work / "app_c.dfu",
        [
            (
                0,
                "Internal Flash",
                [(BASE + 0x4000, _rand(SIZE_C[0], 4)), (BASE + 0x10000, _rand(SIZE_C[1], 5))],
            )
        ],
        0x0483,
        0xDF11,
    )
    (work / "wrongpid.bin").write_bytes(_rand(5000, 6))
    add_suffix(work / "wrongpid.bin", 0x0483, 0xDF12)
    (work / "big.bin").write_bytes(_rand(128 * 1024 + 2048, 7))
    (work / "plain_a.bin").write_bytes(_rand(9000, 8))
    add_suffix(work / "plain_a.bin", 0x0483, 0xDF11)
    (work / "plain_b.bin").write_bytes(_rand(7000, 9))
    script = GUEST_SCRIPT.format(
        python=ROOT / ".venv" / "bin" / "python",
        otaflash=ROOT / ".venv" / "bin" / "otaflash",
        size_a=SIZE_A,
        size_b1=SIZE_B[0],
        size_b2=SIZE_B[1],
        size_c2=SIZE_C[1],
    )
    result = QemuGuest().run(script, workdir=work, modprobe=["vhci_hcd"], timeout=580)
    assert result.returncode == 0, f"{result.output}\n{result.console[-3000:]}"
    return work, result


def _rc(work: Path, name: str) -> int:
    return int((work / f"{name}.rc").read_text())


def _text(work: Path, name: str) -> str:
    return (work / name).read_text(errors="replace")


def _json(work: Path, name: str) -> Any:
    return json.loads((work / name).read_text())


@pytest.mark.slow
def test_dfu_util_and_our_list_see_the_device_with_its_functional_descriptor(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    listing = _text(work, "list_dfu_util.txt")
    assert "Found DFU: [0483:df11] ver=2200" in listing
    assert 'alt=0, name="@Internal Flash  /0x08000000/64*002Kg", serial="A"' in listing
    assert 'alt=1, name="@Option Bytes  /0x1FFFF800/01*016 e"' in listing
    assert "has no DFU functional descriptor" not in listing
    records = [json.loads(line) for line in _text(work, "list_ours.out").splitlines()]
    # `otaflash list` shows the guest's serial ports too.
    by_serial = {r["serial"]: r for r in records if r["kind"] == "usb-dfu"}
    assert sorted(by_serial) == ["A", "B", "C", "E", "P", "R", "U"]
    a = by_serial["A"]
    assert a["usb_id"] == "0483:df11"
    assert a["dfu_version"] == "011a"
    assert a["transfer_size"] == 2048
    assert a["path"]
    assert by_serial["R"]["mode"] == "runtime"
    assert by_serial["P"]["dfu_version"] == "0110"


@pytest.mark.slow
def test_what_dfu_util_writes_both_read_back_identical(guest_run: tuple[Path, GuestResult]) -> None:
    work, _ = guest_run
    assert _rc(work, "du_dn_a") == 0, _text(work, "du_dn_a.txt")
    assert "File downloaded successfully" in _text(work, "du_dn_a.txt")
    assert _rc(work, "du_up_a") == 0, _text(work, "du_up_a.txt")
    assert (work / "du_up_a.bin").read_bytes() == _rand(SIZE_A, 1)
    assert _rc(work, "ours_up_a") == 0, _text(work, "ours_up_a.txt")
    assert (work / "ours_up_a.bin").read_bytes() == _rand(SIZE_A, 1)


@pytest.mark.slow
def test_what_we_write_dfu_util_reads_back_and_dfu_util_takes_our_dfuse_file(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "ours_b") == 0, _text(work, "ours_b.err")
    record = _json(work, "ours_b.out")
    assert record["verified"]
    assert record["format"] == "dfuse"
    assert record["elements"] == [
        {"address": BASE, "size": SIZE_B[0]},
        {"address": BASE + 0x8000, "size": SIZE_B[1]},
    ]
    assert (work / "du_up_b1.bin").read_bytes() == _rand(SIZE_B[0], 2)
    assert (work / "du_up_b2.bin").read_bytes() == _rand(SIZE_B[1], 3)
    assert _rc(work, "du_dn_c") == 0, _text(work, "du_dn_c.txt")
    assert _rc(work, "ours_up_c2") == 0, _text(work, "ours_up_c2.txt")
    assert (work / "ours_up_c2.bin").read_bytes() == _rand(SIZE_C[1], 5)


@pytest.mark.slow
def test_bad_input_through_the_real_stack_leaves_the_flash_alone(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "wrongpid") == 3
    assert "made for USB device 0483:df12" in _text(work, "wrongpid.err")
    assert _rc(work, "big") == 6
    assert "does not fit Internal Flash" in _text(work, "big.err")
    assert "Traceback" not in _text(work, "big.err") + _text(work, "wrongpid.err")
    # Read back after both refusals: what dfu-util wrote is still there.
    assert (work / "ours_up_c2.bin").read_bytes() == _rand(SIZE_C[1], 5)


@pytest.mark.slow
def test_leave_runs_the_firmware_and_the_device_comes_back_in_runtime_mode(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "leave") == 0, _text(work, "leave.err")
    assert _json(work, "leave.out")["left"]
    assert "Found Runtime: [0483:5740]" in _text(work, "list_after.txt")


@pytest.mark.slow
def test_err_write_is_reported_and_the_device_is_left_idle(
    guest_run: tuple[Path, GuestResult],
) -> None:
    work, _ = guest_run
    assert _rc(work, "errwrite") == 6
    out = _text(work, "errwrite.err")
    assert "errWRITE (the device is unable to write memory)" in out
    assert "0x08002000" in out
    assert _rc(work, "e_after") == 0
    assert "state(2) = dfuIDLE" in _text(work, "e_after.txt")


@pytest.mark.slow
def test_unplugged_mid_download_is_a_transport_error(guest_run: tuple[Path, GuestResult]) -> None:
    work, _ = guest_run
    assert _rc(work, "unplug") == 5
    out = _text(work, "unplug.err")
    assert "otaflash: error:" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_runtime_device_is_detached_and_flashed(guest_run: tuple[Path, GuestResult]) -> None:
    work, _ = guest_run
    assert "Found Runtime: [0483:5740]" in _text(work, "list_dfu_util.txt")
    assert _rc(work, "detach") == 0, _text(work, "detach.err")
    record = _json(work, "detach.out")
    assert record["detached"]
    assert record["device"] == "0483:df11"
    assert record["verified"]


@pytest.mark.slow
def test_plain_dfu_both_ways(guest_run: tuple[Path, GuestResult]) -> None:
    work, _ = guest_run
    assert _rc(work, "du_plain") == 0, _text(work, "du_plain.txt")
    assert _rc(work, "du_plain_up") == 0, _text(work, "du_plain_up.txt")
    assert (work / "du_plain_up.bin").read_bytes() == (work / "plain_a.bin").read_bytes()[:9000]
    assert _rc(work, "plain_ours") == 0, _text(work, "plain_ours.err")
    record = _json(work, "plain_ours.out")
    assert record["protocol"] == "dfu"
    assert record["verified"]
    assert (work / "du_plain_up_b.bin").read_bytes() == _rand(7000, 9)


def test_usbip_headers_are_the_48_byte_big_endian_ones_the_kernel_expects() -> None:
    from otaflash.sim.usbip import HEADER, _ret_submit

    reply = _ret_submit(7, -32, b"ab", 2)
    assert len(reply) == HEADER + 2
    assert reply[:8] == bytes([0, 0, 0, 3, 0, 0, 0, 7])
    assert reply[20:24] == (-32).to_bytes(4, "big", signed=True)
    assert os.path.basename(__file__).startswith("test_")
