"""Uplink to the cloud broker: batches out of the store, deleted only after their PUBACK.

One thread owns the paho client and drives its network loop itself (no paho reconnect
thread), so the retry policy is ours: capped exponential backoff with jitter. Each
iteration it takes batches - stored alarms, then readings held in memory (hold.py: their
local PUBACKs go out when the cloud's arrive), then stored telemetry - publishes them with
QoS 1 as one JSON array (or CBOR) per message to ``<prefix>/<gateway>/readings|alarms``,
keeps at most ``max_inflight`` messages unacknowledged, and deletes a batch's records when
its PUBACK arrives. A message unacknowledged for ``ack_timeout_s`` means a half-open link:
the connection is dropped and rebuilt. After any reconnect the unacknowledged records are
read again and resent: every record carries (device, boot, seq), so the cloud de-duplicates.
TLS verifies the broker against ``ca_file`` and is on unless configured off; the config
refuses TLS without a CA. Birth and last will are retained on ``<prefix>/<gateway>/status``;
the daemon's figures (store depth, ingest counts, open alarms, uplink) go every
``health_interval_s`` to ``<prefix>/<gateway>/health``, retained. The uplink opens the
hold when it is connected and has emptied the store; a lost link, a half-open one or a
slow PUBACK spills what is held into the store.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import UplinkSection
from gateway.devices import Devices
from gateway.hold import Held, Hold
from gateway.link import DISCONNECTED, REFUSED, Link
from gateway.mqtt_client import cloud_client
from gateway.outbox import Outbox
from gateway.payloads import iso_ms
from gateway.protocol import Frame
from gateway.store import Store
from gateway.store_rows import ALARM, TELEMETRY, Stored

log = logging.getLogger(__name__)
TOPICS = {ALARM: "alarms", TELEMETRY: "readings"}
CONTENT_TYPES = {"json": "application/json", "cbor": "application/cbor"}


class Uplink:
    def __init__(self, cfg: UplinkSection, gateway_id: str, store: Store,
                 hold: Hold | None = None,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        """``hold``: readings sent from memory (hold.py), if any; ``health``: the
        daemon's figures for the retained <base>/health message (None: not sent)."""
        self.cfg = cfg
        self.store = store
        self.base = f"{cfg.topic_prefix}/{gateway_id}"
        self.status_topic = f"{self.base}/status"
        self.gateway_id = gateway_id
        self.connected = False
        self.link = Link("uplink", f"the cloud broker {cfg.host}:{cfg.port}", log)
        self._answered = False  # a CONNACK arrived on the current attempt
        self.connects = 0
        self.failures = 0
        self.delivered = 0
        self.published = 0
        self.progress = time.monotonic()
        # message id -> (sent at, store ids); held readings' messages are in the hold
        self._inflight: dict[int, tuple[float, list[int]]] = {}
        self.hold = hold
        self.outbox = Outbox(store, cfg)  # what goes next, and what to delete
        self._backoff = cfg.backoff_min_s
        self._next_try = 0.0
        self._held_due: float | None = None  # unix time a partial held batch goes anyway
        self._stop = threading.Event()
        self.wake = threading.Event()  # set after each commit (``committed``)
        self.health = health
        self._health_due = 0.0
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self.client = self._make_client()
        self._props: Properties | None = None
        if cfg.protocol == "mqtt5":  # lets a backend dispatch on the payload format
            self._props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._props.ContentType = CONTENT_TYPES[cfg.format]

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = cloud_client(cfg, cfg.client_id or f"gridedge-{self.gateway_id}",
                              clean_session=True)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Give in-flight messages a moment to be acknowledged, then disconnect cleanly;
        what is still held goes into the store."""
        deadline = time.monotonic() + drain_s
        while self._inflight and self.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=drain_s + 5)
        if self.hold is not None:
            self.hold.spill("the gateway is stopping")

    def committed(self, frames: list[Frame], devices: Devices) -> None:
        """A batch is in the store or the hold (pipeline.Listener): time to send."""
        self.wake.set()

    # -- paho callbacks (run in our thread, inside client.loop) ------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._answered = True
        if rc.is_failure:
            self.link.down(REFUSED, str(rc))
            return
        self.connected = True
        self.connects += 1
        self._health_due = 0.0  # a fresh connection gets fresh figures
        self._backoff = self.cfg.backoff_min_s
        client.publish(self.status_topic, json.dumps(
            {"state": "online", "gateway": self.gateway_id,
             "since": iso_ms(int(time.time() * 1000))}),
            qos=1, retain=True)
        self.link.up()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self._stop.is_set() and not rc.is_failure:
            self.link.closed()  # our own clean disconnect at shutdown: no warning
        elif self.connected:
            self.link.down(DISCONNECTED, "connection lost" if str(rc) == "Unspecified error"
                           else str(rc))
        self._lost()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        failed = bool(getattr(rc, "is_failure", False))
        if not failed and not entry[1] and self.hold is not None:
            self.delivered += self.hold.delivered(mid)  # its local PUBACKs go out now
            return
        if failed:
            # MQTT 5: a PUBACK with an error reason (quota exceeded, not authorised, …) means
            # the broker did not take the message: keep the records, reconnect, resend.
            log.warning("uplink: the cloud broker refused a message (%s); reconnecting", rc)
            self.failures += 1
            self.client.disconnect()
            self._lost()
            return
        self.outbox.delivered(entry[1])
        self.delivered += len(entry[1])

    def _lost(self) -> None:
        self.connected = False
        if self.hold is not None:
            self.hold.spill("the cloud link was lost")
        self._inflight.clear()
        self.outbox.rewind()  # resend what was not acknowledged
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        jitter = random.uniform(0.75, 1.25)
        self._next_try = time.monotonic() + self._backoff * jitter
        self._backoff = min(self.cfg.backoff_max_s, self._backoff * 2)

    # -- the loop -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.progress = time.monotonic()
            if not self.connected:
                self._try_connect()
                if not self.connected:
                    self._stop.wait(0.05)
                    continue
            self.client.loop(timeout=0.0)
            self.outbox.flush(force=not self._inflight)
            if not self.connected:
                continue
            self._check_ack_timeout()
            if self.hold is not None and self.hold.overdue():
                self.hold.spill(f"the cloud took over {self.hold.max_age_s:.0f} s to "
                                "acknowledge")
            self._send_health()
            if not self._send_some():
                # Idle: sleep until the committer stores something, PUBACKs may be due, or
                # a partial batch has waited its batch_delay_ms.
                timeout = 0.005 if self._inflight else 0.02
                for due in (self.outbox.batch_due, self._held_due):
                    if due is not None:
                        timeout = max(0.0, min(timeout, due - time.time()))
                self.wake.wait(timeout)
                self.wake.clear()
        self.outbox.flush(force=True)
        if self.connected:
            self.client.publish(self.status_topic, json.dumps({"state": "offline"}),
                                qos=1, retain=True)
            self.client.loop(timeout=0.1)
            self.client.disconnect()

    def _send_health(self) -> None:
        """Retained, QoS 0: a dashboard wants the latest figures, not a backlog of them."""
        now = time.monotonic()
        if self.health is None or not self.cfg.health_interval_s or now < self._health_due:
            return
        self._health_due = now + self.cfg.health_interval_s
        body = {"gateway": self.gateway_id, "time": iso_ms(int(time.time() * 1000)),
                **self.health(),
                "uplink": {"connects": self.connects, "delivered": self.delivered,
                           "inflight": len(self._inflight)}}
        self.client.publish(f"{self.base}/health", json.dumps(body), qos=0, retain=True)

    def _try_connect(self) -> None:
        if time.monotonic() < self._next_try:
            return
        self._answered = False
        try:
            self.client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        except (OSError, ssl.SSLError, ValueError) as e:
            self.failures += 1
            self.link.down(DISCONNECTED, str(e) or type(e).__name__)
            self._schedule_retry()
            return
        deadline = time.monotonic() + 10
        closed = False
        while not self.connected and time.monotonic() < deadline and not self._stop.is_set():
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                closed = True
                break
        if not self.connected:
            self.failures += 1
            if not self._answered:  # a REFUSED CONNACK has been reported already
                hint = "" if self.cfg.tls else " (a TLS-only port? uplink.tls is off)"
                self.link.down(DISCONNECTED, ("the connection closed" if closed else
                                              "no answer within 10 s") +
                               f" before the broker answered the MQTT CONNECT{hint}")
            self.client.disconnect()
            self._schedule_retry()

    def _check_ack_timeout(self) -> None:
        if not self._inflight:
            return
        oldest = next(iter(self._inflight.values()))[0]  # PUBACKs come in order
        if time.monotonic() - oldest > self.cfg.ack_timeout_s:
            self.link.down(DISCONNECTED, f"no PUBACK for {self.cfg.ack_timeout_s:.0f} s: "
                           "a half-open connection, dropped")
            self.failures += 1
            self.client.disconnect()
            self._lost()

    def _send_some(self) -> int:
        """Alarms from the store first, then held readings, then stored telemetry."""
        sent = 0
        while self.connected and len(self._inflight) < self.cfg.max_inflight:
            limit = self.outbox.limit()
            if not limit:
                break  # the drain rate says wait
            batch = self.outbox.alarms(limit)
            if not batch:
                n = self._send_held(limit)  # held readings first...
                if n:
                    sent += n
                    continue
                rows = self.outbox.telemetry(limit)  # ...but a partial batch waits: stored
                if rows is None and self.hold is not None and not self._inflight_store():
                    self.hold.open()  # caught up: new readings may skip the store
                batch = rows or []
            if not batch or not self._publish(batch):
                break
            sent += len(batch)
        return sent

    def _send_held(self, limit: int) -> int:
        """How many held readings went out (0: none held, a partial batch waits, or paho
        refused)."""
        if self.hold is None or not self.hold.waiting():
            return 0
        # A half-full hold goes at once: the other half takes what arrives while the
        # cloud acknowledges; waiting for batch_size would only push readings to the store.
        n, due = self.hold.send(min(limit, max(1, self.hold.max_records // 2)),
                                self.cfg.batch_delay_ms / 1000, self._publish_held)
        self._held_due = None if due is None else time.time() + due - time.monotonic()
        return n

    def _inflight_store(self) -> bool:
        """Stored records still on their way (the store is not empty until they land)."""
        return any(ids for _, ids in self._inflight.values())

    def _send(self, priority: int, bodies: list[bytes], count: int) -> int | None:
        """Publish one batch; its message id, or None (and the link marked lost)."""
        if self.cfg.format == "json":
            payload = b"[" + b",".join(bodies) + b"]"
        else:
            payload = cbor2.dumps([json.loads(body) for body in bodies])
        info = self.client.publish(f"{self.base}/{TOPICS[priority]}", payload, qos=1,
                                   properties=self._props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("uplink: publish refused (%s); reconnecting", mqtt.error_string(info.rc))
            self.client.disconnect()
            self._lost()
            return None
        self.published += count
        return info.mid

    def _publish(self, rows: list[Stored]) -> bool:
        """Hand one stored batch to paho; False (and the link marked lost) if it refused."""
        mid = self._send(rows[0].priority, [r.body for r in rows], len(rows))
        if mid is None:
            return False
        self._inflight[mid] = (time.monotonic(), [r.id for r in rows])
        self.outbox.sent(rows)
        return True

    def _publish_held(self, items: list[Held]) -> int | None:
        """Hand a batch of held readings to paho (called by Hold.send, under its lock)."""
        mid = self._send(TELEMETRY, [h.record.body for h in items], len(items))
        if mid is not None:
            self._inflight[mid] = (time.monotonic(), [])
            self.outbox.spent(len(items))
        return mid
