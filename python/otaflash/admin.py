"""Publishing to an otaflash update server from Python (what ``otaflash publish`` uses).

>>> admin = AdminClient("http://127.0.0.1:8080", token)           # doctest: +SKIP
>>> admin.publish("pk", "2.0.0", "fw-2.0.0.bin",                   # doctest: +SKIP
...               deltas={"1.0.0": "1.0.0-to-2.0.0.patch"}, forced=True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

from otaflash.download import network_reason
from otaflash.errors import FileError, MissingFileError, RuleError

__all__ = ["AdminClient"]


class AdminClient:
    def __init__(self, server_url: str, token: str, *, timeout: float = 300.0) -> None:
        if not server_url.startswith(("http://", "https://")):
            raise RuleError(f"invalid server URL {server_url!r}: use http://HOST:PORT")
        if not token:
            failure = RuleError("no admin token given")
            failure.hint = "pass --token or set OTAFLASH_ADMIN_TOKEN"
            raise failure
        self.base = server_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._http = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(connect=10.0, read=timeout)
        )

    def _call(self, method: str, path: str, *, json_body: Any = None, **kwargs: Any) -> Any:
        headers = dict(self._auth)
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            kwargs["body"] = json.dumps(json_body).encode()
        headers.update(kwargs.pop("headers", {}))
        try:
            response = self._http.request(method, self.base + path, headers=headers, **kwargs)
        except urllib3.exceptions.HTTPError as error:
            failure = RuleError(
                f"cannot reach the update server at {self.base}: {network_reason(error)}"
            )
            failure.hint = "check the URL and that `otaflash serve` is running"
            raise failure from None
        if response.status >= 400:
            try:
                answer = json.loads(response.data)
                message, hint = answer.get("error"), answer.get("hint")
            except (ValueError, AttributeError):
                message, hint = response.reason, None
            failure = RuleError(f"the server refused ({response.status}): {message}")
            failure.hint = hint
            failure.status = response.status  # type: ignore[attr-defined]
            raise failure
        return json.loads(response.data) if response.data else None

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Streams a file to the server; returns ``{"sha256", "md5", "size"}``."""
        file_path = Path(path)
        try:
            size = file_path.stat().st_size
            handle = open(file_path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise MissingFileError(2, f"{file_path}: no such file", str(file_path)) from None
        except OSError as error:
            raise FileError(error.errno, f"{file_path}: {error.strerror}", str(file_path)) from None
        with handle:
            result: dict[str, Any] = self._call(
                "POST",
                "/api/v1/uploads",
                body=handle,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
            )
        return result

    def publish(
        self,
        product_key: str,
        version: str,
        image: str | os.PathLike[str],
        *,
        module: str = "default",
        deltas: Mapping[str, str | os.PathLike[str]] | None = None,
        make_deltas_from: Sequence[str] = (),
        forced: bool = False,
        test_serials: Sequence[str] = (),
        title: str = "",
        description: str = "",
        rollout: int = 100,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Uploads the image (and deltas, ``{from_version: patch file}``) and publishes.

        ``test_serials`` makes it a test package for those devices only; without
        them it is formal (every device)."""
        full = self.upload(image)
        uploaded = [
            {
                "fromVersion": source,
                "sha256": self.upload(patch)["sha256"],
                "name": _safe_name(patch),
            }
            for source, patch in (deltas or {}).items()
        ]
        body = {
            "productKey": product_key,
            "module": module,
            "version": version,
            "sha256": full["sha256"],
            "name": _safe_name(image),
            "deltas": uploaded,
            "makeDeltasFrom": list(make_deltas_from),
            "forced": forced,
            "scope": "test" if test_serials else "formal",
            "serials": list(test_serials),
            "title": title,
            "description": description,
            "rollout": rollout,
            "enabled": enabled,
        }
        result: dict[str, Any] = self._call("POST", "/api/v1/packages", json_body=body)
        return result

    def packages(self, product_key: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urlencode({"product": product_key}) if product_key else ""
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/packages" + query)["packages"]
        return result

    def set_enabled(self, package_id: int, enabled: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH", f"/api/v1/packages/{int(package_id)}", json_body={"enabled": enabled}
        )
        return result

    def delete(self, package_id: int) -> None:
        self._call("DELETE", f"/api/v1/packages/{int(package_id)}")

    def device(self, product_key: str, device_name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/devices/{product_key}/{device_name}")
        return result

    def notify(
        self,
        product_key: str,
        device_name: str,
        *,
        source: str = "push",
        module: str = "default",
        version: str | None = None,
    ) -> dict[str, Any]:
        """Server push (``source="push"``, from 2) or app trigger (``"trigger"``, from 1).

        Returns the offer sent to the device."""
        if source not in {"push", "trigger"}:
            raise ValueError(f"source must be push or trigger, not {source!r}")
        result: dict[str, Any] = self._call(
            "POST",
            f"/api/v1/devices/{product_key}/{device_name}/{source}",
            json_body={"module": module, "version": version},
        )["sent"]
        return result


def _safe_name(path: str | os.PathLike[str]) -> str:
    # The server accepts [A-Za-z0-9_.+-]; other characters become "_".
    name = Path(path).name[:128] or "image.bin"
    return "".join(c if c.isascii() and (c.isalnum() or c in "_.+-") else "_" for c in name)
