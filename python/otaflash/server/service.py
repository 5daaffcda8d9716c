"""The update service's operations, shared by the HTTP API and the MQTT bridge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otaflash import versions
from otaflash.errors import InputError, OtaflashError
from otaflash.server import rules
from otaflash.server.store import BlobStore, Store

__all__ = [
    "Conflict",
    "DeltaMaker",
    "NotFound",
    "Unavailable",
    "UpdateService",
    "register_delta_maker",
]

#: ``maker(old_image, new_image, patch_out)``: writes a patch that turns the file
#: ``old_image`` into ``new_image``. The delta engine registers one; until then a
#: publish that asks for ``makeDeltasFrom`` is refused (503) with a clear message.
DeltaMaker = Callable[[Path, Path, Path], None]
_delta_maker: DeltaMaker | None = None


def register_delta_maker(maker: DeltaMaker | None) -> None:
    global _delta_maker  # noqa: PLW0603 - the one hook the delta engine fills
    _delta_maker = maker


#: Sources of an update notice, as in Tencent Xiaowei's on_ota_result.
FROM_SCHEDULED, FROM_APP, FROM_SERVER_PUSH, FROM_DEVICE_QUERY = 0, 1, 2, 3
#: Progress steps a device may report: 1..100 percent, -1..-4 failures (Alibaba).
VALID_STEPS = frozenset(range(-4, 101)) - {0}


class NotFound(OtaflashError):
    exit_code = 9


class Conflict(OtaflashError):
    exit_code = 9


class Unavailable(OtaflashError):
    exit_code = 9


@dataclass
class UpdateService:
    store: Store
    blobs: BlobStore
    #: Base of artifact URLs given to devices when no request names the host (MQTT).
    public_url: str
    #: How MQTT offers are signed: "md5" (every Alibaba SDK) or "sha256".
    mqtt_sign_method: str = "md5"
    #: Sends an offer to a device over MQTT (set by the bridge).
    notifier: Callable[[str, str, dict[str, Any]], None] | None = None

    def artifact_url(self, sha256: str, base_url: str | None = None) -> str:
        return f"{(base_url or self.public_url).rstrip('/')}/artifacts/{sha256}"

    def require_product(self, product_key: str) -> None:
        versions.validate_product_key(product_key)
        if not self.store.product_exists(product_key):
            raise NotFound(
                f"unknown product key {product_key!r}: nothing was ever published for it"
            )

    def query(
        self,
        product_key: str,
        device_name: str,
        module: str,
        current: str,
        *,
        source: int = FROM_DEVICE_QUERY,
        accept_delta: bool = True,
        base_url: str | None = None,
        alibaba_exact: bool = False,
    ) -> dict[str, Any] | None:
        """The offer for this device, or None when it is up to date."""
        self.require_product(product_key)
        versions.validate_serial(device_name)
        versions.validate_module(module)
        versions.validate_version(current)
        if source not in (FROM_SCHEDULED, FROM_APP, FROM_SERVER_PUSH, FROM_DEVICE_QUERY):
            raise InputError(f"invalid source 'from'={source}: use 0, 1, 2 or 3")
        selection = rules.select(
            self.store.packages_for(product_key, module),
            device_name,
            current,
            accept_delta=accept_delta,
        )
        if selection is None:
            return None
        return rules.offer_json(
            selection,
            source=source,
            url=self.artifact_url(selection.artifact.blob.sha256, base_url),
            sign_method=self.mqtt_sign_method if alibaba_exact else "sha256",
            alibaba_exact=alibaba_exact,
        )

    def make_delta(self, product_key: str, module: str, source: str, new_sha256: str) -> str:
        """Makes and stores the delta from published ``source`` to the uploaded image;
        returns the patch's SHA-256."""
        if _delta_maker is None:
            raise Unavailable(
                "this server cannot make deltas: the delta engine is not built in; "
                "make them with the delta tool and upload them as deltas"
            )
        versions.validate_version(source)
        old = next(
            (p for p in self.store.list_packages(product_key, module) if p.version == source),
            None,
        )
        if old is None:
            raise NotFound(
                f"cannot make a delta from {source}: {product_key}/{module} has no package "
                "of that version (publish it first, or upload the delta)"
            )
        new_path = self.blobs.path(new_sha256)
        if not new_path.is_file():
            raise NotFound(f"no uploaded file has SHA-256 {new_sha256}")
        out = self.blobs.directory / f".delta-{old.full.blob.sha256[:16]}-{new_sha256[:16]}"
        try:
            _delta_maker(self.blobs.path(old.full.blob.sha256), new_path, out)
            blob = self.blobs.adopt(out)
        finally:
            out.unlink(missing_ok=True)
        self.store.add_blob(blob)
        return blob.sha256

    def inform(self, product_key: str, device_name: str, module: str, version: str) -> None:
        self.require_product(product_key)
        versions.validate_serial(device_name)
        versions.validate_module(module)
        versions.validate_version(version)
        self.store.set_device_version(product_key, device_name, module, version)

    def progress(
        self, product_key: str, device_name: str, module: str, step: int | str, desc: str
    ) -> int:
        self.require_product(product_key)
        versions.validate_serial(device_name)
        versions.validate_module(module)
        try:
            value = int(step)
        except (TypeError, ValueError):
            raise InputError(
                f"invalid progress step {step!r}: use 1..100, -1, -2, -3 or -4"
            ) from None
        if value not in VALID_STEPS:
            raise InputError(f"invalid progress step {value}: use 1..100, -1, -2, -3 or -4")
        if len(desc) > 4096:
            raise InputError("progress desc is longer than 4096 characters")
        self.store.add_progress(product_key, device_name, module, value, desc)
        return value

    def notify(
        self,
        product_key: str,
        device_name: str,
        module: str,
        source: int,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Pushes the device's offer to it over MQTT (app trigger 1, server push 2)."""
        self.require_product(product_key)
        if self.notifier is None:
            raise Unavailable(
                "no MQTT broker is configured, so the device cannot be notified; "
                "start the server with --mqtt mqtt://HOST:PORT"
            )
        current = version or self.store.device_version(product_key, device_name, module)
        if current is None:
            raise Conflict(
                f"the version of {product_key}/{device_name} module {module} is unknown: the "
                "device has not reported it (inform), and the request did not give it"
            )
        offer = self.query(
            product_key, device_name, module, current, source=source, alibaba_exact=True
        )
        if offer is None:
            raise NotFound(f"no update for {product_key}/{device_name} at version {current}")
        self.notifier(product_key, device_name, offer)
        return offer


def default_paths(data_dir: Path) -> tuple[Path, Path]:
    """(database file, blob directory) of a data directory."""
    return data_dir / "otaflash.db", data_dir / "artifacts"
