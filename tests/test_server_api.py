"""The update server's HTTP API: rules, publishing, bad input, restarts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import urllib3

from otaflash.admin import AdminClient
from otaflash.client import HttpChannel, OtaClient
from otaflash.errors import RuleError
from otaflash.server import EmbeddedServer, ServerProcess

from .servicekit import admin_fixture, image, server_fixture, write  # noqa: F401

http = urllib3.PoolManager(retries=False)


def query(server: EmbeddedServer, pk: str, sn: str, version: str, **params: Any) -> Any:
    response = http.request(
        "GET",
        f"{server.url}/api/v1/devices/{pk}/{sn}/update",
        fields={"version": version, **params},
    )
    assert response.status == 200, response.data
    return json.loads(response.data)["update"]


def publish(admin: AdminClient, tmp_path: Path, version: str, **options: Any) -> dict[str, Any]:
    product = options.pop("product", "pk1")
    data = options.pop("data", None) or image(4096, hash(version) & 0xFFFF)
    path = write(tmp_path / f"fw-{version}.bin", data)
    return admin.publish(product, version, path, **options)


def test_publish_computes_size_md5_sha256_and_the_device_gets_it(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    data = image(100_000, 1)
    package = publish(admin, tmp_path, "1.2.0", data=data, title="Fix", description="notes")
    assert package["full"]["size"] == 100_000
    assert package["full"]["md5"] == hashlib.md5(data).hexdigest()
    assert package["full"]["sha256"] == hashlib.sha256(data).hexdigest()
    offer = query(server, "pk1", "SN1", "1.1.9")
    assert offer["version"] == "1.2.0"
    assert (offer["md5"], offer["sha256"], offer["size"]) == (
        hashlib.md5(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
        100_000,
    )
    assert offer["signMethod"] == "SHA256"
    assert offer["sign"] == offer["sha256"]
    assert offer["from"] == 3
    assert offer["forced"] is False
    assert (offer["title"], offer["desc"]) == ("Fix", "notes")
    assert "isDiff" not in offer
    assert http.request("GET", offer["url"]).data == data
    ranged = http.request("GET", offer["url"], headers={"Range": "bytes=99990-"})
    assert ranged.status == 206
    assert ranged.data == data[99990:]
    assert ranged.headers["Content-Range"] == "bytes 99990-99999/100000"
    assert query(server, "pk1", "SN1", "1.2.0") is None
    assert query(server, "pk1", "SN1", "1.3") is None


def test_integer_and_dotted_versions_compare_as_numbers(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    publish(admin, tmp_path, "10", product="tencent")
    assert query(server, "tencent", "SN", "9")["version"] == "10"
    assert query(server, "tencent", "SN", "10") is None
    assert query(server, "tencent", "SN", "11") is None
    publish(admin, tmp_path, "1.10.0", product="ali")
    assert query(server, "ali", "SN", "1.9.9")["version"] == "1.10.0"
    assert query(server, "ali", "SN", "1.10") is None
    assert query(server, "ali", "SN", "1.10.1") is None


def test_test_package_reaches_only_listed_serials(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    publish(admin, tmp_path, "2.0", title="formal")
    publish(admin, tmp_path, "2.1", title="beta", test_serials=["SN-T1", "SN-T2"])
    assert query(server, "pk1", "SN-T1", "1.0")["version"] == "2.1"
    assert query(server, "pk1", "SN-T2", "1.0")["title"] == "beta"
    assert query(server, "pk1", "SN-OTHER", "1.0")["version"] == "2.0"
    # A tester on the formal version still gets the test build; others nothing more.
    assert query(server, "pk1", "SN-T1", "2.0")["version"] == "2.1"
    assert query(server, "pk1", "SN-OTHER", "2.0") is None


def test_forced_flag_and_module_travel_with_the_offer(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    publish(admin, tmp_path, "3", forced=True, module="mcu")
    assert query(server, "pk1", "SN", "2") is None  # default module has nothing
    offer = query(server, "pk1", "SN", "2", module="mcu")
    assert offer["forced"] is True
    assert offer["module"] == "mcu"


def test_delta_only_from_the_exact_current_version(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    full = image(50_000, 2)
    patch = write(tmp_path / "1.0-to-2.0.patch", image(3000, 3))
    publish(admin, tmp_path, "2.0", data=full, deltas={"1.0": patch})
    delta = query(server, "pk1", "SN", "1.0")
    assert delta["isDiff"] == 1
    assert delta["fromVersion"] == "1.0"
    assert delta["size"] == 3000
    assert delta["sha256"] == hashlib.sha256(patch.read_bytes()).hexdigest()
    assert delta["imageSize"] == 50_000
    assert delta["imageSha256"] == hashlib.sha256(full).hexdigest()
    for other in ("1.0.1", "0.9", "1"):
        offer = query(server, "pk1", "SN", other)
        assert "isDiff" not in offer, other
        assert offer["size"] == 50_000, other
    assert "isDiff" not in query(server, "pk1", "SN", "1.0", delta="false")


def test_rollout_admits_a_stable_share(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    package = publish(admin, tmp_path, "5", rollout=30)
    admitted = {sn for sn in (f"SN{i}" for i in range(400)) if query(server, "pk1", sn, "4")}
    assert 80 <= len(admitted) <= 160
    assert admitted == {
        sn for sn in (f"SN{i}" for i in range(400)) if query(server, "pk1", sn, "4")
    }
    admin.set_enabled(package["id"], False)
    assert all(query(server, "pk1", f"SN{i}", "4") is None for i in range(20))


def test_list_disable_enable_delete(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    first = publish(admin, tmp_path, "1.1")
    second = publish(admin, tmp_path, "1.2", product="pk2")
    assert [p["id"] for p in admin.packages()] == [first["id"], second["id"]]
    assert [p["version"] for p in admin.packages("pk2")] == ["1.2"]
    admin.set_enabled(first["id"], False)
    assert query(server, "pk1", "SN", "1.0") is None
    admin.set_enabled(first["id"], True)
    assert query(server, "pk1", "SN", "1.0")["version"] == "1.1"
    blob = Path(server.config.data_dir / "artifacts" / first["full"]["sha256"])
    assert blob.exists()
    admin.delete(first["id"])
    assert not blob.exists()
    assert query(server, "pk1", "SN", "1.0") is None
    with pytest.raises(RuleError, match=r"404.*no package"):
        admin.delete(first["id"])


def test_inform_and_progress_are_recorded(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    publish(admin, tmp_path, "2")
    client = OtaClient(HttpChannel(server.url, "pk1", "SN9"), version="1")
    client.inform()
    for step in (1, 50, -2):
        client.report_progress(step, f"step {step}")
    state = admin.device("pk1", "SN9")
    assert state["modules"][0]["version"] == "1"
    assert [p["step"] for p in state["progress"]] == [1, 50, -2]


def bad(server: EmbeddedServer, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    response = http.request(method, server.url + path, **kwargs)
    assert 400 <= response.status < 500, (response.status, response.data)
    body = json.loads(response.data)
    assert body["error"], body
    return response.status, body["error"]


def db_snapshot(server: EmbeddedServer) -> list[Any]:
    with sqlite3.connect(server.config.data_dir / "otaflash.db") as db:
        return [
            db.execute(f"SELECT * FROM {t}").fetchall()
            for t in ("products", "blobs", "packages", "artifacts", "devices", "progress")
        ]


def test_bad_input_gets_a_clear_4xx_and_leaves_the_database_intact(
    admin: AdminClient, server: EmbeddedServer, tmp_path: Path
) -> None:
    package = publish(admin, tmp_path, "1.0")
    before = db_snapshot(server)
    auth = {"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/json"}
    good = {"productKey": "pk1", "version": "9", "sha256": package["full"]["sha256"]}

    status, message = bad(server, "POST", "/api/v1/packages", body=b"{not json", headers=auth)
    assert status == 400
    assert "JSON" in message
    status, message = bad(
        server, "POST", "/api/v1/packages", body=json.dumps(good).encode(), headers={}
    )
    assert status == 401
    assert "admin token" in message
    wrong = {**auth, "Authorization": "Bearer nope"}
    assert bad(server, "POST", "/api/v1/uploads", body=b"x", headers=wrong)[0] == 401
    assert bad(server, "GET", "/api/v1/packages", headers=wrong)[0] == 401
    status, message = bad(server, "GET", "/api/v1/devices/nope/SN/update?version=1")
    assert status == 404
    assert "unknown product key 'nope'" in message
    for field, value in (
        ("productKey", "../../etc"),
        ("module", "a/b"),
        ("version", "1.0/../../x"),
        ("productKey", "x" * 65),
        ("version", ""),
    ):
        body = json.dumps({**good, field: value}).encode()
        status, message = bad(server, "POST", "/api/v1/packages", body=body, headers=auth)
        assert status == 400, message
        assert field in message, message
    body = json.dumps({**good, "name": "../../evil.bin"}).encode()
    assert bad(server, "POST", "/api/v1/packages", body=body, headers=auth)[0] == 400
    body = json.dumps({**good, "sha256": "0" * 64}).encode()
    status, message = bad(server, "POST", "/api/v1/packages", body=body, headers=auth)
    assert status == 404
    assert "SHA-256" in message
    body = json.dumps({**good, "version": "1.0"}).encode()
    status, message = bad(server, "POST", "/api/v1/packages", body=body, headers=auth)
    assert status == 409
    assert "already published" in message
    body = json.dumps({**good, "scope": "test"}).encode()
    assert "serial numbers" in bad(server, "POST", "/api/v1/packages", body=body, headers=auth)[1]
    body = json.dumps({**good, "rollout": 101}).encode()
    assert "rollout" in bad(server, "POST", "/api/v1/packages", body=body, headers=auth)[1]
    status, message = bad(server, "GET", "/api/v1/devices/pk1/..%2F..%2Fetc/update?version=1")
    assert status in (400, 404)
    status, message = bad(server, "GET", "/artifacts/..%2F..%2Fotaflash.db")
    assert status in (400, 404)
    assert bad(server, "GET", "/api/v1/devices/pk1/SN/update")[1].startswith("invalid request")
    status, message = bad(
        server,
        "POST",
        "/api/v1/devices/pk1/SN/progress",
        body=b'{"step":"7000"}',
        headers={"Content-Type": "application/json"},
    )
    assert "progress step 7000" in message
    # 8 MiB limit in this fixture: refused from the Content-Length, before reading it.
    status, message = bad(server, "POST", "/api/v1/uploads", body=b"\0" * (9 << 20), headers=auth)
    assert status == 413
    assert "limit" in message
    # Without a Content-Length (chunked), the limit cuts the upload as it streams in.
    chunks = (b"\0" * (1 << 20) for _ in range(9))
    response = http.request(
        "POST", server.url + "/api/v1/uploads", body=chunks, headers=auth, chunked=True
    )
    assert response.status == 413
    assert "limit" in json.loads(response.data)["error"]
    assert db_snapshot(server) == before
    assert not [
        p for p in (server.config.data_dir / "artifacts").iterdir() if p.name.startswith(".upload-")
    ]


def test_openapi_documents_the_device_and_admin_api(server: EmbeddedServer) -> None:
    spec = json.loads(http.request("GET", server.url + "/openapi.json").data)
    paths = spec["paths"]
    for path in (
        "/api/v1/devices/{pk}/{dn}/update",
        "/api/v1/devices/{pk}/{dn}/inform",
        "/api/v1/devices/{pk}/{dn}/progress",
        "/api/v1/devices/{pk}/{dn}/push",
        "/api/v1/devices/{pk}/{dn}/trigger",
        "/api/v1/packages",
        "/api/v1/uploads",
        "/artifacts/{sha256}",
    ):
        assert path in paths, path
    assert "signature" in json.dumps(spec["components"]["schemas"]["PublishIn"])


def test_restart_keeps_packages_devices_and_progress(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data = image(200_000, 11)
    with ServerProcess(data_dir) as server:
        admin = AdminClient(server.url, server.admin_token)
        admin.publish("pk1", "2", write(tmp_path / "fw.bin", data), forced=True)
        client = OtaClient(HttpChannel(server.url, "pk1", "SN1"), version="1")
        client.inform()
        client.report_progress(42, "half way")
        server.stop(kill=True)  # SIGKILL: no clean shutdown
        server.start()
        offer = client.query_update()
        assert offer is not None
        assert offer.forced
        assert offer.size == 200_000
        assert http.request("GET", offer.url).data == data
        state = admin.device("pk1", "SN1")
        assert state["modules"][0]["version"] == "1"
        assert [(p["step"], p["desc"]) for p in state["progress"]] == [(42, "half way")]
