"""Alibaba Cloud IoT OTA over MQTT: topics and exact payloads.

One place for the wire format, used by both the server's MQTT bridge and the
device client, so the two cannot drift apart:

* up ``/ota/device/inform/${pk}/${dn}``:
  ``{"id","params":{"version","module"?}}``
* down ``/ota/device/upgrade/${pk}/${dn}``:
  ``{"code":"1000","id","message":"success","data":{...}}``
* up ``/ota/device/progress/${pk}/${dn}``:
  ``{"id","params":{"step":"N","desc","module"?}}``
* up ``/sys/${pk}/${dn}/thing/ota/firmware/get``:
  ``{"id","version":"1.0","params":{"module"?},"method":"thing.ota.firmware.get"}``
* down ``/sys/${pk}/${dn}/thing/ota/firmware/get_reply``:
  ``{"id","code":200,"data":{...} or {}}``

Quirks kept exactly: ``code`` is the *string* ``"1000"`` in pushes and the
*integer* ``200`` in replies; ``step`` is a string; ``module`` is left out for
the ``default`` module; ``md5`` is present only when ``signMethod`` is MD5;
``isDiff`` (=1) only for deltas; ``signMethod`` is compared case-insensitively
(the cloud writes ``Md5``/``MD5``/``SHA256``/``Sha256``); the ``id`` may be a
number or a string of one.

``data`` may carry fields Alibaba does not define (``forced``, ``title``,
``desc``, ``from``, ``sha256``, ``imageSize``, ``imageSha256``,
``fromVersion``): Alibaba's SDKs read only the keys they know, and our client
reads them when present.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

__all__ = [
    "DEFAULT_MODULE",
    "FIRMWARE_GET_METHOD",
    "PUSH_CODE",
    "REPLY_CODE",
    "error_reply_payload",
    "firmware_get_payload",
    "inform_payload",
    "parse_message",
    "parse_topic",
    "progress_payload",
    "push_payload",
    "reply_payload",
    "sign_method_name",
    "topic",
    "wildcard",
]

DEFAULT_MODULE = "default"
PUSH_CODE = "1000"
REPLY_CODE = 200
FIRMWARE_GET_METHOD = "thing.ota.firmware.get"

_TOPICS = {
    "inform": "/ota/device/inform/{pk}/{dn}",
    "upgrade": "/ota/device/upgrade/{pk}/{dn}",
    "progress": "/ota/device/progress/{pk}/{dn}",
    "get": "/sys/{pk}/{dn}/thing/ota/firmware/get",
    "get_reply": "/sys/{pk}/{dn}/thing/ota/firmware/get_reply",
}
_TOPIC_RES = {
    kind: re.compile("^" + pattern.format(pk="(?P<pk>[^/+#]+)", dn="(?P<dn>[^/+#]+)") + "$")
    for kind, pattern in _TOPICS.items()
}
_ids = itertools.count(1)


def topic(kind: str, product_key: str, device_name: str) -> str:
    """The topic of ``kind`` (inform, upgrade, progress, get, get_reply) for one device."""
    return _TOPICS[kind].format(pk=product_key, dn=device_name)


def wildcard(kind: str) -> str:
    """The subscription that sees ``kind`` for every device (``+`` for pk and dn)."""
    return _TOPICS[kind].format(pk="+", dn="+")


def parse_topic(name: str) -> tuple[str, str, str] | None:
    """``(kind, product_key, device_name)`` of an OTA topic, or None."""
    for kind, pattern in _TOPIC_RES.items():
        match = pattern.match(name)
        if match:
            return kind, match["pk"], match["dn"]
    return None


def next_id() -> str:
    return str(next(_ids) % 4294967296)


def _module_params(module: str) -> dict[str, str]:
    return {} if module == DEFAULT_MODULE else {"module": module}


def inform_payload(version: str, module: str = DEFAULT_MODULE, msg_id: str | None = None) -> bytes:
    params = {"version": version, **_module_params(module)}
    return _dump({"id": msg_id or next_id(), "params": params})


def progress_payload(
    step: int, desc: str = "", module: str = DEFAULT_MODULE, msg_id: str | None = None
) -> bytes:
    params = {"step": str(step), "desc": desc, **_module_params(module)}
    return _dump({"id": msg_id or next_id(), "params": params})


def firmware_get_payload(
    module: str = DEFAULT_MODULE, version: str | None = None, msg_id: str | None = None
) -> bytes:
    # "version" is our addition: a server that knows it need not wait for an inform.
    params: dict[str, str] = _module_params(module)
    if version is not None:
        params["version"] = version
    return _dump(
        {
            "id": msg_id or next_id(),
            "version": "1.0",
            "params": params,
            "method": FIRMWARE_GET_METHOD,
        }
    )


def push_payload(data: dict[str, Any], msg_id: str | None = None) -> bytes:
    return _dump({"code": PUSH_CODE, "id": msg_id or next_id(), "message": "success", "data": data})


def reply_payload(msg_id: str | int, data: dict[str, Any] | None) -> bytes:
    return _dump({"id": msg_id, "code": REPLY_CODE, "data": data or {}})


def error_reply_payload(msg_id: str | int, code: int, message: str) -> bytes:
    """A failed firmware/get (our server only; Alibaba's cloud uses its own codes)."""
    return _dump({"id": msg_id, "code": code, "data": {}, "message": message})


def sign_method_name(value: str) -> str:
    """``md5`` or ``sha256`` from any spelling (``Md5``, ``MD5``, ``SHA256``, ``Sha-256``)."""
    name = value.strip().lower().replace("-", "")
    if name not in {"md5", "sha256"}:
        raise ValueError(f"unknown signMethod {value!r}: expected Md5 or SHA256")
    return name


def parse_message(payload: bytes) -> dict[str, Any]:
    """The JSON object of an MQTT payload; ValueError names what is wrong."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"payload is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ValueError("payload is not a JSON object")
    return message


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
