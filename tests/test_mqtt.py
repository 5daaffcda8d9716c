"""Alibaba IoT OTA over a real mosquitto broker: our server with an
Alibaba-protocol device, and our client with a broker-based cloud."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otaflash import targets
from otaflash.admin import AdminClient
from otaflash.client import MqttChannel, OtaClient
from otaflash.server import EmbeddedServer
from otaflash.update import run_update

from .servicekit import Broker, CuttingServer, Recorder, broker_fixture, image, write  # noqa: F401

PK, DN = "a1B2c3", "dev-001"


@pytest.fixture(name="bridged")
def bridged_fixture(broker: Broker, tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "server", mqtt=broker.url) as server:
        yield server


@pytest.fixture(name="device")
def device_fixture(broker: Broker) -> Iterator[Recorder]:
    """A device that speaks Alibaba's protocol with nothing but paho."""
    device = Recorder(
        broker.url,
        [f"/ota/device/upgrade/{PK}/{DN}", f"/sys/{PK}/{DN}/thing/ota/firmware/get_reply"],
        f"{PK}.{DN}",
    )
    yield device
    device.close()


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_alibaba_device_works_with_our_server(
    bridged: EmbeddedServer, device: Recorder, tmp_path: Path
) -> None:
    admin = AdminClient(bridged.url, bridged.admin_token)
    full = image(30_000, 4)
    patch = write(tmp_path / "p", image(2_000, 5))
    admin.publish(PK, "1.1.0", write(tmp_path / "fw", full), deltas={"1.0.0": patch})

    device.publish(f"/ota/device/inform/{PK}/{DN}", {"id": "1", "params": {"version": "1.0.0"}})
    assert wait_for(lambda: admin.device(PK, DN)["modules"])[0]["version"] == "1.0.0"

    get = {"id": "123", "version": "1.0", "params": {}, "method": "thing.ota.firmware.get"}
    device.publish(f"/sys/{PK}/{DN}/thing/ota/firmware/get", get)
    topic, reply = device.next()
    assert topic == f"/sys/{PK}/{DN}/thing/ota/firmware/get_reply"
    assert reply["id"] == "123"
    assert reply["code"] == 200  # the integer, in replies
    data = reply["data"]
    assert data["isDiff"] == 1
    assert data["version"] == "1.1.0"
    assert data["size"] == 2_000
    md5 = hashlib.md5(patch.read_bytes()).hexdigest()
    assert (data["signMethod"], data["sign"], data["md5"]) == ("Md5", md5, md5)
    assert "module" not in data  # omitted for the default module
    assert data["url"].startswith(bridged.url + "/artifacts/")

    # A device on another version gets the full image (no isDiff key at all).
    device.publish(f"/ota/device/inform/{PK}/{DN}", {"id": 2, "params": {"version": "0.9"}})
    assert wait_for(lambda: admin.device(PK, DN)["modules"][0]["version"] == "0.9")
    device.publish(f"/sys/{PK}/{DN}/thing/ota/firmware/get", {**get, "id": "124"})
    _, reply = device.next()
    assert "isDiff" not in reply["data"]
    assert reply["data"]["size"] == 30_000

    for step in ("1", "50", "-3"):
        device.publish(
            f"/ota/device/progress/{PK}/{DN}",
            {"id": "9", "params": {"step": step, "desc": f"at {step}"}},
        )
    assert wait_for(lambda: len(admin.device(PK, DN)["progress"]) == 3)
    assert [p["step"] for p in admin.device(PK, DN)["progress"]] == [1, 50, -3]

    sent = admin.notify(PK, DN, source="push")
    topic, push = device.next()
    assert topic == f"/ota/device/upgrade/{PK}/{DN}"
    assert push["code"] == "1000"
    assert push["message"] == "success"  # the string, in pushes
    assert isinstance(push["id"], str)
    assert push["data"]["from"] == 2
    assert push["data"]["version"] == sent["version"]
    admin.notify(PK, DN, source="trigger")
    assert device.next()[1]["data"]["from"] == 1

    # Up to date: an empty data object. Unknown product: an error code.
    device.publish(f"/ota/device/inform/{PK}/{DN}", {"id": "3", "params": {"version": "1.1.0"}})
    assert wait_for(lambda: admin.device(PK, DN)["modules"][0]["version"] == "1.1.0")
    device.publish(f"/sys/{PK}/{DN}/thing/ota/firmware/get", {**get, "id": "125"})
    assert device.next()[1] == {"id": "125", "code": 200, "data": {}}


def test_unknown_product_and_garbage_get_an_error_reply(
    bridged: EmbeddedServer, broker: Broker
) -> None:
    other = Recorder(broker.url, ["/sys/nope/d1/thing/ota/firmware/get_reply"], "nope.d1")
    try:
        other.publish(
            "/sys/nope/d1/thing/ota/firmware/get", {"id": "7", "params": {"version": "1"}}
        )
        _, reply = other.next()
        assert reply["code"] == 404
        assert "unknown product key" in reply["message"]
        other.publish("/sys/nope/d1/thing/ota/firmware/get", b"\xff not json")
        _, reply = other.next()
        assert reply["code"] == 400
        assert "not JSON" in reply["message"]
    finally:
        other.close()


