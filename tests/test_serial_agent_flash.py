"""`otaflash agent` on a flash target: a simulated NOR flash with the A/B layout.

The agent and the host talk over ptys joined by the link emulator. A new
image (or the image a delta rebuilds from the active slot) goes to the
inactive slot and becomes a trial boot of it; `otaflash slot boot` and
`confirm` then run it as on any A/B device. A cut transfer leaves the active
slot bootable, and a rerun, even by a restarted agent, continues after the
erase blocks the flash's state record says were written.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from otaflash import errors, flash
from otaflash.serial import protocol
from otaflash.sim.link import Faults, LinkEmulator
from tests.conftest import run_otaflash
from tests.serial_helpers import Background, Thread, otaflash_argv
from tests.test_serial_agent import firmware, make_patch, next_version

ERASE = 4096


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sim:{tmp_path}/device.sim?kind=nor&size=1M&erase=4k"


def slot_cli(action: str, uri: str) -> dict[str, Any]:
    done = run_otaflash(["slot", action, "--target", uri, "--json"])
    assert done.returncode == 0, done.stderr.decode()
    record: dict[str, Any] = json.loads(done.stdout)
    return record


def slot_image(uri: str, slot: int) -> bytes:
    """What the slot holds, as long as its record says."""
    with flash.open_target(uri) as target:
        state = target.info().slots
        assert state is not None
        entry = state.slots[slot]
        assert entry["image"] is not None, state
        return target.read(entry["offset"], entry["image"]["size"])


def agent_cli(port: str, uri: str) -> Background:
    return Background(
        otaflash_argv(
            "agent", "--port", port, "--target", uri, "--baud", "921600", "--once", "--json"
        )
    )


def flash_cli(port: str, *args: str) -> dict[str, Any]:
    done = run_otaflash(
        ["flash", "--port", port, "--baud", "921600", "--agent-baud", "921600", "--json", *args]
    )
    assert done.returncode == 0, done.stderr.decode()
    record: dict[str, Any] = json.loads(done.stdout)
    return record


def test_an_image_then_a_delta_go_to_the_inactive_slot_and_boot_on_trial(
    tmp_path: Path, uri: str
) -> None:
    v1, v2, patch = tmp_path / "v1.bin", tmp_path / "v2.bin", tmp_path / "v1-v2.patch"
    v1.write_bytes(firmware(150_000, 31))
    v2.write_bytes(next_version(v1.read_bytes(), 32))
    make_patch(v1, v2, patch)
    with LinkEmulator(921_600, latency=0.002) as link:
        # A blank device has no image for a patch to apply to: it says so.
        agent = agent_cli(link.device_port, uri)
        early = run_otaflash(
            ["flash", "--port", link.host_port, "--baud", "921600", "--agent-baud", "921600",
             "--delta", str(patch)]
        )  # fmt: skip
        assert early.returncode != 0
        assert b"full image first" in early.stderr, early.stderr
        agent.stop()

        agent = agent_cli(link.device_port, uri)
        record = flash_cli(link.host_port, str(v1))
        code, out, err = agent.wait(30)
        assert code == 0, err
        assert record["verified"] is True
        assert record["target"].endswith("(A/B slots)"), record
        assert json.loads(out)["verified"] is True
        booted = slot_cli("boot", uri)
        assert (booted["action"], booted["boot_slot"]) == ("trial", 1)
        assert slot_cli("confirm", uri)["confirmed"] == 1
        assert slot_image(uri, 1) == v1.read_bytes()

        # The delta reads v1 from the active slot (B) and rebuilds v2 into A.
        agent = agent_cli(link.device_port, uri)
        record = flash_cli(link.host_port, "--delta", str(patch))
        code, _, err = agent.wait(30)
        assert code == 0, err
        assert record["delta"] is True
        assert record["stream_size"] == patch.stat().st_size
        assert record["sha256"] == hashlib.sha256(v2.read_bytes()).hexdigest()
    booted = slot_cli("boot", uri)
    assert (booted["action"], booted["boot_slot"]) == ("trial", 0)
    assert booted["image"]["sha256"] == record["sha256"]
    assert slot_cli("confirm", uri)["confirmed"] == 0
    assert slot_image(uri, 0) == v2.read_bytes()
    assert slot_image(uri, 1) == v1.read_bytes(), "the previous image stays for a roll back"
    with flash.open_target(uri) as target:
        state = target.info().slots
    assert state is not None
    assert (state.phase, state.active) == ("idle", 0)


def agent_thread(port: str, uri: str) -> Thread:
    def run(stop: threading.Event) -> None:
        protocol.serve_agent(port, uri, baud=921_600, checkpoint_every=8 * 1024, stop=stop)

    return Thread(run)


@pytest.mark.parametrize("cut_at_frame", [3, 40, 110])
def test_a_cut_transfer_leaves_the_active_slot_bootable_and_a_restarted_agent_resumes(
    cut_at_frame: int, tmp_path: Path, uri: str
) -> None:
    v1, v2 = firmware(60_000, 41), firmware(150_000, 42)
    with LinkEmulator(921_600, latency=0.002) as link:
        agent = agent_thread(link.device_port, uri)
        try:
            image = tmp_path / "v1.bin"
            image.write_bytes(v1)
            protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
        finally:
            assert agent.stop() is None
    slot_cli("boot", uri)
    assert slot_cli("confirm", uri)["confirmed"] == 1

    image = tmp_path / "v2.bin"
    image.write_bytes(v2)
    faults = Faults(disconnect_at_frame=cut_at_frame)
    with LinkEmulator(921_600, latency=0.002, faults=faults) as link:
        agent = agent_thread(link.device_port, uri)
        try:
            with pytest.raises(errors.TransportError):
                protocol.send(
                    link.host_port, image, baud=921_600, agent_baud=921_600, compress=False,
                    timeout=1.5,
                )  # fmt: skip
            sent = link.stats.to_device
        finally:
            assert agent.stop() is None  # the device reboots

    # The boot hook runs the intact slot; the record keeps the resume point.
    booted = slot_cli("boot", uri)
    assert (booted["action"], booted["boot_slot"]) == ("resume", 1), booted
    assert booted["image"]["sha256"] == hashlib.sha256(v1).hexdigest()
    assert slot_image(uri, 1) == v1

    with LinkEmulator(921_600, latency=0.002) as link:
        agent = agent_thread(link.device_port, uri)
        try:
            result = protocol.send(
                link.host_port, image, baud=921_600, agent_baud=921_600, compress=False
            )
        finally:
            assert agent.stop() is None
    resumed = result.details["resumed_from"]
    assert resumed % ERASE == 0, resumed
    assert resumed < sent, (resumed, sent)
    if cut_at_frame >= 40:
        assert resumed >= 8 * 1024, "a cut after a checkpoint must resume, not restart"
    booted = slot_cli("boot", uri)
    assert (booted["action"], booted["boot_slot"]) == ("trial", 0)
    assert slot_cli("confirm", uri)["confirmed"] == 0
    assert slot_image(uri, 0) == v2


def test_a_trial_must_be_settled_before_the_next_image(tmp_path: Path, uri: str) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(firmware(30_000, 51))
    with LinkEmulator(921_600, latency=0.002) as link:
        agent = agent_thread(link.device_port, uri)
        try:
            protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
            # The same image again (a host that missed the end): done at once.
            again = protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
            assert again.details["resumed_from"] == image.stat().st_size
            image.write_bytes(firmware(30_000, 52))
            with pytest.raises(errors.FlashError, match="on trial"):
                protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
        finally:
            assert agent.stop() is None
