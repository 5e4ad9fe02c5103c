"""``gridedge tail``: read the gateway's cloud topics as a backend does, one record per line.

An MQTT v5 client subscribes with QoS 1 to ``<prefix>/<gateway>/readings`` and ``…/alarms``
(prefix ``gridedge/v1/gw``, gateway ``+``: every gateway), or with ``--share GROUP`` to
``$share/GROUP/<prefix>/<gateway>/readings`` and ``…/alarms``, so that several consumers, on one
machine or many, split one stream between them. Each message is a batch of records: a
JSON array, or a CBOR array (recognised by the MQTT v5 ContentType ``application/cbor``,
or by its first byte when a gateway on MQTT 3.1.1 sends no properties). Every record is
written as one JSON line with the topic's gateway id and stream added.

Nothing acknowledged is lost: the client acknowledges a message (PUBACK, paho's manual
ack) only after all its lines are written and flushed, so a consumer killed at any instant
leaves the unacknowledged messages with the broker. With ``--client-id`` the session is
persistent (clean start off, ``--session-expiry`` seconds): a consumer restarted with the
same id gets what was queued for it meanwhile. Without one the id is random and the session
ends with the connection (a random id cannot be resumed, and a session left behind would
keep taking its share of a shared subscription).

Delivery is at least once, so records can come twice (gateway resends after a reconnect,
broker redeliveries). ``--dedup`` drops records this process has already written, within
a bounded window of identities: readings by (device, boot, seq); alarms and events by
(gateway, id), the ``id`` being unique per gateway (docs/cloud.md, "Identity"). The window
is per process: two consumers of a shared subscription do not see each other's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TextIO

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tools.errors import ToolError

DEFAULT_PREFIX = "gridedge/v1/gw"  # as monitor's; then <gateway>/<stream>
STREAMS = ("readings", "alarms")
FORMATS = ("ndjson", "json")
_JSON_START = frozenset(b"[{ \t\r\n")  # a CBOR array never starts with one of these bytes


class TailError(ToolError):
    """A problem reported to the user as one line (bad option, broker refusal, output)."""


@dataclass
class TailOptions:
    host: str
    port: int = 1883
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_env: str | None = None
    share: str | None = None
    prefix: str = DEFAULT_PREFIX
    gateway: str = "+"  # one gateway's id, or every gateway
    format: str = "ndjson"
    count: int = 0  # stop after at least this many records (0: no limit)
    duration: float = 0.0  # stop after this many seconds (0: no limit)
    dedup: bool = False
    dedup_window: int = 100_000
    client_id: str | None = None
    session_expiry: int = 3600
    keepalive: int = 30


class Window:
    """The last ``size`` identities written; the least recently seen is forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Hashable) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)


def identity(stream: str, gateway: str, record: dict[str, Any]) -> Hashable | None:
    """The de-duplication key of a record, or None when it has none (never dropped).

    Readings: (device, boot, seq), the identity of the frame end to end. Alarms and
    events: (gateway, id), the gateway's unique id of the record (docs/cloud.md,
    "Identity"); a record without a usable ``id`` is keyed by its whole content instead,
    so that only an identical resend is dropped."""
    if stream == "readings":
        device, boot, seq = record.get("device"), record.get("boot"), record.get("seq")
        if isinstance(device, str) and type(boot) is int and type(seq) is int:
            return ("reading", device, boot, seq)
        return None
    ident = record.get("id")
    if isinstance(ident, str) and ident:
        return ("alarm", gateway, ident)
    return ("alarm-body", gateway, json.dumps(record, sort_keys=True, separators=(",", ":")))