def test_our_client_over_mqtt_hears_queries_pushes_and_app_triggers(
    bridged: EmbeddedServer, broker: Broker, tmp_path: Path
) -> None:
    admin = AdminClient(bridged.url, bridged.admin_token)
    data = image(20_000, 6)
    admin.publish(PK, "7", write(tmp_path / "fw", data), forced=True, title="T", description="D")
    results: queue.Queue[tuple[Any, ...]] = queue.Queue()
    channel = MqttChannel(broker.url, PK, DN)
    client = OtaClient(channel, version="6", on_ota_result=lambda *a: results.put(a))
    try:
        client.inform()
        offer = client.query_update()
        assert offer is not None
        assert offer.sign_method == "md5"
        expected_tail = ("T", "D", offer.url, hashlib.md5(data).hexdigest())
        assert results.get(timeout=5) == (3, True, "7", *expected_tail)
        admin.notify(PK, DN, source="push")
        assert results.get(timeout=5) == (2, True, "7", *expected_tail)
        admin.notify(PK, DN, source="trigger")
        assert results.get(timeout=5) == (1, True, "7", *expected_tail)
    finally:
        client.close()


def test_our_client_with_a_broker_based_cloud(broker: Broker, tmp_path: Path) -> None:
    """The cloud here is a plain MQTT peer answering with Alibaba's exact payloads
    (SDK spelling "Sha256", numeric id, no fields of ours); the update runs over it."""
    data = image(300_000, 8)
    files = CuttingServer(data)
    files.cuts = [123_457]
    cloud = Recorder(
        broker.url,
        [
            "/sys/+/+/thing/ota/firmware/get",
            "/ota/device/inform/+/+",
            "/ota/device/progress/+/+",
        ],
        "cloud",
    )
    target = write(tmp_path / "device.img", b"old image")
    client = OtaClient(MqttChannel(broker.url, PK, DN), version="1.0.0")
    try:
        client.inform()
        topic, inform = cloud.next()
        assert topic == f"/ota/device/inform/{PK}/{DN}"
        assert inform["params"] == {"version": "1.0.0"}
        assert isinstance(inform["id"], str)

        def answer() -> None:
            topic, get = cloud.next()
            assert topic == f"/sys/{PK}/{DN}/thing/ota/firmware/get"
            assert get["method"] == "thing.ota.firmware.get"
            assert get["version"] == "1.0"
            cloud.publish(
                f"/sys/{PK}/{DN}/thing/ota/firmware/get_reply",
                {
                    "id": int(get["id"]),
                    "code": 200,
                    "data": {
                        "size": len(data),
                        "version": "1.0.1",
                        "url": files.url,
                        "signMethod": "Sha256",
                        "sign": hashlib.sha256(data).hexdigest(),
                        "extData": {"key1": "value1"},
                    },
                },
            )

        responder = threading.Thread(target=answer)
        responder.start()
        result = run_update(client, targets.open_target(f"file:{target}"))
        responder.join()
        assert result.status == "updated"
        assert target.read_bytes() == data
        assert result.download is not None
        assert result.download.requests == 2
        steps, informed = [], None
        while informed is None:
            topic, message = cloud.next()
            if "/progress/" in topic:
                assert isinstance(message["params"]["step"], str)
                steps.append(int(message["params"]["step"]))
            elif "/inform/" in topic:
                informed = message["params"]["version"]
        assert steps == sorted(steps)
        assert steps[0] >= 1
        assert steps.count(100) == 1
        assert steps[-1] == 100
        assert informed == "1.0.1"
    finally:
        client.close()
        cloud.close()
        files.close()


def test_watch_cli_hears_schedule_push_and_trigger(
    bridged: EmbeddedServer, broker: Broker, tmp_path: Path
) -> None:
    admin = AdminClient(bridged.url, bridged.admin_token)
    admin.publish(PK, "3", write(tmp_path / "fw", image(1000, 9)))
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otaflash",
            "watch",
            "--json",
            "--server",
            bridged.url,
            "--mqtt",
            broker.url,
            "--product",
            PK,
            "--device",
            DN,
            "--current",
            "2",
            "--interval",
            "3600",
            "--count",
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = watch.stdout
    assert stdout is not None

    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with contextlib.suppress(ValueError, OSError):  # closed at the end of the test
            for line in stdout:
                lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def next_line() -> dict[str, Any]:
        return dict(json.loads(lines.get(timeout=30)))

    try:
        first = next_line()
        assert first["update"]["from"] == 0  # the scheduled check runs at once
        admin.notify(PK, DN, source="push", version="2")
        assert next_line()["update"]["from"] == 2
        admin.notify(PK, DN, source="trigger", version="2")
        assert next_line()["update"]["from"] == 1
        assert watch.wait(20) == 0
    finally:
        watch.kill()
        watch.wait()
        reader.join(10)
        stdout.close()
