"""Ingest from the gateway's local Mosquitto, acknowledging only what is safe elsewhere.

A paho-mqtt 2.x client subscribes to the devices' frame topic with QoS 1 on a persistent
session (clean_session off), with ``manual_ack``: paho does not PUBACK on delivery; a
frame's PUBACK goes out after its batch is committed, or after the cloud acknowledged
its reading (hold.py), all of one batch in a single write (see ``send_acks``). A packet
id means something only on the connection it came by: a ``PubAck`` from before a
reconnect is dropped, never sent (the broker delivers that frame again). While the
gateway is down (or killed), the broker keeps the unacknowledged frames and every frame
published meanwhile, and delivers them when the same client id reconnects. paho's own
loop thread (``loop_start``: every socket write happens in that thread) reconnects with
backoff after a broker restart. "subscribed to" is logged only when the broker's SUBACK
grants the subscription: before that, frames published to a broker that has never seen
this session are not kept for the gateway. A refused subscription, or one granted only
at QoS 0 (which keeps nothing for a gateway that is down), is an error in the log, not a
silently idle or lossy gateway. Each frame goes to the pipeline with the device its
topic names (the ``+`` level), which its key id must match; a PUBLISH larger than
``MAX_PUBLISH`` is never read into memory (see paho_adapter) but still reaches the
pipeline, as a ``too_large`` rejection to acknowledge. The link's state (connected;
disconnected: unreachable, lost, or closed before the broker answered, as a TLS-only
listener does; refused by the broker) goes to a ``Link``, which logs each change once,
reminds at most once a minute, and feeds ``status`` and metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import LocalBroker
from gateway.devices import Devices
from gateway.errors import ProtocolError, Reason
from gateway.inbox import Inbox
from gateway.link import DISCONNECTED, REFUSED, Link
from gateway.paho_adapter import Client
from gateway.protocol import Frame

log = logging.getLogger(__name__)


MAX_PUBLISH = 64 * 1024  # bytes: a PUBLISH's payload beyond this is never read
# The broker took the TCP connection and closed it without a CONNACK: what Mosquitto does
# on a TLS listener to a client speaking plain MQTT (the ingest has no TLS).
UNANSWERED = ("connection closed before the broker answered the MQTT CONNECT (a TLS-only "
              "listener? the ingest connects without TLS)")


def topic_device(pattern: str) -> Callable[[str], str | None]:
    """The device a frame's topic names: the level where the subscription has its first
    ``+`` (gridedge/v1/dev/+/frame). None for every topic when the pattern has none."""
    levels = pattern.split("/")
    if "+" not in levels:
        return lambda _topic: None
    index = levels.index("+")

    def device(topic: str) -> str | None:
        parts = topic.split("/")
        return parts[index] if index < len(parts) else ""

    return device


class MQTTIngest:
    def __init__(self, cfg: LocalBroker, inbox: Inbox) -> None:
        self.cfg = cfg
        self.inbox = inbox
        self.connects = 0
        self.subscribed = False  # the broker granted the subscription on this connection
        self._qos0_logged = False
        self.link = Link("ingest", f"the local broker {cfg.host}:{cfg.port}", log)
        self._answered = False  # a CONNACK arrived on the current connection attempt
        self._acks: list[int] = []  # mids to acknowledge, sent together (send_acks)
        self._acks_lock = threading.Lock()  # the committer and the uplink (hold.py) add
        self.generation = 0  # +1 at every connect and disconnect: whose mids are valid
        self._device_of = topic_device(cfg.topic)
        if "+" not in cfg.topic.split("/"):
            log.warning("local.topic %r has no + level for the device id: frames cannot be "
                        "checked against the device their topic names", cfg.topic)
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=False,
            protocol=mqtt.MQTTv311, manual_ack=True, max_publish=MAX_PUBLISH,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password or None)
        self.client.max_inflight_messages_set(1000)  # frames in flight to us, per session
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish on the local broker (thread-safe in paho 2.x; dropped while offline)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        # paho's own thread (not ours around loop_forever): only then do publishes and
        # PUBACKs from other threads go through its queue instead of writing to the
        # socket themselves, concurrently with the loop.
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def progress(self) -> float:
        """Now while paho's network thread runs (the watchdog's probe), else 0."""
        return time.monotonic() if self.client.network_thread_alive() else 0.0

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self._answered = True
        if rc.is_failure:
            self.link.down(REFUSED, str(rc))
            return
        if self.connects and not flags.session_present:
            log.warning("local broker %s:%d no longer had the gateway's session (restarted "
                        "without persistence?): frames published while it was away are gone",
                        self.cfg.host, self.cfg.port)
        self.connects += 1
        self.generation += 1
        client.subscribe(self.cfg.topic, qos=1)
        self.link.up()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        """No connection: the socket could not be opened (paho retries with backoff)."""
        self._answered = False
        e = self.client.connect_error
        self.link.down(DISCONNECTED, "connection failed" if e is None else
                       e.strerror or str(e) or type(e).__name__)

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

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.subscribed = False
        self.generation += 1
        answered, self._answered = self._answered, False
        if rc == 0:  # our own disconnect(), at shutdown
            return
        if not answered:
            self.link.down(DISCONNECTED, UNANSWERED)
        elif self.link.connected:
            # paho names a dropped socket "Unspecified error"
            self.link.down(DISCONNECTED, f"the broker closed the session ({rc})"
                           if flags.is_disconnect_packet_from_server else
                           "connection lost" if str(rc) == "Unspecified error" else str(rc))
        # else: the broker refused the CONNECT; _on_connect has reported it

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        mid = msg.mid
        ack = PubAck(self, mid, self.generation) if msg.qos == 1 else None
        payload: bytes | ProtocolError = bytes(msg.payload)
        if not payload and (size := self.client.oversized(mid)) is not None:
            payload = ProtocolError(Reason.TOO_LARGE, f"MQTT message of {size} bytes (not "
                                    f"read past {MAX_PUBLISH})")
        self.inbox.submit(payload, msg.topic, ack, self._device_of(msg.topic))

    def _queue_ack(self, mid: int, generation: int) -> None:
        with self._acks_lock:
            if generation == self.generation:
                self._acks.append(mid)

    def committed(self, frames: list[Frame], devices: Devices) -> None:
        """A batch is safe (pipeline.Listener): its PUBACKs go out."""
        self.send_acks()

    def send_acks(self) -> None:
        """After a batch's commit, or a held batch's cloud PUBACK (hold.py): the PUBACKs
        collected so far, in one buffer."""
        with self._acks_lock:
            mids, self._acks = self._acks, []
        if mids:
            self.client.send_pubacks(mids)


class PubAck:
    """The local PUBACK of one frame. A packet id is valid only on the connection it came
    by: after a reconnect the broker delivers the frame again (and, without its session,
    may give the id to another message), so an acknowledgement from an older connection
    is dropped, never sent."""

    __slots__ = ("_generation", "_ingest", "_mid")

    def __init__(self, ingest: MQTTIngest, mid: int, generation: int) -> None:
        self._ingest, self._mid, self._generation = ingest, mid, generation

    def __call__(self) -> None:
        self._ingest._queue_ack(self._mid, self._generation)

    def current(self) -> bool:
        return self._generation == self._ingest.generation
