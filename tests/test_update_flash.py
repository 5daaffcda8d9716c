"""The update flow into simulated flash: A/B with deltas streamed from the
active slot, in place with a staged image, and failures that leave the
running image booting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from otaflash import flash, targets
from otaflash.admin import AdminClient
from otaflash.client import HttpChannel, OtaClient
from otaflash.errors import VerifyError, WrongOldImageError
from otaflash.server import EmbeddedServer
from otaflash.update import run_update

from .servicekit import admin_fixture, image, server_fixture, write  # noqa: F401

V1 = image(400_000, 31)
V2 = V1[:150_000] + image(3000, 32) + V1[150_000:390_000] + image(20_000, 33)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def provision(uri: str, image_path: Path) -> None:
    """A device as it leaves the factory: v1 in slot A/B, booted and confirmed."""
    with flash.open_target(uri) as target:
        target.write(image_path, layout="ab")
        target.boot()
        target.confirm()


def running_image(uri: str) -> tuple[int, str]:
    """Boots the device (the hook a restart runs) and returns what its slot holds."""
    with flash.open_target(uri) as target:
        booted = target.boot()
        assert booted.image is not None
        return booted.image["size"], booted.image["sha256"]


@pytest.fixture(name="device_uri")
def device_uri_fixture(tmp_path: Path) -> str:
    uri = f"sim:{tmp_path}/dev.sim?kind=nand&size=4M&erase=128K&page=2048&bad=5"
    provision(uri, write(tmp_path / "v1.bin", V1))
    return uri


def test_a_delta_streams_into_the_inactive_slot_and_boots_on_trial(
    server: EmbeddedServer, admin: AdminClient, device_uri: str, tmp_path: Path
) -> None:
    admin.publish("pk", "1.0", write(tmp_path / "v1.bin", V1))
    admin.publish("pk", "2.0", write(tmp_path / "v2.bin", V2), make_deltas_from=["1.0"])
    steps: list[int] = []
    client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
    result = run_update(
        client, targets.open_target(device_uri), on_step=lambda s, _d: steps.append(s)
    )
    assert result.offer is not None
    assert result.offer.is_diff
    assert result.download is not None
    assert result.download.size < len(V2) // 4
    assert steps.count(100) == 1
    assert steps[-1] == 100
    with flash.open_target(device_uri) as target:
        state = target.info().slots
        assert state is not None
        assert state.phase == "trial"
    assert running_image(device_uri) == (len(V2), sha(V2))
    with flash.open_target(device_uri) as target:
        assert target.confirm() is not None
    assert server.service.store.device_version("pk", "SN1", "default") == "2.0"


def test_a_failed_download_leaves_the_running_slot_booting(
    server: EmbeddedServer, admin: AdminClient, device_uri: str, tmp_path: Path
) -> None:
    # A full image whose published digest does not match what is served.
    admin.publish("pk", "2.0", write(tmp_path / "v2.bin", V2))
    blob = next((tmp_path / "server").rglob(sha(V2)))
    blob.write_bytes(V2[:-1] + bytes([V2[-1] ^ 1]))
    steps: list[int] = []
    client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
    with pytest.raises(VerifyError):
        run_update(client, targets.open_target(device_uri), on_step=lambda s, _d: steps.append(s))
    assert steps[-1] == -3
    assert running_image(device_uri) == (len(V1), sha(V1))


def test_a_delta_for_another_image_never_touches_the_device(
    server: EmbeddedServer, admin: AdminClient, device_uri: str, tmp_path: Path
) -> None:
    other = image(400_000, 99)
    admin.publish("pk", "1.0", write(tmp_path / "other.bin", other))
    admin.publish("pk", "2.0", write(tmp_path / "v2.bin", V2), make_deltas_from=["1.0"])
    client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="1.0")
    with pytest.raises(WrongOldImageError):
        run_update(client, targets.open_target(device_uri))
    assert running_image(device_uri) == (len(V1), sha(V1))


def test_in_place_layout_installs_a_staged_full_image(
    server: EmbeddedServer, admin: AdminClient, tmp_path: Path
) -> None:
    uri = f"sim:{tmp_path}/single.sim?kind=nor&size=2M&erase=64K"
    with flash.open_target(uri) as target:
        target.write(write(tmp_path / "v1.bin", V1), layout="inplace")
    admin.publish("pk", "2.0", write(tmp_path / "v2.bin", V2))
    client = OtaClient(HttpChannel(server.url, "pk", "SN9"), version="1.0")
    target = targets.open_target(uri, layout="inplace")
    assert not target.accepts_delta
    result = run_update(client, target)
    assert result.offer is not None
    assert not result.offer.is_diff
    with flash.open_target(uri) as device:
        state = device.info().slots
        assert state is not None
        assert state.layout == "inplace"
        assert state.slots[0]["image"] == {"size": len(V2), "sha256": sha(V2)}
        assert device.read(state.slots[0]["offset"], len(V2)) == V2
