"""Commands from the cloud to the meters: take, verify, queue, deliver, expire, answer.

Two MQTT clients, each with paho's own loop thread. On the **cloud** broker (the uplink's
settings, its own client id ``<client>-commands`` and a persistent session, so requests
sent while the gateway is away wait for it) it subscribes to ``<base>/commands`` at QoS 1.
Each request is checked (command_auth.py: an operator's Ed25519 signature, for this
gateway), queued (command_queue.py, durable; a repeated id is answered, not queued twice)
and answered. On the **local** broker it follows the devices' retained
``gridedge/v1/dev/+/status`` and publishes each queued command, sealed with the device's
downlink key (command.py), to ``gridedge/v1/dev/<device>/cmd`` at QoS 1 once the device
is online; the broker's PUBACK makes it ``delivered``. A device wired to a serial port
(``wired``: the port configured with its id) gets its commands down that line instead,
whenever the port is open; written is ``delivered``.
Every second the queue expires what is past its time, delivers what waits for a device
that is reachable, and sends again a command delivered ``redeliver_s`` ago with no result
yet (same id and counter: the meter runs it once and repeats its result; the result may
have been lost on the way up). What follows a ``key-rotate`` waits until it is answered
(or its new key seen in use), to be sealed with the key the device then holds. Answers are
JSON on the request's MQTT 5 response topic (with its correlation data) or on
``<base>/command_results``: ``{"id", "device", "state", "reason"?, "counter"?, "time"}``
with state ``accepted``, ``rejected``, ``delivered`` or ``expired``, and the device's.
A refusal is counted by reason and logged once a minute per reason at most; a request
that is unsigned, signed by an unknown key or wrongly signed (someone tried) is also
stored as a ``command_rejected`` event for the cloud's alarms topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from queue import Empty, SimpleQueue
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.alarm import Alarm
from gateway.command import Command, wrap
from gateway.command_auth import SECURITY, Authority, Refused, device_args
from gateway.command_queue import CommandQueue, Entry, Full
from gateway.config import LocalBroker, UplinkSection
from gateway.devices import Devices
from gateway.keyring import Keyring
from gateway.mqtt_client import cloud_client, no_delay
from gateway.payloads import iso_ms
from gateway.protocol import Frame

log = logging.getLogger(__name__)
STATUS = "gridedge/v1/dev/+/status"
REDELIVER_S = 20.0


class Wire(Protocol):
    """A serial line to one device (ingest_serial.SerialIngest)."""

    def reachable(self) -> bool: ...

    def send(self, message: bytes) -> bool: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class Commander:
    def __init__(self, uplink: UplinkSection, local: LocalBroker, gateway: str,
                 authority: Authority, queue: CommandQueue, devices: Devices,
                 record: Callable[[Alarm], None], wired: Mapping[str, Wire] | None = None,
                 redeliver_s: float = REDELIVER_S, keyring: Keyring | None = None) -> None:
        """``record``: stores an event for the cloud's alarms topic; ``wired``: device ->
        the serial line it is on; ``keyring``: the devices' rotated keys (key-rotate)."""
        self.keyring = keyring
        self.wired = dict(wired or {})
        self.redeliver_ms = int(redeliver_s * 1000)
        self.base = f"{uplink.topic_prefix}/{gateway}"
        self.requests = f"{self.base}/commands"
        self.results = f"{self.base}/command_results"
        self.authority, self.queue, self.devices, self.record = authority, queue, devices, record
        self.refused: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.online: set[str] = set()
        self._said: dict[str, float] = {}  # reason -> when it was last logged
        self._sent: dict[int, Entry] = {}  # local message id -> the command it carries
        self._acked: SimpleQueue[int] = SimpleQueue()  # their PUBACKs: _published
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="commands", daemon=True)
        client_id = (uplink.client_id or f"gridedge-{gateway}") + "-commands"
        self._v5 = uplink.protocol == "mqtt5"
        self.cloud = no_delay(cloud_client(uplink, client_id, clean_session=False))
        self.cloud.reconnect_delay_set(1, 30)
        self.cloud.on_connect = self._cloud_connected
        self.cloud.on_message = self._request
        self.listening = threading.Event()  # the cloud broker granted the subscription
        self.cloud.on_subscribe = self._listening
        self._cloud_at = (uplink.host, uplink.port)
        self.local = no_delay(mqtt.Client(CallbackAPIVersion.VERSION2, clean_session=False,
                                          client_id=f"{local.client_id}-commands"))
        if local.username:
            self.local.username_pw_set(local.username, local.password or None)
        self.local.reconnect_delay_set(1, 30)
        self.local.on_connect = self._local_connected
        self.local.on_message = self._status
        self.local.on_publish = self._published
        self.following = threading.Event()  # the local broker granted the status topic
        self.local.on_subscribe = lambda *_: self.following.set()
        self._local_at = (local.host, local.port)

    def set_devices(self, devices: Devices) -> None:
        self.devices = devices
        self.authority.devices = set(devices)

    def start(self) -> None:
        if self._v5:  # a session that keeps the requests sent while the gateway is away
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 7 * 86_400
            self.cloud.connect_async(*self._cloud_at, keepalive=30, clean_start=False,
                                     properties=props)
        else:
            self.cloud.connect_async(*self._cloud_at, keepalive=30)
        self.local.connect_async(*self._local_at, keepalive=30)
        for client in (self.cloud, self.local):
            client.loop_start()
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        for client in (self.cloud, self.local):
            client.disconnect()
            client.loop_stop()
        self._ticker.join(5)
        self.queue.close()

    # -- the cloud side ---------------------------------------------------------------
    def _cloud_connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.requests, qos=1)

    def _listening(self, *_: Any) -> None:
        if not self.listening.is_set():
            log.info("commands: listening on %s", self.requests)
        self.listening.set()

    def _local_connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(STATUS, qos=1)

    def _request(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        reply = getattr(props, "ResponseTopic", "") or ""
        if not _topic_ok(reply):
            reply = ""
        correlation = bytes(getattr(props, "CorrelationData", b"") or b"")[:64]
        try:
            req = self.authority.check(bytes(msg.payload))
        except Refused as e:
            self._refuse(e, reply, correlation)
            return
        try:
            entry, new = self.queue.add(req, reply=reply, correlation=correlation)
        except Full as e:
            self._refuse(Refused("queue_full", str(e), req.id, req.device), reply, correlation)
            return
        self.counts["accepted" if new else "repeated"] += 1
        self._answer(entry, "accepted" if new else entry.state)
        if self._reachable(entry.device):
            self._deliver(entry.device)

    def _refuse(self, e: Refused, reply: str, correlation: bytes) -> None:
        self.refused[e.reason] += 1
        if time.monotonic() - self._said.get(e.reason, -60.0) >= 60.0:
            self._said[e.reason] = time.monotonic()
            log.warning("command refused (%s): %s [%d so far]", e.reason, e.detail,
                        self.refused[e.reason])
        self._publish_answer(reply, correlation, {
            "id": e.request_id, "device": e.device, "state": "rejected", "reason": e.reason,
            "time": iso_ms(now_ms())})
        if e.reason in SECURITY:
            self.record(Alarm("command_rejected", "event", "", now_ms(), feeder="",
                              evidence={"reason": e.reason, "request_id": e.request_id,
                                        "target": e.device, "detail": e.detail[:200]}))

    def _answer(self, entry: Entry, state: str, reason: str = "") -> None:
        body: dict[str, object] = {"id": entry.id, "device": entry.device, "state": state,
                                   "counter": entry.counter, "time": iso_ms(now_ms())}
        if reason:
            body["reason"] = reason
        self._publish_answer(entry.reply, entry.correlation, body)

    def _publish_answer(self, reply: str, correlation: bytes, body: dict[str, object]) -> None:
        props = None
        if correlation and self._v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        self.cloud.publish(reply or self.results, json.dumps(body), qos=1, properties=props)

    # -- the local side ---------------------------------------------------------------
    def _status(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[3] if msg.topic.count("/") == 4 else ""
        if device not in self.devices:
            return
        if msg.payload == b"online":
            self.online.add(device)
            self._deliver(device)
        else:
            self.online.discard(device)

    def _reachable(self, device: str) -> bool:
        wire = self.wired.get(device)
        return wire.reachable() if wire is not None else device in self.online

    def _deliver(self, device: str, entries: list[Entry] | None = None) -> None:
        """Send the device its queued commands (or ``entries``, delivered before)."""
        dev = self.devices[device]
        if entries is None and self._rotating(device):
            return  # what waits goes once the device's frames show its new key
        key = self.keyring.keys(device, dev).current if self.keyring else dev.key
        wire = self.wired.get(device)
        with self._lock:
            for entry in self.queue.pending(device, now_ms()) if entries is None else entries:
                if any(e.id == entry.id and e.device == device for e in self._sent.values()):
                    continue  # on its way
                args = device_args(entry.op, entry.args)
                if entry.op == "key-rotate" and self.keyring is not None:
                    # The next key, made and stored before it leaves, wrapped for this
                    # command alone (its counter) under the key the device holds.
                    key, new = self.keyring.begin(device, dev)
                    args = {"key": wrap(new, key, entry.counter).hex()}
                sealed = Command(device, entry.counter, entry.expires_ms, entry.id.encode(),
                                 entry.op, args, now_ms()).seal(key)
                if wire is None:
                    info = self.local.publish(f"gridedge/v1/dev/{device}/cmd", sealed, qos=1)
                    self._sent[info.mid] = entry
                elif wire.send(sealed):
                    self._delivered(entry)
                if entry.op == "key-rotate":
                    # The device opens what follows with its new key: the rest goes at a
                    # later tick, sealed with the key its frames then show it holds.
                    break
            self._matched()

    def _rotating(self, device: str) -> bool:
        """Whether a key-rotate was delivered to the device and is not yet answered (its
        result, or its new key seen in use: _rotated)."""
        if self.keyring is None or not self.keyring.rotating(device, self.devices[device]):
            return False
        now = now_ms()
        return any(e.op == "key-rotate"
                   for e in self.queue.unanswered(now + 1, now).get(device, []))

    def _published(self, _c: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        # paho calls this holding its lock of outgoing messages, which publish() takes
        # too; _deliver publishes holding self._lock. Waiting here for self._lock could
        # deadlock the two (it did, under a burst of update chunks): the PUBACK is noted,
        # and matched to its command now if the lock is free, else by whoever holds it
        # (_deliver, as it ends) or by the next tick.
        self._acked.put(mid)
        if self._lock.acquire(blocking=False):
            try:
                self._matched()
            finally:
                self._lock.release()

    def _matched(self) -> None:
        """The commands whose PUBACKs came, delivered (called holding self._lock)."""
        while True:
            try:
                entry = self._sent.pop(self._acked.get_nowait(), None)
            except Empty:
                return
            if entry is not None:
                self._delivered(entry)

    def _delivered(self, entry: Entry) -> None:
        self.queue.mark(entry.device, entry.id, "delivered")
        if entry.state == "queued":
            self.counts["delivered"] += 1
            self._answer(entry, "delivered")
        else:
            self.counts["redelivered"] += 1

    def committed(self, frames: list[Frame], devices: Devices) -> None:
        """A batch is stored (pipeline.Listener): the devices' results of commands
        (key 9 of their frames) answered, and their commands marked done/failed."""
        for frame in frames:
            for cid, state, reason in frame.results:
                entry = self.queue.get(frame.device_id, cid.decode("ascii", "replace"))
                if entry is None:
                    continue  # not ours (sent before this queue, or by a test)
                if state != "refused" or reason != "duplicate":  # a duplicate: not news
                    self.queue.mark(entry.device, entry.id, state)
                self.counts[state] += 1
                self._answer(entry, state, reason)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._matched()
            now = now_ms()
            for entry in self.queue.expire(now):
                self.counts["expired"] += 1
                self._answer(entry, "expired", "" if entry.state == "queued" else
                             "delivered, no result")
            for device in self.queue.waiting(now):
                if device in self.devices and self._reachable(device):
                    self._deliver(device)
            for device, entries in self.queue.unanswered(now - self.redeliver_ms,
                                                         now).items():
                if device in self.devices and self._reachable(device):
                    self._deliver(device, entries)
            self._rotated(now)

    def _rotated(self, now: int) -> None:
        """A delivered key-rotate whose result was lost is done all the same once the
        device's frames verify with its new key (verify.py promoted it)."""
        ring = self.keyring
        if ring is None:
            return
        for device, entries in self.queue.unanswered(now + 1, now).items():
            dev = self.devices.get(device)
            for entry in entries:
                if entry.op == "key-rotate" and dev is not None and \
                        not ring.rotating(device, dev):
                    self.queue.mark(device, entry.id, "done")
                    self.counts["done"] += 1
                    self._answer(entry, "done", "new key in use")


def _topic_ok(topic: str) -> bool:
    return 0 < len(topic) <= 256 and not any(c in topic for c in "+#\x00")
