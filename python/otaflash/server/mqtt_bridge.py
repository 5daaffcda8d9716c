"""Bridges the server's rules to Alibaba IoT's OTA topics on an MQTT broker.

Subscribes to every device's inform, progress and firmware/get topics
(``+`` wildcards, as the Link SDK does), answers firmware/get on
``.../get_reply`` with the same rules the HTTP API uses, and sends pushes and
app triggers on ``/ota/device/upgrade/${pk}/${dn}``. A device that speaks
Alibaba's protocol therefore works with this server unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from otaflash import alibaba
from otaflash.errors import OtaflashError
from otaflash.mqtt import MqttConnection
from otaflash.server.service import NotFound, UpdateService

__all__ = ["MqttBridge"]

log = logging.getLogger(__name__)


class MqttBridge:
    def __init__(self, service: UpdateService, url: str) -> None:
        self.service = service
        self.connection = MqttConnection(
            url,
            [alibaba.wildcard("inform"), alibaba.wildcard("progress"), alibaba.wildcard("get")],
            self._on_message,
        )

    def start(self) -> MqttBridge:
        self.connection.start()
        self.service.notifier = self.send_offer
        return self

    def stop(self) -> None:
        self.service.notifier = None
        self.connection.stop()

    def send_offer(self, product_key: str, device_name: str, offer: dict[str, Any]) -> None:
        self.connection.publish(
            alibaba.topic("upgrade", product_key, device_name), alibaba.push_payload(offer)
        )

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = alibaba.parse_topic(topic)
        if parsed is None:
            return
        kind, pk, dn = parsed
        if kind == "get":
            self._answer_get(pk, dn, payload)
            return
        try:
            message = alibaba.parse_message(payload)
            params = message.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params is not an object")
            module = str(params.get("module") or alibaba.DEFAULT_MODULE)
            if kind == "inform":
                self.service.inform(pk, dn, module, str(params.get("version", "")))
            elif kind == "progress":
                step = params.get("step")
                if not isinstance(step, str | int) or isinstance(step, bool):
                    raise ValueError(f"step {step!r} is not a string of a number")
                self.service.progress(pk, dn, module, step, str(params.get("desc", "")))
        except (OtaflashError, ValueError) as error:
            # MQTT has no error reply for inform/progress: log it, keep serving.
            log.warning("ignored %s from %s/%s: %s", kind, pk, dn, error)

    def _answer_get(self, pk: str, dn: str, payload: bytes) -> None:
        reply_topic = alibaba.topic("get_reply", pk, dn)
        msg_id: str | int = "0"
        try:
            message = alibaba.parse_message(payload)
            raw_id = message.get("id", "0")  # answered as it came: number or string
            msg_id = raw_id if isinstance(raw_id, str | int) else str(raw_id)
            params = message.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params is not an object")
            module = str(params.get("module") or alibaba.DEFAULT_MODULE)
            current = params.get("version") or self.service.store.device_version(pk, dn, module)
            offer = None
            if current is not None:  # never informed: nothing to compare with
                offer = self.service.query(pk, dn, module, str(current), alibaba_exact=True)
            reply = alibaba.reply_payload(msg_id, offer)
        except (OtaflashError, ValueError) as error:
            code = 404 if isinstance(error, NotFound) else 400
            reply = alibaba.error_reply_payload(msg_id, code, str(error))
        self.connection.publish(reply_topic, reply, qos=1)
