"""The device client: learn of updates four ways, report versions and progress.

The four sources are Tencent Xiaowei's ``from`` values:

===  ==============================  =====================================
0    scheduled check                 :meth:`OtaClient.watch`
1    an app asked the server         MQTT push (``"from": 1`` in the data)
2    server push                     MQTT push on ``/ota/device/upgrade/...``
3    the device asks                 :meth:`OtaClient.query_update`
===  ==============================  =====================================

and the callback has the seed's shape, ``on_ota_result(from, force,
version, title, desc, url, md5)`` (``version`` is a string: an integer
productVersion arrives as its digits). It is called only when there is an
update, as in the Tencent SDK. The :class:`Offer` it came from (size,
SHA-256, delta or not) is what :mod:`otaflash.update` installs.

Two channels carry the same operations: :class:`HttpChannel` talks to the
otaflash server's JSON API; :class:`MqttChannel` speaks Alibaba IoT's OTA
topics, so the client works with our server's MQTT bridge and with a
broker-based cloud alike.

>>> client = OtaClient(HttpChannel(url, "pk", "SN001"), version="7",   # doctest: +SKIP
...                    on_ota_result=print)
>>> client.query_update()                                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import urllib3

from otaflash import alibaba, versions
from otaflash.download import Expected, network_reason
from otaflash.errors import InputError, RuleError
from otaflash.mqtt import MqttConnection

__all__ = [
    "FROM_APP",
    "FROM_DEVICE_QUERY",
    "FROM_SCHEDULED",
    "FROM_SERVER_PUSH",
    "Channel",
    "HttpChannel",
    "MqttChannel",
    "Offer",
    "OnOtaResult",
    "OtaClient",
]

log = logging.getLogger(__name__)

FROM_SCHEDULED, FROM_APP, FROM_SERVER_PUSH, FROM_DEVICE_QUERY = 0, 1, 2, 3

#: ``on_ota_result(from, force, version, title, desc, url, md5)``
OnOtaResult = Callable[[int, bool, str, str, str, str, str], object]

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Offer:
    """One update offered to the device (Alibaba's ``data`` object, parsed)."""

    source: int
    forced: bool
    version: str
    title: str
    desc: str
    url: str
    size: int
    md5: str | None
    sha256: str | None
    sign_method: str
    sign: str
    is_diff: bool
    from_version: str | None
    image_size: int | None
    image_sha256: str | None
    module: str
    signature: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_data(cls, data: dict[str, Any], source: int) -> Offer:
        """Parses an offer; RuleError names the field that cannot be used."""
        try:
            method = alibaba.sign_method_name(str(data.get("signMethod", "")))
            sign = str(data["sign"]).lower()
            if not (_HEX32 if method == "md5" else _HEX64).match(sign):
                raise ValueError(f"sign {sign!r} is not a {method} hex digest")
            md5 = data.get("md5") or (sign if method == "md5" else None)
            sha256 = data.get("sha256") or (sign if method == "sha256" else None)
            if md5 is not None and not _HEX32.match(str(md5)):
                raise ValueError(f"md5 {md5!r} is not 32 hex digits")
            if sha256 is not None and not _HEX64.match(str(sha256)):
                raise ValueError(f"sha256 {sha256!r} is not 64 hex digits")
            size = int(data["size"])
            if size < 0:
                raise ValueError(f"size {size} is negative")
            version = versions.validate_version(str(data["version"]))
            url = str(data["url"])
            image_sha256 = data.get("imageSha256")
            return cls(
                source=int(data.get("from", source)),
                forced=bool(data.get("forced", False)),
                version=version,
                title=str(data.get("title", "")),
                desc=str(data.get("desc", "")),
                url=url,
                size=size,
                md5=str(md5).lower() if md5 else None,
                sha256=str(sha256).lower() if sha256 else None,
                sign_method=method,
                sign=sign,
                is_diff=bool(int(data.get("isDiff", 0))),
                from_version=data.get("fromVersion"),
                image_size=int(data["imageSize"]) if "imageSize" in data else None,
                image_sha256=str(image_sha256).lower() if image_sha256 else None,
                module=str(data.get("module") or alibaba.DEFAULT_MODULE),
                signature=data.get("signature"),
                raw=dict(data),
            )
        except (KeyError, TypeError, ValueError, InputError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise RuleError(f"the update service sent an unusable update offer: {detail}") from None

    def expected(self) -> Expected:
        """What the downloaded file must be."""
        return Expected(self.size, md5=self.md5, sha256=self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "forced": self.forced,
            "version": self.version,
            "title": self.title,
            "desc": self.desc,
            "url": self.url,
            "size": self.size,
            "md5": self.md5,
            "sha256": self.sha256,
            "isDiff": self.is_diff,
            "fromVersion": self.from_version,
            "imageSize": self.image_size,
            "imageSha256": self.image_sha256,
            "module": self.module,
        }


class Channel(Protocol):
    """How a client reaches the update service."""

    def query(self, module: str, version: str, source: int, accept_delta: bool) -> Offer | None: ...

    def inform(self, module: str, version: str) -> None: ...

    def progress(self, module: str, step: int, desc: str) -> None: ...

    def close(self) -> None: ...


class HttpChannel:
    """The otaflash server's JSON API (``otaflash serve``)."""

    def __init__(
        self, server_url: str, product_key: str, device_name: str, *, timeout: float = 15.0
    ) -> None:
        if not server_url.startswith(("http://", "https://")):
            raise RuleError(f"invalid server URL {server_url!r}: use http://HOST:PORT")
        self.base = server_url.rstrip("/")
        self.product_key = versions.validate_product_key(product_key)
        self.device_name = versions.validate_serial(device_name)
        self._http = urllib3.PoolManager(
            retries=urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.2),
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
        )

    def _url(self, action: str) -> str:
        return (
            f"{self.base}/api/v1/devices/{quote(self.product_key, safe='')}/"
            f"{quote(self.device_name, safe='')}/{action}"
        )

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
            )
        except urllib3.exceptions.HTTPError as error:
            failure = RuleError(
                f"cannot reach the update service at {self.base}: {network_reason(error)}"
            )
            failure.hint = "check the server URL and that the server is running"
            raise failure from None
        if response.status >= 400:
            try:
                message = json.loads(response.data).get("error") or response.reason
            except (ValueError, AttributeError):
                message = response.reason
            raise RuleError(f"the update service refused: HTTP {response.status}: {message}")
        try:
            return json.loads(response.data) if response.data else None
        except ValueError:
            raise RuleError(
                f"the update service at {self.base} answered something that is not JSON"
            ) from None

    def query(self, module: str, version: str, source: int, accept_delta: bool) -> Offer | None:
        params = {
            "version": version,
            "module": module,
            "from": source,
            "delta": "true" if accept_delta else "false",
        }
        answer = self._request("GET", self._url("update") + "?" + urlencode(params))
        data = answer.get("update") if isinstance(answer, dict) else None
        return Offer.from_data(data, source) if data else None

    def inform(self, module: str, version: str) -> None:
        self._request("POST", self._url("inform"), {"version": version, "module": module})

    def progress(self, module: str, step: int, desc: str) -> None:
        self._request(
            "POST", self._url("progress"), {"step": str(step), "desc": desc, "module": module}
        )

    def close(self) -> None:
        self._http.clear()


