"""The DFU/DfuSe host against the emulated device, in-process: the product's
unmodified pyusb code talks to :class:`EmulatedDfuDevice` through
:class:`EmulatedBackend`. Every state transition and failure the issue names:
detach, download with bwPollTimeout, manifestation (tolerant or not),
upload/verify, dfuERROR recovery, DfuSe commands, bad files and devices that
go away."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from otaflash.cli import main
from otaflash.errors import (
    DeviceNotFoundError,
    DfuFileError,
    DfuStatusError,
    GeometryError,
    InputError,
    UsbError,
    UsbPermissionError,
    VerifyError,
)
from otaflash.sim.dfu import EmulatedDfuDevice, Faults, Stall
from otaflash.sim.usb_backend import EmulatedBackend
from otaflash.usb import flash_file, list_dfu_devices, parse_selector
from otaflash.usb.files import add_suffix, write_dfuse
from otaflash.usb.protocol import IN, OUT, Request, State, Status, StatusCode

from .usbkit import BASE, default_bus, flash_bytes, make_device


def image(tmp_path: Path, size: int, name: str = "fw.bin", seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(__import__("random").Random(seed).randbytes(size))
    return path


# -- discovery -------------------------------------------------------------------


def test_lists_the_emulated_bootloader_with_alt_names_and_functional_descriptor(
    tmp_path: Path,
) -> None:
    device = make_device(tmp_path)
    records = list_dfu_devices(backend=EmulatedBackend(device))
    assert len(records) == 1
    rec = records[0]
    assert rec["usb_id"] == "0483:df11"
    assert rec["mode"] == "dfu"
    assert rec["serial"] == "OTAFLASH0001"
    assert rec["dfu_version"] == "011a"
    assert rec["transfer_size"] == 2048
    assert [a["name"] for a in rec["alts"]] == [
        "@Internal Flash  /0x08000000/64*002Kg",
        "@Option Bytes  /0x1FFFF800/01*016 e",
    ]


def test_selectors_parse_like_dfu_util_device_strings() -> None:
    sel = parse_selector("0483:df11,serial=ABC,alt=@Internal Flash  /0x08000000/04*016Kg,01*064Kg")
    assert (sel.vendor_id, sel.product_id, sel.serial) == (0x0483, 0xDF11, "ABC")
    assert sel.alt == "@Internal Flash  /0x08000000/04*016Kg,01*064Kg"
    assert parse_selector("0483:,alt=1").alt == 1
    assert parse_selector(":df11").vendor_id is None
    for bad in ("0483", "zz:df11", "0483:df11,colour=red", "10000:1"):
        with pytest.raises(InputError):
            parse_selector(bad)


def test_serial_and_path_pick_one_of_two_devices_and_ambiguity_is_an_error(
    tmp_path: Path,
) -> None:
    one = make_device(tmp_path, name="one", serial="AAA")
    two = make_device(tmp_path, name="two", serial="BBB")
    fw = image(tmp_path, 3000)
    bus = EmulatedBackend(one, two)
    with pytest.raises(DeviceNotFoundError, match="2 DFU devices match"):
        flash_file("0483:df11", str(fw), backend=bus)
    result = flash_file("0483:df11,serial=BBB", str(fw), backend=bus)
    assert result.serial == "BBB"
    assert result.verified
    assert flash_bytes(two, BASE, 3000) == fw.read_bytes()
    assert flash_bytes(one, BASE, 4) == b"\xff" * 4
    assert flash_file("0483:df11,path=1-1", str(fw), backend=bus).serial == "AAA"
    with pytest.raises(DeviceNotFoundError, match="no DFU device matches"):
        flash_file("0483:df11,serial=CCC", str(fw), backend=bus)


# -- DfuSe downloads ---------------------------------------------------------------


def test_raw_image_is_erased_written_and_read_back(tmp_path: Path) -> None:
    device = make_device(
        tmp_path, faults=Faults(program_poll_ms=1, erase_poll_ms=3), strict_timing=True
    )
    fw = image(tmp_path, 50_000)
    progress: list[tuple[str, int, int | None]] = []
    result = flash_file(
        "0483:df11",
        str(fw),
        backend=EmulatedBackend(device),
        progress=lambda *a: progress.append(a),
    )
    assert result.verified
    assert result.protocol == "dfuse"
    assert result.format == "raw"
    assert result.elements == [{"address": BASE, "size": 50_000}]
    assert result.erased_bytes == 25 * 2048
    assert flash_bytes(device, BASE, 50_000) == fw.read_bytes()
    # Only the pages the image covers were erased; the rest keeps its state.
    assert device.stats.erases == 25
    # bwPollTimeout was honoured: the strict device never saw an early request.
    assert device.stats.early_requests == 0
    ops = {op for op, _, _ in progress}
    assert ops == {"erase", "program", "verify"}
    assert ("verify", 50_000, 50_000) in progress


def test_full_blocks_follow_one_address_pointer_and_a_short_tail_moves_it(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 4 * 2048 + 100)
    flash_file("0483:df11", str(fw), backend=EmulatedBackend(device), verify=False)
    # 5 erases + 1 pointer for the full blocks + 1 for the tail: 7 commands,
    # 5 data blocks; each DNLOAD followed by its GETSTATUS round.
    assert device.stats.requests_by_name["DNLOAD"] == 5 + 2 + 5
    assert flash_bytes(device, BASE, fw.stat().st_size) == fw.read_bytes()


def test_a_smaller_transfer_size_than_the_devices_still_lands_right(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 10_000)
    result = flash_file("0483:df11", str(fw), backend=EmulatedBackend(device), transfer_size=1024)
    assert result.transfer_size == 1024
    assert result.verified
    assert flash_bytes(device, BASE, 10_000) == fw.read_bytes()


def test_address_and_alt_by_name_and_mass_erase_and_leave(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    bus = EmulatedBackend(device)
    fw = image(tmp_path, 5000)
    result = flash_file(
        "0483:df11", str(fw), backend=bus, address=BASE + 0x4000, alt="@Internal", mass_erase=True
    )
    assert result.erased_bytes == 128 * 1024
    assert device.stats.mass_erases == 1
    assert flash_bytes(device, BASE + 0x4000, 5000) == fw.read_bytes()
    opt = tmp_path / "opt.bin"
    opt.write_bytes(bytes(range(16)))
    result = flash_file("0483:df11", str(opt), backend=bus, alt=1)
    assert result.alt_name.startswith("@Option Bytes")
    assert result.verified
    assert bytes(device.option_bytes) == bytes(range(16))
    result = flash_file("0483:df11", str(fw), backend=bus, leave=True)
    assert result.left
    assert device.mode == "runtime"  # it left the bootloader and runs the image
    assert list_dfu_devices(backend=bus)[0]["mode"] == "runtime"


def test_dfuse_file_with_several_elements_and_targets(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    a, b = os.urandom(3000), os.urandom(700)
    path = tmp_path / "app.dfu"
    write_dfuse(
        path,
        [
            (0, "Internal Flash", [(BASE, a), (BASE + 0x8000, b)]),
            (1, "Option Bytes", [(0x1FFFF800, b"\x01" * 16)]),
        ],
        vendor_id=0x0483,
        product_id=0xDF11,
    )
    result = flash_file("0483:df11", str(path), backend=EmulatedBackend(device))
    assert result.format == "dfuse"
    assert result.alt == 0
    assert result.verified
    assert result.elements == [
        {"address": BASE, "size": 3000},
        {"address": BASE + 0x8000, "size": 700},
    ]
    assert flash_bytes(device, BASE, 3000) == a
    assert flash_bytes(device, BASE + 0x8000, 700) == b
    assert device.stats.erases == 3  # 3000 bytes span two pages, 700 one
    flash_file("0483:df11", str(path), backend=EmulatedBackend(device), alt=1)
    assert bytes(device.option_bytes) == b"\x01" * 16
    with pytest.raises(InputError, match="--address does not apply"):
        flash_file("0483:df11", str(path), backend=EmulatedBackend(device), address=BASE)


# -- bad input: nothing reaches the device -------------------------------------------


def test_image_larger_than_the_layout_is_refused_before_any_erase(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 128 * 1024 + 1)
    with pytest.raises(GeometryError, match="does not fit Internal Flash"):
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert device.stats.erases == 0
    assert device.stats.blocks == 0
    assert device.state == State.dfuIDLE
    with pytest.raises(GeometryError, match="does not fit"):
        flash_file(
            "0483:df11", str(image(tmp_path, 10)), backend=EmulatedBackend(device), address=BASE - 4
        )


def test_suffix_for_another_device_and_a_bad_crc_are_refused_untouched(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 4000)
    add_suffix(fw, 0x1234, 0x5678)
    with pytest.raises(DfuFileError, match="made for USB device 1234:5678") as info:
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert info.value.exit_code == 3
    assert device.stats.blocks == 0
    assert device.stats.erases == 0
    good = image(tmp_path, 4000, "good.bin")
    add_suffix(good, 0x0483, 0xDF11)
    data = bytearray(good.read_bytes())
    data[10] ^= 0xFF
    good.write_bytes(bytes(data))
    before = device.stats.requests
    with pytest.raises(DfuFileError, match="CRC"):
        flash_file("0483:df11", str(good), backend=EmulatedBackend(device))
    assert device.stats.requests == before  # refused before the bus was even scanned


def test_a_matching_suffix_is_checked_and_stripped(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 4000)
    payload = fw.read_bytes()
    add_suffix(fw, 0x0483, 0xFFFF)  # any product
    result = flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert result.format == "suffix"
    assert result.size == 4000
    assert flash_bytes(device, BASE, 4016) == payload + b"\xff" * 16


# -- failures mid-way ------------------------------------------------------------------


def test_err_write_mid_way_is_reported_in_words_and_the_device_stays_usable(
    tmp_path: Path,
) -> None:
    device = make_device(tmp_path, faults=Faults(write_error_at=BASE + 5 * 2048 + 7))
    fw = image(tmp_path, 20_000)
    with pytest.raises(DfuStatusError) as info:
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    err = info.value
    assert err.status_name == "errWRITE"
    assert err.exit_code == 6
    assert "unable to write memory" in str(err)
    assert "0x08002800" in str(err)
    assert device.state == State.dfuIDLE  # CLRSTATUS left it ready
    device.faults.write_error_at = None
    assert flash_file("0483:df11", str(fw), backend=EmulatedBackend(device)).verified


def test_erase_failure_and_unerased_flash_are_device_errors(tmp_path: Path) -> None:
    device = make_device(tmp_path, faults=Faults(erase_error_at=BASE + 2048))
    fw = image(tmp_path, 8000)
    with pytest.raises(DfuStatusError, match="errERASE"):
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    device.faults.erase_error_at = None
    flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    # Writing over programmed flash without an erase: the loader's own check fails.
    from otaflash.usb.devices import find_dfu_devices
    from otaflash.usb.dfu import DfuDevice

    info = find_dfu_devices(backend=EmulatedBackend(device))[0]
    with DfuDevice(info, info.alts[0]) as dev:
        dev.ensure_idle()
        sink = dev.writer(BASE, 2048)
        with pytest.raises(DfuStatusError, match="errVERIFY"):
            sink.write(b"\xff" * 2048)  # NOR cannot set bits back without an erase


def test_silent_corruption_is_caught_by_the_read_back(tmp_path: Path) -> None:
    device = make_device(tmp_path, faults=Faults(corrupt_at=BASE + 9000))
    fw = image(tmp_path, 20_000)
    with pytest.raises(VerifyError, match=r"differs .* at 0x08002000") as info:
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert info.value.exit_code == 4


def test_device_unplugged_mid_download_is_a_transport_error(tmp_path: Path) -> None:
    device = make_device(tmp_path, faults=Faults(disconnect_after_blocks=4))
    fw = image(tmp_path, 20_000)
    with pytest.raises(UsbError, match="disconnected while writing") as info:
        flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert info.value.exit_code == 5


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (State.dfuERROR, StatusCode.errPROG),
        (State.dfuDNLOAD_IDLE, StatusCode.OK),
        (State.dfuUPLOAD_IDLE, StatusCode.OK),
    ],
)
def test_a_device_left_mid_transfer_or_in_error_is_recovered(
    tmp_path: Path, state: State, status: StatusCode
) -> None:
    device = make_device(tmp_path)
    device.state, device.status = state, status
    result = flash_file("0483:df11", str(image(tmp_path, 3000)), backend=EmulatedBackend(device))
    assert result.recovered_from == state.label
    assert result.verified
    expected = "CLRSTATUS" if state == State.dfuERROR else "ABORT"
    assert device.stats.requests_by_name[expected] >= 1


# -- plain DFU 1.1 ---------------------------------------------------------------------


def test_plain_dfu_tolerant_manifestation_then_upload_verify(tmp_path: Path) -> None:
    device = make_device(tmp_path, dfuse=False, product_id=0x0001, vendor_id=0x1209)
    fw = image(tmp_path, 9000)
    add_suffix(fw, 0x1209, 0x0001)
    result = flash_file("1209:0001", str(fw), backend=EmulatedBackend(device))
    assert result.protocol == "dfu"
    assert result.verified
    assert result.size == 9000
    assert device.memory.read(0, 9000) == fw.read_bytes()[:9000]
    with pytest.raises(InputError, match="--address needs a DfuSe device"):
        flash_file("1209:0001", str(fw), backend=EmulatedBackend(device), address=0)


def test_plain_dfu_non_tolerant_device_resets_and_is_not_claimed_verified(tmp_path: Path) -> None:
    device = make_device(
        tmp_path, dfuse=False, manifestation_tolerant=False, faults=Faults(manifest_poll_ms=5)
    )
    fw = image(tmp_path, 5000)
    result = flash_file("0483:df11", str(fw), backend=EmulatedBackend(device))
    assert not result.verified
    assert "reset after manifestation" in result.verify_note
    assert device.mode == "runtime"
    assert device.memory.read(0, 5000) == fw.read_bytes()


# -- run-time mode -----------------------------------------------------------------------


@pytest.mark.parametrize("will_detach", [True, False])
def test_runtime_device_is_detached_into_dfu_mode_then_flashed(
    tmp_path: Path, will_detach: bool
) -> None:
    device = make_device(tmp_path, start_in_runtime=True, will_detach=will_detach)
    bus = EmulatedBackend(device)
    assert list_dfu_devices(backend=bus)[0]["mode"] == "runtime"
    fw = image(tmp_path, 6000)
    result = flash_file("0483:5740", str(fw), backend=bus)
    assert result.detached
    assert result.device == "0483:df11"
    assert result.verified
    assert flash_bytes(device, BASE, 6000) == fw.read_bytes()


# -- the emulator's state machine, request by request ------------------------------------


def status(device: EmulatedDfuDevice) -> Status:
    return Status.parse(device.control(IN, Request.GETSTATUS, 0, 0, 6))


def test_emulator_state_machine_follows_the_spec(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    assert status(device).state == State.dfuIDLE
    with pytest.raises(Stall):  # CLRSTATUS outside dfuERROR
        device.control(OUT, Request.CLRSTATUS, 0, 0, b"")
    assert status(device).status_name == "errSTALLEDPKT"
    device.control(OUT, Request.CLRSTATUS, 0, 0, b"")
    with pytest.raises(Stall):  # a zero-length download from dfuIDLE
        device.control(OUT, Request.DNLOAD, 0, 0, b"")
    device.control(OUT, Request.CLRSTATUS, 0, 0, b"")
    assert device.control(IN, Request.UPLOAD, 0, 0, 4) == bytes([0x00, 0x21, 0x41, 0x92])
    device.control(OUT, Request.ABORT, 0, 0, b"")
    device.control(OUT, Request.DNLOAD, 0, 0, bytes([0x21]) + (0x2000_0000).to_bytes(4, "little"))
    assert status(device).state == State.dfuERROR  # no memory there: errTARGET
    assert status(device).status_name == "errTARGET"
    device.control(OUT, Request.CLRSTATUS, 0, 0, b"")
    device.control(OUT, Request.DNLOAD, 0, 0, bytes([0x41]) + BASE.to_bytes(4, "little"))
    assert device.control(IN, Request.GETSTATE, 0, 0, 1) == bytes([State.dfuDNLOAD_SYNC])
    assert status(device).state == State.dfuDNBUSY
    assert status(device).state == State.dfuDNLOAD_IDLE
    with pytest.raises(Stall):  # UPLOAD is not allowed in dfuDNLOAD-IDLE
        device.control(IN, Request.UPLOAD, 2, 0, 16)


def test_permission_problems_get_a_udev_hint_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    import usb.core

    class Denied(EmulatedBackend):
        def ctrl_transfer(self, *args: Any) -> int:
            raise usb.core.USBError("Access denied (insufficient permissions)", -3, errno.EACCES)

        def claim_interface(self, dev_handle: Any, intf: int) -> None:
            raise usb.core.USBError("Access denied (insufficient permissions)", -3, errno.EACCES)

    device = make_device(tmp_path)
    records = list_dfu_devices(backend=Denied(device))
    assert "permission denied" in records[0]["access_error"]
    with pytest.raises(UsbPermissionError) as info:
        flash_file("0483:df11", str(image(tmp_path, 100)), backend=Denied(device))
    assert 'ATTRS{idVendor}=="0483"' in (info.value.hint or "")
    with default_bus(device):
        pass
    from otaflash.usb.devices import set_default_backend

    previous = set_default_backend(Denied(device))
    try:
        code = main(["flash", "--usb", "0483:df11", str(image(tmp_path, 100))])
    finally:
        set_default_backend(previous)
    err = capsys.readouterr().err
    assert code == 5
    assert "Traceback" not in err
    assert "udev" in err


# -- the command line -----------------------------------------------------------------------


def test_cli_flash_and_list_with_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = make_device(tmp_path)
    fw = image(tmp_path, 7000)
    with default_bus(device):
        assert main(["list", "--json"]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        (listed,) = [r for r in records if r["kind"] == "usb-dfu"]
        assert {r["kind"] for r in records} <= {"serial", "usb-dfu"}
        assert listed["usb_id"] == "0483:df11"
        code = main(
            ["flash", "--json", "-d", "0483:df11", "-a", "0", "-s", "0x08001000:leave", str(fw)]
        )
        record = json.loads(capsys.readouterr().out)
    assert code == 0
    assert record["verified"]
    assert record["left"]
    assert record["elements"][0]["address"] == 0x08001000
    assert flash_bytes(device, 0x08001000, 7000) == fw.read_bytes()
    device2 = make_device(tmp_path, name="two")
    with default_bus(device2):
        assert main(["flash", "--usb", "0483:df11", str(fw)]) == 0
        out = capsys.readouterr().out
        assert "read back and verified" in out
        assert main(["flash", "--usb", "0483:df11", "--offset", "4096", str(fw)]) == 3
        assert main(["flash", "--usb", "0483:df11", "-s", "0x08000000:bogus", str(fw)]) == 3
        assert main(["flash", "--usb", "0483:df12", str(fw)]) == 5
        assert "otaflash list" in capsys.readouterr().err
        big = image(tmp_path, 200_000, "big.bin")
        assert main(["flash", "--json", "--usb", "0483:df11", str(big)]) == 6
        failed = json.loads(capsys.readouterr().out)
        assert failed["error_type"] == "GeometryError"


def test_cli_flashes_a_delta_rebuilt_on_the_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otaflash import delta

    old = image(tmp_path, 60_000, "old.bin", seed=5)
    data = old.read_bytes()
    new = tmp_path / "new.bin"
    new.write_bytes(data[:20_000] + b"v2 code " * 100 + data[20_000:50_000] + data[51_000:])
    patch = tmp_path / "v2.patch"
    delta.diff(old, new, patch)
    assert patch.stat().st_size < new.stat().st_size // 5
    device = make_device(tmp_path)
    with default_bus(device):
        before = flash_bytes(device, BASE, 4096)
        # A patch that was damaged on the way fails before the device is touched.
        bad = tmp_path / "bad.patch"
        broken = bytearray(patch.read_bytes())
        broken[len(broken) // 2] ^= 0xFF
        bad.write_bytes(bytes(broken))
        assert main(["flash", "--usb", "0483:df11", "--delta", str(bad), "--old", str(old)]) == 7
        # So does one made for another old image.
        other = image(tmp_path, 60_000, "other.bin", seed=6)
        assert (
            main(["flash", "--usb", "0483:df11", "--delta", str(patch), "--old", str(other)]) == 7
        )
        assert flash_bytes(device, BASE, 4096) == before
        assert main(["flash", "--usb", "0483:df11", "--delta", str(patch)]) == 3
        assert "--old" in capsys.readouterr().err
        code = main(
            ["flash", "--json", "--usb", "0483:df11", "--delta", str(patch), "--old", str(old)]
        )
        record = json.loads(capsys.readouterr().out)
    assert code == 0, record
    assert record["verified"]
    assert record["delta"] == str(patch)
    assert record["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()
    assert flash_bytes(device, BASE, new.stat().st_size) == new.read_bytes()


def test_a_stream_of_odd_sized_chunks_is_flashed_and_its_digest_checked(tmp_path: Path) -> None:
    import hashlib

    from otaflash.usb import flash_stream

    device = make_device(tmp_path)
    data = os.urandom(30_001)
    sizes = [1, 7, 2048, 4095, 3, 10_000]

    def chunks() -> Any:
        at = 0
        for n in sizes * 10:
            if at >= len(data):
                return
            yield data[at : at + n]
            at += n

    digest = hashlib.sha256(data).hexdigest()
    result = flash_stream(
        "0483:df11", chunks(), len(data), expected_sha256=digest, backend=EmulatedBackend(device)
    )
    assert result.verified
    assert result.sha256 == digest
    assert result.format == "stream"
    assert flash_bytes(device, BASE, len(data)) == data
    with pytest.raises(VerifyError, match="stream's SHA-256"):
        flash_stream(
            "0483:df11",
            chunks(),
            len(data),
            expected_sha256="00" * 32,
            backend=EmulatedBackend(device),
        )
    with pytest.raises(InputError, match="declared"):
        flash_stream("0483:df11", chunks(), 1000, backend=EmulatedBackend(device))


def test_a_device_that_stalls_getstatus_itself_is_a_transport_error(tmp_path: Path) -> None:
    import errno

    import usb.core

    class StallsStatus(EmulatedBackend):
        def ctrl_transfer(
            self, dev_handle: Any, request_type: int, request: int, *rest: Any
        ) -> int:
            if request_type == IN and request == Request.GETSTATUS:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            return int(super().ctrl_transfer(dev_handle, request_type, request, *rest))

    device = make_device(tmp_path)
    with pytest.raises(UsbError, match="stalled a request while reading its status"):
        flash_file("0483:df11", str(image(tmp_path, 100)), backend=StallsStatus(device))
