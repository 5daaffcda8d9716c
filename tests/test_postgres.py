"""The same server on PostgreSQL instead of SQLite: one set of statements."""

from __future__ import annotations

from pathlib import Path

from otaflash.admin import AdminClient
from otaflash.client import HttpChannel, OtaClient
from otaflash.server import EmbeddedServer

from .servicekit import Postgres, image, write


def test_rules_publishing_and_progress_on_postgresql(tmp_path: Path) -> None:
    postgres = Postgres()
    try:
        options = {"database": postgres.url, "admin_token": "secret"}
        with EmbeddedServer(tmp_path / "server", **options) as server:
            admin = AdminClient(server.url, "secret")
            patch = write(tmp_path / "patch", image(100, 1))
            admin.publish("pk", "10", write(tmp_path / "fw", image(5000, 2)), deltas={"9": patch})
            admin.publish("pk", "11", write(tmp_path / "fw2", image(5000, 3)), test_serials=["T1"])
            client = OtaClient(HttpChannel(server.url, "pk", "SN1"), version="9")
            offer = client.query_update()
            assert offer is not None
            assert (offer.version, offer.is_diff, offer.size) == ("10", True, 100)
            tester = OtaClient(HttpChannel(server.url, "pk", "T1"), version="9")
            offer = tester.query_update()
            assert offer is not None
            assert offer.version == "11"
            client.inform()
            client.report_progress(100, "done")
            packages = admin.packages("pk")
            admin.delete(packages[0]["id"])
            state = admin.device("pk", "SN1")
        # A restart on the same database keeps it all.
        with EmbeddedServer(tmp_path / "server2", **options) as server:
            admin = AdminClient(server.url, "secret")
            assert [p["version"] for p in admin.packages()] == ["11"]
            assert admin.device("pk", "SN1") == state
            assert state["progress"][0]["step"] == 100
    finally:
        postgres.stop()
