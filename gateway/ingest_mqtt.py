"""Ingest from the gateway's local Mosquitto, acknowledging only what is stored.

A paho-mqtt 2.x client subscribes to the devices' frame topic with QoS 1 on a persistent
session (clean_session off), with ``manual_ack``: paho does not PUBACK on delivery; the
PUBACKs go out after the frame's batch is committed, all of one batch in a single write
(see ``_send_acks``). While the gateway is down (or killed), the broker keeps the
unacknowledged frames and every frame published meanwhile, and delivers them when the
same client id reconnects. paho's own loop thread (``loop_start``: every socket write
happens in that thread) reconnects with backoff after a broker restart. "subscribed to"
is logged only when the broker's SUBACK grants the subscription: before that, frames
published to a broker that has never seen this session are not kept for the gateway. A
refused subscription, or one granted only at QoS 0 (which keeps nothing for a gateway
that is down), is an error in the log, not a silently idle or lossy gateway.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

from gridedge.gateway.config import LocalBroker
from gridedge.gateway.pipeline import Pipeline

log = logging.getLogger(__name__)
PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 section 3.4: type 4, remaining length 2, mid


class _ReadAhead:
    """The broker socket, read 64 KiB at a time. paho reads each packet's header a byte
    per ``recv`` (three or four system calls per frame, each giving up and re-taking the
    GIL that the committer is holding); here they are served from one buffer. paho asks
    ``pending()`` (as for TLS sockets) and skips its wait while bytes are buffered."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            self._buf = self._sock.recv(65536)  # BlockingIOError when empty, b"" at EOF
            self._pos = 0
        chunk = self._buf[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0  # TLS
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking, …
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    def _create_socket(self) -> Any:  # private in paho: without it, plain reads (slower)
        return _ReadAhead(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Every packet already buffered, not one per wait: paho's loop otherwise makes
        a select() call per frame."""
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(self._sock, _ReadAhead) \
                and self._sock.pending() > 0:
            rc = super().loop_read(max_packets)
        return rc


class MQTTIngest:
    def __init__(self, cfg: LocalBroker, pipeline: Pipeline) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.connects = 0
        self.subscribed = False  # the broker granted the subscription on this connection
        self._qos0_logged = False
        self.on_connected: Callable[[], None] | None = None  # e.g. re-announce to HA
        self._acks: list[int] = []  # committed frames' mids (committer thread only)
        pipeline.after_acks.append(self._send_acks)
        self.client = _Client(
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
        # paho sends each PUBACK as its own TCP write (and wakes the broker for each): at
        # thousands of frames/s that was a fifth of the committer's time. Its packet queue
        # takes one buffer holding a batch's PUBACKs instead. Private API, so optional:
        # without it, ``client.ack`` one by one.
        self._queue_packet: Callable[..., Any] | None = getattr(
            self.client, "_packet_queue", None)

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
        thread = getattr(self.client, "_thread", None)
        return time.monotonic() if thread is not None and thread.is_alive() else 0.0

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

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        mid = msg.mid
        ack = (lambda: self._acks.append(mid)) if msg.qos == 1 else None
        self.pipeline.submit(bytes(msg.payload), msg.topic, ack)

    def _send_acks(self) -> None:
        """After a batch's commit (committer thread): its PUBACKs, in one buffer."""
        if not self._acks:
            return
        mids, self._acks = self._acks, []
        if self._queue_packet is None:
            for mid in mids:
                self.client.ack(mid, 1)
            return
        self._queue_packet(PacketTypes.PUBACK << 4,
                           b"".join(PUBACK.pack(0x40, 2, mid) for mid in mids), 0, 0)