class MqttChannel:
    """Alibaba IoT's OTA topics on an MQTT broker.

    ``on_push(offer)`` receives what arrives on the device's upgrade topic
    (server push, ``from`` 2, or an app trigger when the data says ``from`` 1).
    """

    def __init__(
        self,
        broker_url: str,
        product_key: str,
        device_name: str,
        *,
        on_push: Callable[[Offer], object] | None = None,
        timeout: float = 15.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.product_key = versions.validate_product_key(product_key)
        self.device_name = versions.validate_serial(device_name)
        self.timeout = timeout
        self.on_push = on_push
        self._waiting: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self.connection = MqttConnection(
            broker_url,
            [self._topic("upgrade"), self._topic("get_reply")],
            self._on_message,
            client_id=f"{product_key}.{device_name}",
            username=username,
            password=password,
        ).start(timeout)

    def _topic(self, kind: str) -> str:
        return alibaba.topic(kind, self.product_key, self.device_name)

    def query(self, module: str, version: str, source: int, accept_delta: bool) -> Offer | None:
        msg_id = alibaba.next_id()
        done = threading.Event()
        box: list[dict[str, Any]] = []
        with self._lock:
            self._waiting[msg_id] = (done, box)
        try:
            self.connection.publish(
                self._topic("get"), alibaba.firmware_get_payload(module, version, msg_id)
            )
            if not done.wait(self.timeout):
                raise RuleError(
                    f"no answer to firmware/get from the update service within {self.timeout:g} s"
                )
        finally:
            with self._lock:
                self._waiting.pop(msg_id, None)
        reply = box[0]
        if reply.get("code") != alibaba.REPLY_CODE:
            raise RuleError(
                f"the update service refused firmware/get: code {reply.get('code')}: "
                f"{reply.get('message', '')}".rstrip(": ")
            )
        data = reply.get("data") or {}
        if not data:
            return None
        offer = Offer.from_data(data, source)
        if offer.is_diff and not accept_delta:
            return None  # a broker cloud cannot be told; wait for a full-image offer
        return offer

    def inform(self, module: str, version: str) -> None:
        self.connection.publish(self._topic("inform"), alibaba.inform_payload(version, module))

    def progress(self, module: str, step: int, desc: str) -> None:
        self.connection.publish(
            self._topic("progress"), alibaba.progress_payload(step, desc, module)
        )

    def close(self) -> None:
        self.connection.stop()

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = alibaba.parse_topic(topic)
        if parsed is None:
            return
        try:
            message = alibaba.parse_message(payload)
        except ValueError as error:
            log.warning("ignored a message on %s: %s", topic, error)
            return
        if parsed[0] == "get_reply":
            with self._lock:
                waiter = self._waiting.get(str(message.get("id")))
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()
        elif parsed[0] == "upgrade":
            if str(message.get("code")) != alibaba.PUSH_CODE:
                log.warning("ignored an upgrade push with code %r", message.get("code"))
                return
            data = message.get("data")
            if not isinstance(data, dict) or not data:
                return
            try:
                offer = Offer.from_data(data, FROM_SERVER_PUSH)
            except RuleError as error:
                log.warning("ignored an upgrade push: %s", error)
                return
            if self.on_push is not None:
                self.on_push(offer)


class OtaClient:
    """One device module's view of the update service.

    ``version`` is the device's current version (Tencent's productVersion, or
    the Alibaba version string). ``on_ota_result`` is the seed's callback;
    ``on_offer(offer)`` gets the full :class:`Offer` too.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        version: str | int,
        module: str = alibaba.DEFAULT_MODULE,
        on_ota_result: OnOtaResult | None = None,
        on_offer: Callable[[Offer], object] | None = None,
        accept_delta: bool = True,
    ) -> None:
        self.channel = channel
        self.version = versions.validate_version(str(version))
        self.module = versions.validate_module(module)
        self.on_ota_result = on_ota_result
        self.on_offer = on_offer
        self.accept_delta = accept_delta
        if isinstance(channel, MqttChannel) and channel.on_push is None:
            channel.on_push = self.handle_push

    def query_update(self, source: int = FROM_DEVICE_QUERY) -> Offer | None:
        """Asks for an update (Tencent's ``tx_query_ota_update``); calls back if there is one."""
        offer = self.channel.query(self.module, self.version, source, self.accept_delta)
        if offer is not None:
            self._notify(offer)
        return offer

    def handle_push(self, offer: Offer) -> None:
        """An offer the service pushed (``from`` 1 or 2)."""
        if offer.module != self.module:
            return
        if versions.compare(offer.version, self.version) <= 0:
            log.info(
                "ignored a push of %s: the device already runs %s", offer.version, self.version
            )
            return
        self._notify(offer)

    def watch(self, interval: float, stop: threading.Event, *, first_now: bool = True) -> None:
        """Scheduled checks (``from`` 0) every ``interval`` seconds until ``stop`` is set.

        A failed check is logged and tried again at the next interval."""
        if interval <= 0:
            raise RuleError(f"invalid watch interval {interval}: must be > 0 seconds")
        if not first_now and stop.wait(interval):
            return
        while not stop.is_set():
            try:
                self.query_update(FROM_SCHEDULED)
            except RuleError as error:
                log.warning("scheduled update check failed: %s", error)
            if stop.wait(interval):
                return

    def inform(self, version: str | int | None = None) -> None:
        """Reports the running version (after boot, and after an update)."""
        if version is not None:
            self.version = versions.validate_version(str(version))
        self.channel.inform(self.module, self.version)

    def report_progress(self, step: int, desc: str = "") -> None:
        self.channel.progress(self.module, step, desc)

    def close(self) -> None:
        self.channel.close()

    def _notify(self, offer: Offer) -> None:
        if self.on_ota_result is not None:
            self.on_ota_result(
                offer.source,
                offer.forced,
                offer.version,
                offer.title,
                offer.desc,
                offer.url,
                offer.md5 or "",
            )
        if self.on_offer is not None:
            self.on_offer(offer)
