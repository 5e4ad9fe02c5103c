"""A paho-mqtt subscriber that records what arrives, for tests (persistent session, QoS 1)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt


def wait_for(cond: Callable[[], object], timeout: float) -> bool:
    """Poll cond until it is true or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


class Capture:
    def __init__(self, port: int, topic: str = "gridedge/#", ca: str | None = None,
                 user: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"capture-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        # Ready only once the broker confirmed the subscription: a publish that overtakes
        # the SUBSCRIBE is not delivered to a new session (seen on a loaded CI machine).
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        if ca:
            self.client.tls_set(ca_certs=ca)
        if user:
            self.client.username_pw_set(user, password)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError(f"no SUBACK from the broker on port {port} for {topic}")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    @staticmethod
    def wait(cond: Callable[[], object], timeout: float) -> bool:
        return wait_for(cond, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
