"""USB DFU benchmarks: time to flash and verify 1 MiB on the emulated STM32
bootloader.

- In-process (pyusb backend): our whole host stack against a replay of the
  very same control transfers issued straight through pyusb; the difference
  per block is what our stack costs on top of pyusb.
- Through the real Linux USB stack in the qemu guest (USB/IP into
  vhci_hcd): ``dfu-util -D`` then ``-U`` and a compare, against
  ``otaflash flash`` (which reads back and compares itself), same device,
  same 2048-byte transfers. Under TCG every USB round trip is slow, so the
  absolute figures are the guest's, the ratio is what matters.

With ``--benchmark-disable`` (the default test run) sizes shrink so the
suite stays quick; ``make bench`` runs them at 1 MiB.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import usb.core

from otaflash.sim.dfu import EmulatedDfuDevice
from otaflash.sim.usb_backend import EmulatedBackend
from otaflash.usb import flash_file

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
TRANSFER = 2048


def _size(config: pytest.Config, full: int, quick: int) -> int:
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    return quick if disabled else full


class _Recorder(EmulatedBackend):
    """Remembers every control transfer, to replay them without our host."""

    def __init__(self, *devices: EmulatedDfuDevice) -> None:
        super().__init__(*devices)
        self.log: list[tuple[int, int, int, int, bytes | int]] = []

    def ctrl_transfer(  # noqa: PLR0917 (pyusb's IBackend signature)
        self, dev_handle: Any, bmRequestType: int, bRequest: int,
        wValue: int, wIndex: int, data: Any, timeout: int,
    ) -> int:  # fmt: skip
        self.log.append(
            (
                bmRequestType,
                bRequest,
                wValue,
                wIndex,
                len(data) if bmRequestType & 0x80 else data.tobytes(),
            )
        )
        return int(
            super().ctrl_transfer(
                dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout
            )
        )


def _device(tmp_path: Path, name: str) -> EmulatedDfuDevice:
    return EmulatedDfuDevice(f"sim:{tmp_path / name}.sim?kind=nor&size=2M&erase=2k")


def test_bench_flash_and_verify_in_process(
    benchmark: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    size = _size(request.config, MIB, 64 * 1024)
    image = tmp_path / "fw.bin"
    image.write_bytes(os.urandom(size))
    rounds = iter(range(1000))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        bus = EmulatedBackend(_device(tmp_path, f"d{next(rounds)}"))
        return ("0483:df11", str(image)), {"backend": bus}

    result = benchmark.pedantic(flash_file, setup=setup, rounds=5, iterations=1)
    assert result.verified
    benchmark.extra_info.update({"case": "usb-inprocess", "impl": "otaflash", "bytes": size})


def test_bench_same_transfers_straight_through_pyusb(
    benchmark: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    size = _size(request.config, MIB, 64 * 1024)
    image = tmp_path / "fw.bin"
    image.write_bytes(os.urandom(size))
    recorder = _Recorder(_device(tmp_path, "rec"))
    flash_file("0483:df11", str(image), backend=recorder)
    log = recorder.log
    rounds = iter(range(1000))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        bus = EmulatedBackend(_device(tmp_path, f"r{next(rounds)}"))
        dev = usb.core.find(backend=bus)
        return (dev,), {}

    def replay(dev: Any) -> None:
        for request_type, req, value, index, data in log:
            dev.ctrl_transfer(request_type, req, value, index, data, 5000)

    benchmark.pedantic(replay, setup=setup, rounds=5, iterations=1)
    benchmark.extra_info.update(
        {"case": "usb-inprocess", "impl": "pyusb-replay", "bytes": size, "transfers": len(log)}
    )


GUEST_BENCH = r"""
set -u
OTA={otaflash}
PY={python}
mkdir -p ready
$PY -m otaflash.sim.dfu --ready-dir ready --device serial=D --device serial=O \
    --flash "sim:$PWD/{{serial}}.sim?kind=nor&size=2M&erase=2k" > devices.log 2>&1 &
PID=$!
for i in $(seq 1 900); do [ $(ls ready | wc -l) -ge 2 ] && break; sleep 0.1; done
sleep 0.5
now() {{ cut -d" " -f1 /proc/uptime; }}
t0=$(now)
dfu-util -S D -a 0 -t {transfer} -s 0x08000000 -D fw.bin > du_dn.txt 2>&1; echo $? > du_dn.rc
t1=$(now)
dfu-util -S D -a 0 -t {transfer} -s 0x08000000:{size} -U up.bin > du_up.txt 2>&1; echo $? > du_up.rc
cmp -s fw.bin up.bin; echo $? > du_cmp.rc
t2=$(now)
$OTA flash --json --usb 0483:df11,serial=O --transfer-size {transfer} fw.bin \
    > ours.json 2> ours.err; echo $? > ours.rc
t3=$(now)
$OTA --version > /dev/null; t4=$(now)
echo "$t0 $t1 $t2 $t3 $t4" > times.txt
kill $PID
"""


def test_bench_guest_dfu_util_vs_otaflash(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from qemu_guest import QemuGuest, missing_tools

    assert not missing_tools(), "run `make system-deps`"
    size = _size(request.config, MIB, 32 * 1024)
    (tmp_path / "fw.bin").write_bytes(os.urandom(size))
    script = GUEST_BENCH.format(
        otaflash=ROOT / ".venv" / "bin" / "otaflash",
        python=ROOT / ".venv" / "bin" / "python",
        transfer=TRANSFER,
        size=size,
    )
    started = time.monotonic()
    result = QemuGuest().run(script, workdir=tmp_path, modprobe=["vhci_hcd"], timeout=1500)
    assert result.returncode == 0, result.output
    for name in ("du_dn", "du_up", "du_cmp", "ours"):
        assert (tmp_path / f"{name}.rc").read_text().strip() == "0", (
            name,
            result.output,
            (tmp_path / "ours.err").read_text(),
        )
    t = [float(x) for x in (tmp_path / "times.txt").read_text().split()]
    times = {
        "dfu_util_download": t[1] - t[0],
        "dfu_util_upload_cmp": t[2] - t[1],
        "otaflash_total": t[3] - t[2],
        "python_start": t[4] - t[3],
    }
    record = json.loads((tmp_path / "ours.json").read_text())
    assert record["verified"]
    dfu_util = times["dfu_util_download"] + times["dfu_util_upload_cmp"]
    report = {
        "bytes": size,
        "transfer_size": TRANSFER,
        "dfu_util_flash_and_verify_s": round(dfu_util, 2),
        "otaflash_flash_and_verify_s": round(times["otaflash_total"], 2),
        "otaflash_in_flash_file_s": record["seconds"],
        "otaflash_python_start_s": round(times["python_start"], 2),
        "ratio_otaflash_over_dfu_util": round(times["otaflash_total"] / dfu_util, 3),
        "ratio_in_flash_file_over_dfu_util": round(record["seconds"] / dfu_util, 3),
        "guest_run_s": round(time.monotonic() - started, 1),
    }
    out = ROOT / "target" / "bench-usb-guest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
