"""Which update a device gets: the rules of both seed platforms in one place.

For a device (product key, module, serial number, current version):

1. candidates are the *enabled* packages of that product and module whose
   target version is newer than the device's (:func:`otaflash.versions.compare`);
2. a ``test`` package applies only to the serial numbers it lists; a
   ``formal`` one to every device;
3. a rollout below 100 % admits a stable share of serials: a device is in
   when ``sha256("pk/module/version/serial")`` falls in the first ``rollout``
   of 100 buckets, so widening a rollout keeps the devices already in;
4. of what is left, the newest target wins (a test package newer than the
   formal one reaches its testers first);
5. the file offered is a delta when the package has one made from exactly the
   device's current version (and the device accepts deltas), else the full
   image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from otaflash import hashing, versions
from otaflash.server.store import Artifact, Package

__all__ = ["Selection", "in_rollout", "offer_json", "select"]


@dataclass(frozen=True)
class Selection:
    package: Package
    artifact: Artifact

    @property
    def is_delta(self) -> bool:
        return self.artifact.from_version is not None


def in_rollout(package: Package, serial: str) -> bool:
    if package.rollout >= 100:
        return True
    if package.rollout <= 0:
        return False
    key = f"{package.product_key}/{package.module}/{package.version}/{serial}".encode()
    bucket = int.from_bytes(hashing.sha256(key).digest()[:8], "big") % 100
    return bucket < package.rollout


def applies(package: Package, serial: str, current: str) -> bool:
    if not package.enabled or versions.compare(package.version, current) <= 0:
        return False
    if package.scope == "test" and serial not in package.serials:
        return False
    return in_rollout(package, serial)


def select(
    candidates: list[Package], serial: str, current: str, *, accept_delta: bool = True
) -> Selection | None:
    best: Package | None = None
    for package in candidates:
        if applies(package, serial, current) and (
            best is None or versions.compare(package.version, best.version) > 0
        ):
            best = package
    if best is None:
        return None
    if accept_delta:
        for delta in best.deltas:
            if delta.from_version is not None and delta.from_version == current:
                return Selection(best, delta)
    return Selection(best, best.full)


def offer_json(
    selection: Selection,
    *,
    source: int,
    url: str,
    sign_method: str = "sha256",
    alibaba_exact: bool = False,
) -> dict[str, Any]:
    """The offer as the device API returns it: Alibaba's ``data`` fields plus ours.

    ``sign_method`` "md5" gives Alibaba's MD5 form (``signMethod`` "Md5", ``sign``
    and ``md5`` the MD5); "sha256" gives ``signMethod`` "SHA256" and ``sign`` the
    SHA-256. With ``alibaba_exact`` (the MQTT topics) ``md5`` is left out unless
    the method is MD5, as Alibaba does; the HTTP API always has it (the Tencent
    callback passes it on). ``sha256`` and the full image's
    ``imageSize``/``imageSha256`` are always there for our client.
    """
    package, artifact = selection.package, selection.artifact
    blob = artifact.blob
    data: dict[str, Any] = {
        "size": blob.size,
        "version": package.version,
        "url": url,
    }
    if sign_method == "md5":
        data.update(signMethod="Md5", sign=blob.md5, md5=blob.md5)
    else:
        data.update(signMethod="SHA256", sign=blob.sha256)
        if not alibaba_exact:
            data["md5"] = blob.md5
    if selection.is_delta:
        data["isDiff"] = 1
        data["fromVersion"] = artifact.from_version
    if package.module != "default":
        data["module"] = package.module
    data.update(
        {
            "from": source,
            "forced": package.forced,
            "title": package.title,
            "desc": package.description,
            "sha256": blob.sha256,
            "imageSize": package.full.blob.size,
            "imageSha256": package.full.blob.sha256,
            "packageId": package.id,
            "signature": package.signature,
        }
    )
    return data
