"""The command line against coreutils' md5sum/sha256sum/sha1sum, and its error policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import otaflash
from otaflash import cli

from .conftest import run_otaflash

COREUTILS = {"md5": "md5sum", "sha256": "sha256sum", "sha1": "sha1sum"}


@pytest.fixture
def random_files(tmp_path: Path) -> list[str]:
    names = ["empty.bin", "one.bin", "fw v1.bin", "big.bin", "odd.bin"]
    sizes = [0, 1, 4096, (9 << 20) + 3, 65537]
    for name, size in zip(names, sizes, strict=True):
        (tmp_path / name).write_bytes(os.urandom(size))
    return names


def coreutils(tool: str, *args: str, cwd: Path) -> str:
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("algorithm", sorted(COREUTILS))
def test_single_algorithm_output_equals_coreutils(
    algorithm: str, random_files: list[str], tmp_path: Path
) -> None:
    result = run_otaflash(["hash", "--algo", algorithm, *random_files], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == coreutils(COREUTILS[algorithm], *random_files, cwd=tmp_path)


def test_several_algorithms_print_the_tag_form(random_files: list[str], tmp_path: Path) -> None:
    result = run_otaflash(["hash", "-a", "md5,sha256", *random_files], cwd=tmp_path)
    assert result.returncode == 0
    expected = []
    for name in random_files:
        expected.append(coreutils("md5sum", "--tag", name, cwd=tmp_path))
        expected.append(coreutils("sha256sum", "--tag", name, cwd=tmp_path))
    assert result.stdout.decode() == "".join(expected)


def test_output_is_accepted_by_coreutils_check_mode(
    random_files: list[str], tmp_path: Path
) -> None:
    plain = run_otaflash(["hash", "-a", "sha256", *random_files], cwd=tmp_path).stdout
    (tmp_path / "SHA256SUMS").write_bytes(plain)
    coreutils("sha256sum", "-c", "--strict", "SHA256SUMS", cwd=tmp_path)
    tagged = run_otaflash(["hash", *random_files], cwd=tmp_path).stdout
    md5_lines = b"".join(line + b"\n" for line in tagged.splitlines() if line.startswith(b"MD5"))
    (tmp_path / "MD5SUMS").write_bytes(md5_lines)
    coreutils("md5sum", "-c", "--strict", "MD5SUMS", cwd=tmp_path)


def test_awkward_file_names_are_escaped_like_coreutils(tmp_path: Path) -> None:
    names = ["back\\slash.bin", "new\nline.bin", "plain.bin"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 10)
    for algorithm, tool in COREUTILS.items():
        ours = run_otaflash(["hash", "-a", algorithm, *names], cwd=tmp_path).stdout.decode()
        assert ours == coreutils(tool, *names, cwd=tmp_path)
    ours = run_otaflash(["hash", "-a", "md5,sha1", *names], cwd=tmp_path).stdout.decode()
    expected = "".join(
        coreutils("md5sum", "--tag", n, cwd=tmp_path)
        + coreutils("sha1sum", "--tag", n, cwd=tmp_path)
        for n in names
    )
    assert ours == expected


def test_stdin_equals_md5sum(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    result = run_otaflash(["hash", "-a", "md5", "-"], input=data)
    expected = subprocess.run(["md5sum", "-"], input=data, capture_output=True, check=True)
    assert result.stdout == expected.stdout


def test_json_lines(random_files: list[str], tmp_path: Path) -> None:
    result = run_otaflash(
        ["hash", "--json", "-a", "md5,sha256,sha1,crc32", *random_files], cwd=tmp_path
    )
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["path"] for r in records] == random_files
    for record in records:
        data = (tmp_path / record["path"]).read_bytes()
        assert record["size"] == len(data)
        assert set(record) == {"path", "size", "md5", "sha256", "sha1", "crc32"}
        md5_line = coreutils("md5sum", record["path"], cwd=tmp_path)
        assert md5_line.startswith(record["md5"])


def test_a_missing_file_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "ok.bin").write_bytes(b"ok")
    result = run_otaflash(["hash", "-a", "md5", "missing.bin", "ok.bin", "."], cwd=tmp_path)
    assert result.returncode == 3
    assert result.stdout.decode() == coreutils("md5sum", "ok.bin", cwd=tmp_path)
    assert result.stderr.decode().splitlines() == [
        "otaflash: error: cannot open missing.bin: no such file or directory (check the path)",
        "otaflash: error: cannot hash .: it is a directory (give a file, not a directory)",
    ]


def test_json_failures_are_records_too(tmp_path: Path) -> None:
    result = run_otaflash(["hash", "--json", "missing.bin"], cwd=tmp_path)
    assert result.returncode == 3
    (record,) = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert record == {
        "path": "missing.bin",
        "error": "cannot open missing.bin: no such file or directory",
        "error_type": "MissingFileError",
        "exit_code": 3,
    }


@pytest.mark.parametrize(
    ("args", "code", "stderr_start"),
    [
        (["hash", "--algo", "sha512", "x"], 3, "otaflash: error: unknown hash algorithm 'sha512'"),
        (["hash", "--algo", ",", "x"], 3, "otaflash: error: unknown hash algorithm"),
        (["hash"], 2, "usage: otaflash hash"),
        ([], 2, "usage: otaflash"),
        (["frobnicate"], 2, "usage: otaflash"),
    ],
)
def test_user_errors_are_one_line_with_a_documented_code(
    args: list[str], code: int, stderr_start: str
) -> None:
    result = run_otaflash(args)
    assert result.returncode == code
    stderr = result.stderr.decode()
    assert stderr.startswith(stderr_start)
    assert "Traceback" not in stderr


def test_version_both_ways() -> None:
    for result in (
        run_otaflash(["--version"]),
        subprocess.run(
            [Path(sys.executable).parent / "otaflash", "--version"],
            capture_output=True,
            check=False,
        ),
    ):
        assert result.returncode == 0
        assert result.stdout.decode().strip() == f"otaflash {otaflash.__version__}"
    assert otaflash.__version__ == "0.1.0"


def test_arguments_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "args.txt").write_text("hash\n--algo\nsha1\na.bin\n")
    result = run_otaflash(["@args.txt"], cwd=tmp_path)
    assert result.stdout.decode() == coreutils("sha1sum", "a.bin", cwd=tmp_path)


def test_a_closed_stdout_is_not_a_crash(tmp_path: Path) -> None:
    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(b"x")
    names = [f"f{i}" for i in range(200)]
    proc = subprocess.run(
        f"{sys.executable} -m otaflash hash {' '.join(names)} | head -n 1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.stdout.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr


def test_an_internal_error_is_reported_as_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from otaflash.cli import hash as hash_verb

    def broken(*_: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(hash_verb.hashing, "hash_file", broken)
    (tmp_path / "f").write_bytes(b"")
    assert cli.main(["hash", str(tmp_path / "f")]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "this is a bug in otaflash" in err


def test_main_is_embeddable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert cli.main(["hash", "-a", "md5", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().out == f"900150983cd24fb0d6963f7d28e17f72  {tmp_path / 'f'}\n"
    assert cli.main(["--version"]) == 0
