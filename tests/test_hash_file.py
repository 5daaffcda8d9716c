"""hash_file: several digests in one pass, big files, errors, progress, Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from otaflash import hashing
from otaflash.errors import (
    FileAccessError,
    FileError,
    InputError,
    MissingFileError,
    NotAFileError,
    UnknownAlgorithmError,
)

from .conftest import make_sparse_file, run_otaflash


def reference_digests(path: Path, algorithms: list[str]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms if name != "crc32"}
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            for h in hashers.values():
                h.update(chunk)
            if "crc32" in algorithms:
                crc = zlib.crc32(chunk, crc)
    result = {name: h.hexdigest() for name, h in hashers.items()}
    if "crc32" in algorithms:
        result["crc32"] = format(crc, "08x")
    return result


@pytest.mark.parametrize(
    "size", [0, 1, 1 << 20, (1 << 20) + 1, (8 << 20) - 1, 8 << 20, (20 << 20) + 12345]
)
def test_all_algorithms_in_one_pass_match_hashlib(tmp_path: Path, size: int) -> None:
    path = tmp_path / "fw.bin"
    path.write_bytes(os.urandom(size))
    algorithms = ["md5", "sha256", "sha1", "crc32"]
    got = hashing.hash_file(path, algorithms)
    assert list(got) == algorithms
    assert dict(got) == reference_digests(path, algorithms)
    assert got.size == size


def test_defaults_order_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert list(hashing.hash_file(path)) == ["md5", "sha256"]
    assert list(hashing.hash_file(path, ["sha256", "md5", "sha256"])) == ["sha256", "md5"]
    assert list(hashing.hash_file(path, "crc32,md5")) == ["crc32", "md5"]
    assert hashing.hash_file(os.fsencode(path).decode(), ["md5"])["md5"] == (
        "900150983cd24fb0d6963f7d28e17f72"
    )


@pytest.mark.slow
def test_multi_gib_sparse_file(tmp_path: Path) -> None:
    """4 GiB + 5 bytes: offsets and the length counter cross 2^32 bits and bytes.

    The expected digests of this exact layout were computed once with
    coreutils' md5sum and sha256sum.
    """
    size = (4 << 30) + 5
    islands = {0: b"start", 3 << 30: b"three GiB", size - 5: b"\x01\x02\x03\x04\x05"}
    path = make_sparse_file(tmp_path / "big.img", size, islands)
    got = hashing.hash_file(path, ["md5", "sha256"])
    assert got.size == size
    assert dict(got) == {
        "md5": "9de509b478301c43d0a63f1218b1b731",
        "sha256": "4a63a90c2d68301822808e24da5761944e6b0941838497be6690cbecbb8298d7",
    }


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.bin"
    with pytest.raises(MissingFileError) as info:
        hashing.hash_file(path)
    error = info.value
    assert str(error) == f"cannot open {path}: no such file or directory"
    assert isinstance(error, FileNotFoundError)
    assert isinstance(error, InputError)
    assert (error.errno, error.filename) == (2, str(path))
    assert error.exit_code == 3
    assert error.hint == "check the path"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(NotAFileError, match=r"cannot hash .*: it is a directory") as info:
        hashing.hash_file(tmp_path)
    assert isinstance(info.value, IsADirectoryError)


def test_unknown_algorithm_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UnknownAlgorithmError):
        hashing.hash_file(tmp_path / "does-not-matter", ["md5", "whirlpool"])
    with pytest.raises(InputError, match="no hash algorithm"):
        hashing.hash_file(tmp_path, [])


UNREADABLE_SCRIPT = """
import sys
from otaflash import hashing
from otaflash.errors import FileAccessError
try:
    hashing.hash_file(sys.argv[1])
except FileAccessError as e:
    print(type(e).__name__, isinstance(e, PermissionError), e.errno, e, sep="|")
"""


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    path.write_bytes(b"x" * 100)
    path.chmod(0)
    # root reads anything; drop the capabilities that let it, so the kernel says EACCES.
    prefix = (
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
        if os.geteuid() == 0
        else []
    )
    out = subprocess.run(
        [*prefix, sys.executable, "-c", UNREADABLE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out == f"FileAccessError|True|13|cannot open {path}: permission denied"
    assert issubclass(FileAccessError, FileError)


def test_progress_reports_hash_events_ending_at_the_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(30 << 20))
    events: list[tuple[str, int, int | None]] = []
    hashing.hash_file(path, ["sha256"], progress=lambda *event: events.append(event))
    assert events, "no progress reported"
    assert {op for op, _, _ in events} == {"hash"}
    assert events[-1] == ("hash", 30 << 20, 30 << 20)
    assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)


def test_an_exception_in_progress_stops_hashing_and_propagates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(40 << 20))
    calls = []

    class Stop(Exception):
        pass

    def stop(op: str, done: int, total: int | None) -> None:
        calls.append(done)
        raise Stop

    with pytest.raises(Stop):
        hashing.hash_file(path, ["md5"], progress=stop)
    assert len(calls) == 1


CTRL_C_SCRIPT = """
import sys
from otaflash import hashing
print("started", flush=True)
hashing.hash_file(sys.argv[1], ["md5", "sha256"])
print("finished", flush=True)
"""


def _interrupt_after_start(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if "-c" in cmd:
        assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - sent


def test_ctrl_c_interrupts_a_long_hash_file(tmp_path: Path) -> None:
    # 16 GiB of holes: about half a minute of MD5, so an interrupt must cut it short.
    path = make_sparse_file(tmp_path / "huge.img", 16 << 30, {})
    result, latency = _interrupt_after_start([sys.executable, "-c", CTRL_C_SCRIPT, str(path)])
    assert result.returncode != 0
    assert "KeyboardInterrupt" in result.stderr
    assert "finished" not in result.stdout
    assert latency < 5, f"took {latency:.1f}s to stop after Ctrl-C"


def test_ctrl_c_in_the_cli_exits_130_with_one_line(tmp_path: Path) -> None:
    path = make_sparse_file(tmp_path / "huge.img", 16 << 30, {})
    cmd = [sys.executable, "-m", "otaflash", "hash", str(path)]
    result, latency = _interrupt_after_start(cmd)
    assert result.returncode == 130
    assert result.stderr.strip().splitlines() == ["otaflash: interrupted"]
    assert latency < 5


def test_reading_a_pipe_through_the_cli(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    result = run_otaflash(["hash", "--algo", "md5,crc32", "-"], input=data)
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == [
        f"MD5 (-) = {hashlib.md5(data).hexdigest()}",
        f"CRC32 (-) = {zlib.crc32(data):08x}",
    ]
