"""`otaflash update`, `check`, `publish`, `packages` and `serve` end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otaflash import targets
from otaflash.admin import AdminClient
from otaflash.cli import main
from otaflash.client import HttpChannel, OtaClient
from otaflash.errors import RuleError
from otaflash.server import EmbeddedServer, ServerProcess
from otaflash.update import run_update

from .servicekit import admin_fixture, image, server_fixture, write  # noqa: F401

NEW = image(700_000, 21)
OLD = image(700_000, 22)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(list(argv))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    return code, lines


def update(
    capsys: pytest.CaptureFixture[str], server: EmbeddedServer, target: Path, *extra: str
) -> tuple[int, list[dict[str, Any]]]:
    return run_cli(
        capsys,
        "update", "--json", "--server", server.url, "--product", "pk", "--device", "SN1",
        "--current", "1.0", "--target", f"file:{target}", *extra,
    )  # fmt: skip


def steps_of(lines: list[dict[str, Any]]) -> list[int]:
    return [line["step"] for line in lines if line.get("event") == "progress"]


@pytest.fixture(name="device")
def device_fixture(tmp_path: Path) -> Path:
    return write(tmp_path / "device.img", OLD)


def test_optional_update_needs_yes_then_installs_with_steps_in_order(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), title="New")
    code, lines = update(capsys, server, device)
    assert code == 0
    assert lines[-1]["status"] == "declined"
    assert device.read_bytes() == OLD
    assert steps_of(lines) == []
    assert admin.device("pk", "SN1")["progress"] == []

    code, lines = update(capsys, server, device, "--yes")
    assert code == 0, lines
    steps = steps_of(lines)
    assert steps[0] == 1
    assert steps[-1] == 100
    assert steps.count(100) == 1
    assert steps == sorted(set(steps))
    assert all(1 <= s <= 100 for s in steps)
    result = lines[-1]
    assert result["status"] == "updated"
    assert result["toVersion"] == "1.1"
    assert result["sha256"] == hashlib.sha256(NEW).hexdigest()
    assert result["verifiedSha256"] == hashlib.sha256(NEW).hexdigest()
    assert result["transferred"] == len(NEW)
    assert device.read_bytes() == NEW
    assert not device.with_name("device.img.otaflash-new").exists()
    state = admin.device("pk", "SN1")
    assert [p["step"] for p in state["progress"]] == steps  # the server saw the same
    assert state["modules"][0]["version"] == "1.1"  # reported after 100


def test_forced_update_installs_without_asking(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), forced=True)
    code, lines = update(capsys, server, device)
    assert code == 0
    assert lines[-1]["status"] == "updated"
    assert device.read_bytes() == NEW


def test_tampered_artifact_is_rejected_with_minus_3_and_nothing_is_flashed(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    package = admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), forced=True)
    blob = server.config.data_dir / "artifacts" / package["full"]["sha256"]
    tampered = bytearray(NEW)
    tampered[123_456] ^= 0x40
    blob.write_bytes(tampered)
    code, lines = update(capsys, server, device)
    assert code == 4
    assert steps_of(lines)[-1] == -3
    assert 100 not in steps_of(lines)
    assert "SHA-256 mismatch" in lines[-1]["error"]
    assert device.read_bytes() == OLD
    assert not device.with_name("device.img.otaflash-new").exists()
    assert admin.device("pk", "SN1")["progress"][-1]["step"] == -3


def test_truncated_artifact_is_rejected_and_nothing_is_flashed(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    package = admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), forced=True)
    blob = server.config.data_dir / "artifacts" / package["full"]["sha256"]
    blob.write_bytes(NEW[:-1000])
    code, lines = update(capsys, server, device)
    assert code == 4
    assert steps_of(lines)[-1] == -3
    assert "699000 bytes" in lines[-1]["error"]
    assert device.read_bytes() == OLD


def test_missing_artifact_is_a_download_failure_minus_2(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    package = admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), forced=True)
    (server.config.data_dir / "artifacts" / package["full"]["sha256"]).unlink()
    code, lines = update(capsys, server, device)
    assert code == 8
    assert steps_of(lines) == [1, -2]
    assert device.read_bytes() == OLD


def test_write_failure_is_minus_4(
    capsys: pytest.CaptureFixture[str],
    server: EmbeddedServer,
    admin: AdminClient,
    device: Path,
    tmp_path: Path,
) -> None:
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), forced=True)
    device.with_name("device.img.otaflash-new").mkdir()  # the side file cannot be created
    code, lines = update(capsys, server, device)
    assert code == 6
    assert steps_of(lines)[-1] == -4
    assert device.read_bytes() == OLD


def test_up_to_date_and_bad_target(
    capsys: pytest.CaptureFixture[str], server: EmbeddedServer, admin: AdminClient,
    device: Path, tmp_path: Path,
) -> None:  # fmt: skip
    admin.publish("pk", "1.0", write(tmp_path / "fw", NEW))
    code, lines = update(capsys, server, device)
    assert code == 0
    assert lines[-1]["status"] == "up-to-date"
    code, lines = update(capsys, server, tmp_path / "nodir" / "x.img")
    assert code == 3
    assert "does not exist" in lines[-1]["error"]
    code = main(["update", "--server", server.url, "--product", "pk", "--device", "SN1",
                 "--current", "1.0", "--target", "mtd:/dev/mtd0"])  # fmt: skip
    assert code == 3
    assert "unknown target type 'mtd:'" in capsys.readouterr().err


class XorPatch:
    """A toy delta format (new = old XOR patch), enough to drive the seam."""

    def __init__(self, old: targets.ImageReader, out: targets.ImageWriter) -> None:
        self.old, self.out, self.offset = old, out, 0

    def write(self, data: memoryview | bytes) -> None:
        base = self.old.read_at(self.offset, len(data))
        self.out.write(bytes(a ^ b for a, b in zip(base, data, strict=True)))
        self.offset += len(data)

    def finish(self) -> None:
        self.out.finish()


@pytest.fixture(name="xor_delta")
def xor_delta_fixture() -> Iterator[None]:
    targets.register_delta_applier(XorPatch)
    yield
    targets.register_delta_applier(None)


def test_delta_is_used_only_when_an_applier_is_built_in(
    server: EmbeddedServer, admin: AdminClient, device: Path, tmp_path: Path
) -> None:
    patch = write(tmp_path / "patch", bytes(a ^ b for a, b in zip(OLD, NEW, strict=True)))
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), deltas={"1.0": patch})
    client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
    result = run_update(client, targets.open_target(f"file:{device}"))
    assert result.offer is not None
    assert not result.offer.is_diff  # no engine: full image
    assert device.read_bytes() == NEW


@pytest.mark.usefixtures("xor_delta")
def test_delta_through_the_seam_is_verified_against_the_new_image(
    server: EmbeddedServer, admin: AdminClient, device: Path, tmp_path: Path
) -> None:
    patch = write(tmp_path / "patch", bytes(a ^ b for a, b in zip(OLD, NEW, strict=True)))
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), deltas={"1.0": patch})
    client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
    result = run_update(client, targets.open_target(f"file:{device}"))
    assert result.offer is not None
    assert result.offer.is_diff
    assert device.read_bytes() == NEW
    # The same patch on the wrong old image passes the download check but not the
    # read-back of the result: -3, and the device keeps what it had.
    wrong = bytearray(OLD)
    wrong[5] ^= 1
    device.write_bytes(wrong)
    steps: list[int] = []
    client = OtaClient(HttpChannel(server.url, "pk", "SN2"), version="1.0")
    with pytest.raises(Exception, match="reads back"):
        run_update(
            client, targets.open_target(f"file:{device}"), on_step=lambda s, _d: steps.append(s)
        )
    assert steps[-1] == -3
    assert device.read_bytes() == bytes(wrong)


def test_serve_publish_packages_check_from_the_command_line(tmp_path: Path) -> None:
    env_token = "t0ken"
    with ServerProcess(tmp_path / "data", admin_token=env_token) as server:
        fw = write(tmp_path / "fw.bin", NEW)

        def cli(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "otaflash", *argv],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={"OTAFLASH_SERVER": server.url, "OTAFLASH_ADMIN_TOKEN": env_token,
                     "PATH": "/usr/bin:/bin"},
            )  # fmt: skip

        done = cli("publish", "--json", "pk", "2", str(fw), "--forced", "--test-sn", "SN7")
        assert done.returncode == 0, done.stderr
        package = json.loads(done.stdout)
        assert package["scope"] == "test"
        assert package["serials"] == ["SN7"]
        check = cli("check", "--json", "--product", "pk", "--device", "SN7", "--current", "1")
        assert json.loads(check.stdout)["update"]["version"] == "2"
        check = cli("check", "--json", "--product", "pk", "--device", "SN8", "--current", "1")
        assert json.loads(check.stdout)["update"] is None
        listed = cli("packages", "list")
        assert listed.returncode == 0
        assert "\t2\ttest\tforced\t100%\tenabled" in listed.stdout
        assert cli("packages", "disable", str(package["id"])).returncode == 0
        check = cli("check", "--json", "--product", "pk", "--device", "SN7", "--current", "1")
        assert json.loads(check.stdout)["update"] is None
        assert cli("packages", "delete", str(package["id"])).returncode == 0
        assert cli("packages", "list").stdout == ""
        wrong = subprocess.run(
            [sys.executable, "-m", "otaflash", "packages", "list", "--server", server.url,
             "--token", "wrong"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert wrong.returncode == 9
        assert "admin token" in wrong.stderr
        assert "Traceback" not in wrong.stderr


def test_server_makes_deltas_on_publish_through_the_engine_hook(
    server: EmbeddedServer, admin: AdminClient, device: Path, tmp_path: Path
) -> None:
    from otaflash.server.service import register_delta_maker

    with pytest.raises(RuleError, match="delta engine is not built in"):
        admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), make_deltas_from=["1.0"])

    def xor_maker(old: Path, new: Path, out: Path) -> None:
        out.write_bytes(
            bytes(a ^ b for a, b in zip(old.read_bytes(), new.read_bytes(), strict=True))
        )

    register_delta_maker(xor_maker)
    targets.register_delta_applier(XorPatch)
    try:
        admin.publish("pk", "1.0", write(tmp_path / "old", OLD))
        with pytest.raises(RuleError, match="no package of that version"):
            admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), make_deltas_from=["0.5"])
        package = admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), make_deltas_from=["1.0"])
        assert [d["fromVersion"] for d in package["deltas"]] == ["1.0"]
        client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
        result = run_update(client, targets.open_target(f"file:{device}"))
        assert result.offer is not None
        assert result.offer.is_diff
        assert device.read_bytes() == NEW
    finally:
        register_delta_maker(None)
        targets.register_delta_applier(None)


@pytest.mark.parametrize("answer", ["y", "n"])
def test_optional_update_asks_on_a_terminal(
    server: EmbeddedServer, admin: AdminClient, device: Path, tmp_path: Path, answer: str
) -> None:
    import os

    installed = answer == "y"
    admin.publish("pk", "1.1", write(tmp_path / "fw", NEW), title="Optional fix")
    primary, secondary = os.openpty()
    try:
        os.write(primary, f"{answer}\n".encode())
        done = subprocess.run(
            [sys.executable, "-m", "otaflash", "update", "--json", "--server", server.url,
             "--product", "pk", "--device", "SN1", "--current", "1.0",
             "--target", f"file:{device}"],
            stdin=secondary, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(primary)
        os.close(secondary)
    assert done.returncode == 0, done.stderr
    assert "install it now? [y/N]" in done.stderr
    assert "Optional fix" in done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == ("updated" if installed else "declined")
    assert device.read_bytes() == (NEW if installed else OLD)