def decode(payload: bytes | bytearray, content_type: str | None = None) -> list[dict[str, Any]]:
    """The records of one message: by the v5 ContentType if there is one, else by sniffing."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct == "application/cbor" or (ct != "application/json" and payload[:1]
                                    and payload[0] not in _JSON_START):
        data = cbor2.loads(payload)
    else:
        data = json.loads(payload)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError("payload is not an array of records")
    return data


def split_topic(topic: str) -> tuple[str, str]:
    """(gateway, stream) of ``…/<gateway>/<stream>``."""
    parts = topic.split("/")
    return (parts[-2] if len(parts) >= 2 else ""), parts[-1]


def subscriptions(prefix: str, gateway: str, share: str | None) -> list[str]:
    if "#" in prefix:
        raise TailError(f"--prefix {prefix!r}: a prefix cannot contain '#' (use '+')")
    if not gateway or "#" in gateway or "/" in gateway:
        raise TailError(f"--gateway {gateway!r}: one gateway id, or + for every gateway")
    prefix = f"{prefix.rstrip('/')}/{gateway}/"
    if share is not None and (not share or any(c in share for c in "/+#")):
        raise TailError(f"--share {share!r}: a group name is not empty and has no / + #")
    base = f"$share/{share}/{prefix}" if share is not None else prefix
    return [base + s for s in STREAMS]


class Tail:
    """One consumer: connect, subscribe, write records, acknowledge after the write."""

    def __init__(self, opts: TailOptions, out: TextIO, err: TextIO) -> None:
        if opts.format not in FORMATS:
            raise TailError(f"--format must be one of {', '.join(FORMATS)}")
        for name, value, low in (("--count", opts.count, 0), ("--duration", opts.duration, 0),
                                 ("--dedup-window", opts.dedup_window, 1),
                                 ("--session-expiry", opts.session_expiry, 0),
                                 ("--port", opts.port, 1)):
            if value < low:
                raise TailError(f"{name} must be at least {low}, got {value}")
        if opts.session_expiry > 0xFFFFFFFF:
            raise TailError("--session-expiry must be at most 4294967295 s")
        self.opts = opts
        self.out = out
        self.err = err
        self.topics = subscriptions(opts.prefix, opts.gateway, opts.share)
        self.window = Window(opts.dedup_window) if opts.dedup else None
        self.records = 0  # lines written
        self.messages = 0  # messages acknowledged
        self.duplicates = 0  # records dropped by --dedup
        self.skipped = 0  # messages that could not be decoded (acknowledged, reported)
        self.persistent = bool(opts.client_id) and opts.session_expiry > 0
        self.client_id = opts.client_id or f"gridedge-tail-{uuid.uuid4().hex[:12]}"
        self._done = threading.Event()
        self._error: str | None = None
        self._connected_once = False
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        o = self.opts
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if o.tls or o.ca or o.cert:
            try:
                client.tls_set(ca_certs=o.ca or None, certfile=o.cert or None,
                               keyfile=o.key or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise TailError(f"TLS set-up: {e}") from e
        if o.user:
            password = None
            if o.password_env:
                password = os.environ.get(o.password_env)
                if password is None:
                    raise TailError(f"--password-env: environment variable {o.password_env} "
                                    "is not set")
            client.username_pw_set(o.user, password)
        elif o.password_env:
            raise TailError("--password-env needs --user")
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- paho callbacks (the network thread) ---------------------------------------------
    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message
        self._done.set()

    def _note(self, message: str) -> None:
        with contextlib.suppress(OSError):
            print(f"gridedge tail: {message}", file=self.err, flush=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._fail(f"{self.opts.host}:{self.opts.port} refused the connection: {rc}")
            return
        if self.persistent and self._connected_once and not flags.session_present:
            self._note("the broker no longer had this client's session: messages queued "
                       "for it while it was away are gone")
        self._connected_once = True
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        for topic, rc in zip(self.topics, codes, strict=False):
            if rc.is_failure:
                self._fail(f"the broker refused the subscription to {topic}: {rc}")
                return
        session = f"session {self.client_id} kept {self.opts.session_expiry} s" \
            if self.persistent else "no session kept"
        self._note(f"subscribed to {', '.join(self.topics)} ({session})")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._done.is_set():
            self._note(f"connection to {self.opts.host}:{self.opts.port} lost ({rc}); "
                       "reconnecting")

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._done.is_set():
            return  # stopping: not written, so not acknowledged; the broker keeps it
        try:
            self._handle(client, msg)
        except Exception as e:  # a bug must end the run with a message, not hang it
            self._fail(f"internal error on a message from {msg.topic}: {e!r}")

    def _handle(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        gateway, stream = split_topic(msg.topic)
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties else None
        try:
            lines, keys = self._render(decode(msg.payload, ctype), gateway, stream)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            # A message no consumer can read would come back forever: report and drop it.
            self.skipped += 1
            self._note(f"skipped an undecodable message on {msg.topic} "
                       f"({len(msg.payload)} bytes): {e}")
            client.ack(msg.mid, msg.qos)
            return
        try:
            if lines:
                self.out.write("".join(lines))
                self.out.flush()
        except (OSError, ValueError) as e:  # ValueError: output closed
            self._fail(f"cannot write the output: {e}")
            return  # not acknowledged: the broker keeps the message
        if self.window is not None:
            for k in keys:
                self.window.add(k)
        self.records += len(lines)
        client.ack(msg.mid, msg.qos)
        self.messages += 1
        if self.opts.count and self.records >= self.opts.count:
            self._done.set()

    def _render(self, records: list[dict[str, Any]], gateway: str,
                stream: str) -> tuple[list[str], list[Hashable]]:
        lines: list[str] = []
        keys: list[Hashable] = []
        indent = 2 if self.opts.format == "json" else None
        seps = (",", ": ") if indent else (",", ":")
        for rec in records:
            if self.window is not None:
                key = identity(stream, gateway, rec)
                if key is not None:
                    if key in self.window or key in keys:
                        self.duplicates += 1
                        continue
                    keys.append(key)
            out = {**rec, "gateway": gateway, "stream": stream}
            lines.append(json.dumps(out, indent=indent, separators=seps, allow_nan=False)
                         + "\n")
        return lines, keys

    # -- the main thread ------------------------------------------------------------
    def run(self) -> int:
        o = self.opts
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = o.session_expiry if self.persistent else 0
        try:
            self.client.connect(o.host, o.port, keepalive=o.keepalive,
                                clean_start=not self.persistent, properties=props)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TailError(f"cannot connect to {o.host}:{o.port}: {e}") from e
        restore = self._install_sigterm()
        self.client.loop_start()
        try:
            deadline = time.monotonic() + o.duration if o.duration else None
            while not self._done.is_set():
                wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if wait <= 0:
                    break
                self._done.wait(wait)
        finally:
            self._done.set()
            self.client.disconnect()
            self.client.loop_stop()
            restore()
        if self._error is not None:
            raise TailError(self._error)
        return 0

    def _install_sigterm(self) -> Callable[[], object]:
        """SIGTERM stops cleanly (main thread only); returns what restores the old handler."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = signal.signal(signal.SIGTERM, lambda *_: self._done.set())
        return lambda: signal.signal(signal.SIGTERM, old)


def main(opts: TailOptions) -> int:
    return Tail(opts, sys.stdout, sys.stderr).run()
