"""DFU files against dfu-util's own tools: what `dfu-suffix` and
`dfu-prefix` write we read, what we write they accept, and corrupt files
are refused by both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otaflash import _core
from otaflash.errors import DfuFileError
from otaflash.usb.files import BCD_DFUSE, add_suffix, open_firmware, write_dfuse


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run `make system-deps` (Debian package dfu-util)"
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def suffix_fields(output: str) -> dict[str, int]:
    fields = dict(
        re.findall(r"^(BCD device|Product ID|Vendor ID|BCD DFU|Length|CRC):\s+(\S+)", output, re.M)
    )
    return {k: int(v, 16) if v.startswith("0x") else int(v) for k, v in fields.items()}


def test_we_read_what_dfu_suffix_writes(tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    payload = os.urandom(10_000)
    fw.write_bytes(payload)
    made = run(tool("dfu-suffix"), "-v", "0483", "-p", "df11", "-d", "0200", "-a", fw)
    assert made.returncode == 0, made.stderr
    parsed = open_firmware(fw)
    assert parsed.payload_len == len(payload)
    assert parsed.prefix == "none"
    assert parsed.suffix is not None
    assert (parsed.suffix.vendor_id, parsed.suffix.product_id) == (0x0483, 0xDF11)
    assert parsed.suffix.bcd_device == 0x0200
    assert parsed.suffix.bcd_dfu == 0x0100
    checked = suffix_fields(run(tool("dfu-suffix"), "-c", fw).stdout)
    assert checked["CRC"] == parsed.suffix.crc
    data = fw.read_bytes()
    assert parsed.suffix.crc == zlib.crc32(data[:-4]) ^ 0xFFFFFFFF  # no final XOR


def test_dfu_suffix_accepts_what_we_write(tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(os.urandom(3333))
    ours = add_suffix(fw, 0x1209, 0x70D1, 0x0102)
    checked = run(tool("dfu-suffix"), "-c", fw)
    assert checked.returncode == 0, checked.stderr
    fields = suffix_fields(checked.stdout)
    assert fields == {
        "BCD device": 0x0102,
        "Product ID": 0x70D1,
        "Vendor ID": 0x1209,
        "BCD DFU": 0x0100,
        "Length": 16,
        "CRC": ours.crc,
    }
    # And dfu-suffix can take it off again, leaving the payload.
    assert run(tool("dfu-suffix"), "-D", fw).returncode == 0
    assert fw.stat().st_size == 3333
    add_suffix(fw, 1, 2)
    with pytest.raises(DfuFileError, match="already has a DFU suffix"):
        add_suffix(fw, 1, 2)


def test_a_corrupt_suffix_is_refused_by_both(tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(os.urandom(2000))
    add_suffix(fw, 0x0483, 0xDF11)
    data = bytearray(fw.read_bytes())
    data[100] ^= 0x01
    fw.write_bytes(bytes(data))
    theirs = run(tool("dfu-suffix"), "-c", fw)
    assert theirs.returncode != 0
    assert "CRC does not match" in theirs.stderr
    with pytest.raises(DfuFileError, match="DFU suffix CRC") as info:
        open_firmware(fw)
    assert info.value.exit_code == 3


def test_we_read_the_prefixes_dfu_prefix_writes(tmp_path: Path) -> None:
    payload = os.urandom(5000)
    stellaris = tmp_path / "s.bin"
    stellaris.write_bytes(payload)
    assert run(tool("dfu-prefix"), "-s", "0x2000", "-a", stellaris).returncode == 0
    assert run(tool("dfu-suffix"), "-v", "1cbe", "-p", "00ff", "-a", stellaris).returncode == 0
    parsed = open_firmware(stellaris)
    assert parsed.prefix == "stellaris"
    assert parsed.prefix_address == 0x2000
    # As dfu-util does, the prefix is part of what goes to the device.
    assert parsed.payload_len == 8 + len(payload)
    lpc = tmp_path / "l.bin"
    lpc.write_bytes(payload)
    assert run(tool("dfu-prefix"), "-L", "-a", lpc).returncode == 0
    assert open_firmware(lpc).prefix == "lpc"


def test_dfu_suffix_and_dfu_prefix_accept_our_dfuse_file(tmp_path: Path) -> None:
    path = tmp_path / "app.dfu"
    a, b = os.urandom(4096), os.urandom(100)
    write_dfuse(
        path, [(0, "Internal Flash", [(0x0800_0000, a), (0x0800_8000, b)])], 0x0483, 0xDF11, 0x2200
    )
    checked = run(tool("dfu-suffix"), "-c", path)
    assert checked.returncode == 0, checked.stderr
    fields = suffix_fields(checked.stdout)
    assert fields["BCD DFU"] == BCD_DFUSE
    assert fields["Vendor ID"] == 0x0483
    prefix = run(tool("dfu-prefix"), "-c", path)
    assert prefix.returncode == 0
    parsed = open_firmware(path)
    assert parsed.is_dfuse
    assert parsed.targets is not None
    target = parsed.targets[0]
    assert target.name == "Internal Flash"
    assert [(e.address, e.size) for e in target.elements] == [
        (0x0800_0000, 4096),
        (0x0800_8000, 100),
    ]
    data = path.read_bytes()
    e = target.elements[1]
    assert data[e.file_offset : e.file_offset + e.size] == b


@given(
    targets=st.lists(
        st.tuples(
            st.integers(0, 255),
            st.one_of(
                st.none(),
                st.text(max_size=20).filter(lambda t: "\0" not in t and len(t.encode()) < 250),
            ),
            st.lists(st.tuples(st.integers(0, 0xFFFF_0000), st.binary(max_size=300)), max_size=3),
        ),
        max_size=3,
    )
)
def test_dfuse_files_round_trip(
    targets: list[tuple[int, str | None, list[tuple[int, bytes]]]],
) -> None:
    data = _core.dfuse_file_build(targets, 0x0483, 0xDF11, 0xFFFF)
    assert _core.dfu_crc(data[:-4]) == int.from_bytes(data[-4:], "little")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".dfu") as f:
        f.write(data)
        f.flush()
        parsed = _core.dfuse_file_parse(f.name)
    assert [(t["alt"], t["name"]) for t in parsed["targets"]] == [
        (alt, name) for alt, name, _ in targets
    ]
    for (_, _, elements), target in zip(targets, parsed["targets"], strict=True):
        assert [(a, s) for a, _, s in target["elements"]] == [(a, len(d)) for a, d in elements]
        for (_, offset, size), (_, payload) in zip(target["elements"], elements, strict=True):
            assert data[offset : offset + size] == payload
