"""Ingest from the gateway's local Mosquitto, acknowledging only what is stored.

A paho-mqtt 2.x client subscribes to the devices' frame topic with QoS 1 on a persistent
session (clean_session off), with ``manual_ack``: paho does not PUBACK on delivery; the
pipeline calls ``client.ack(mid, qos)`` after the frame's batch is committed. While the
gateway is down (or killed), the broker keeps the unacknowledged frames and every frame
published meanwhile, and delivers them when the same client id reconnects. paho's own
loop thread reconnects with backoff after a broker restart. "subscribed to" is logged
only when the broker's SUBACK grants the subscription: before that, frames published to a
broker that has never seen this session are not kept for the gateway. A refused
subscription, or one granted only at QoS 0 (which keeps nothing for a gateway that is
down), is an error in the log, not a silently idle or lossy gateway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridedge.gateway.config import LocalBroker
from gridedge.gateway.pipeline import Pipeline

log = logging.getLogger(__name__)


class MQTTIngest:
    def __init__(self, cfg: LocalBroker, pipeline: Pipeline) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.connects = 0
        self.subscribed = False  # the broker granted the subscription on this connection
        self._qos0_logged = False
        self.on_connected: Callable[[], None] | None = None  # e.g. re-announce to HA
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=False,
            protocol=mqtt.MQTTv311, manual_ack=True,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password or None)
        self.client.max_inflight_messages_set(1000)  # frames in flight to us, per session
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish on the local broker (thread-safe in paho 2.x; dropped while offline)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        # Our own thread around paho's loop (it reconnects by itself), so the watchdog can
        # see whether the network loop is still alive.
        self._thread = threading.Thread(
            target=self.client.loop_forever, kwargs={"retry_first_connection": True},
            name="ingest-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.client.disconnect()
        self._thread.join(timeout=5)

    def progress(self) -> float:
        """Now while the network loop runs (the watchdog's probe), else 0."""
        return time.monotonic() if self._thread.is_alive() else 0.0

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("local broker %s:%d refused the connection: %s",
                      self.cfg.host, self.cfg.port, rc)
            return
        if self.connects and not flags.session_present:
            log.warning("local broker %s:%d no longer had the gateway's session (restarted "
                        "without persistence?): frames published while it was away are gone",
                        self.cfg.host, self.cfg.port)
        self.connects += 1
        client.subscribe(self.cfg.topic, qos=1)
        if self.on_connected is not None:
            self.on_connected()
        log.info("ingest connected to %s:%d", self.cfg.host, self.cfg.port)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        rc = codes[0]
        if rc.is_failure:
            log.error("local broker %s:%d refused the subscription to %s (%s): no frames "
                      "arrive; check its ACL for the gateway's user, then restart the "
                      "gateway", self.cfg.host, self.cfg.port, self.cfg.topic, rc)
            return
        if rc.value < 1 and not self._qos0_logged:
            # A broker with `max_qos 0` grants QoS 0: frames still flow, but the broker
            # keeps none for the gateway while it is down and a crash loses what it had.
            log.error("local broker %s:%d granted only QoS 0 for %s: frames published "
                      "while the gateway is down or restarting are lost; allow QoS 1 "
                      "(mosquitto: remove max_qos)", self.cfg.host, self.cfg.port,
                      self.cfg.topic)
            self._qos0_logged = True
        self.subscribed = True
        log.info("ingest subscribed to %s (QoS %d)", self.cfg.topic, rc.value)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.subscribed = False
        if rc != 0:
            log.warning("ingest lost the local broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        self.pipeline.submit(bytes(msg.payload), msg.topic, ack)
