"""A paho-mqtt connection with what both ends need: connect and wait, subscribe
again after every reconnect, publish and wait for the broker's ack."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from otaflash.errors import InputError, RuleError

__all__ = ["MqttConnection", "parse_url"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


def parse_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``mqtt://host[:port]`` (port 1883 by default)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise InputError(
            f"invalid MQTT broker URL {url!r}: use mqtt://HOST[:PORT] (TLS is not supported yet)"
        )
    try:
        port = parts.port or 1883
    except ValueError:
        raise InputError(f"invalid port in MQTT broker URL {url!r}") from None
    return parts.hostname, port


class MqttConnection:
    def __init__(
        self,
        url: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.host, self.port = parse_url(url)
        self.subscriptions = list(subscriptions)
        self._handler = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._error: str | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"otaflash-{uuid.uuid4().hex[:12]}",
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._keepalive = keepalive
        self._network_thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> MqttConnection:
        """Connects and subscribes; RuleError when the broker cannot be reached in time."""
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive)
        except OSError as error:
            reason = error.strerror or error
            raise RuleError(
                f"cannot reach the MQTT broker at {self.host}:{self.port}: {reason}"
            ) from None
        self._client.loop_start()
        self._network_thread = getattr(self._client, "_thread", None)
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuleError(
                f"the MQTT broker at {self.host}:{self.port} did not accept the connection"
                + (f": {self._error}" if self._error else f" within {timeout:g} s")
            )
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, timeout: float = 10.0) -> None:
        """Publishes; waits for the broker's ack unless called from a message handler
        (paho's network thread cannot wait for an ack it has to read itself)."""
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuleError(f"MQTT publish to {topic} failed: {paho.error_string(info.rc)}")
        if threading.current_thread() is self._network_thread:
            return
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise RuleError(f"the MQTT broker did not acknowledge the message to {topic}")

    def __enter__(self) -> MqttConnection:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # paho callbacks (its network thread)

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        if reason.is_failure:
            self._error = str(reason)
            return
        self._connected.set()
        if not self.subscriptions:
            self._subscribed.set()
            return
        result, mid = client.subscribe([(topic, 1) for topic in self.subscriptions])
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subs.add(mid)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        _reasons: object,
        _properties: object,
    ) -> None:
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._subscribed.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        # An exception escaping a paho callback would end the network thread.
        try:
            self._handler(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("MQTT message on %s could not be handled", msg.topic)
