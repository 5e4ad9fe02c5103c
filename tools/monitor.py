"""`gridedge monitor`: a live terminal dashboard of the gateways' cloud topics.

Subscribes (MQTT v5, clean start, QoS 1) to ``<prefix>/+/readings``, ``/alarms``,
``/status`` and ``/health``; the paho thread only queues the messages, and the main thread
folds them into a MonitorState (monitor_model, no I/O) and redraws the frame
(monitor_view.render) ``--refresh`` times a second with rich.live. Ctrl-C, SIGTERM or the
end of ``--duration`` stop it cleanly: the screen is restored, the client disconnected
and its loop stopped. ``--snapshot FILE`` then writes the last frame as plain text (120
columns). Connection problems raise MonitorError: one line for the user.
"""

from __future__ import annotations

import os
import queue
import signal
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console, RenderableType
from rich.live import Live

from tools.errors import ToolError
from tools.monitor_model import MonitorState
from tools.monitor_view import render, snapshot_text

KINDS = ("readings", "alarms", "status", "health")


class MonitorError(ToolError):
    """A problem for the user (connection, credentials), said in one line."""


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca: str | None = None
    cert: str | None = None  # client certificate and key (mutual TLS)
    key: str | None = None
    user: str | None = None
    password_env: str | None = None
    prefix: str = "gridedge/v1/gw"
    duration: float | None = None
    snapshot: Path | None = None
    refresh: float = 2.0


Message = tuple[str, bytes, str | None]


def _client(opts: Options, inbox: queue.SimpleQueue[Message], state: MonitorState,
            connack: queue.SimpleQueue[str]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"gridedge-monitor-{uuid.uuid4().hex[:8]}")
    if opts.tls or opts.ca or opts.cert:
        try:
            client.tls_set(ca_certs=opts.ca, certfile=opts.cert, keyfile=opts.key,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise MonitorError(f"TLS set-up: {e}") from e
    if opts.user:
        password = None
        if opts.password_env:
            password = os.environ.get(opts.password_env)
            if password is None:
                raise MonitorError(f"environment variable {opts.password_env} is not set")
        client.username_pw_set(opts.user, password)
    client.reconnect_delay_set(1, 30)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            connack.put(str(rc))
            return
        state.connected = True
        c.subscribe([(f"{opts.prefix}/+/{kind}", 1) for kind in KINDS])
        connack.put("")

    def on_subscribe(_c: mqtt.Client, _u: Any, _m: int, codes: list[Any], _p: Any) -> None:
        refused = [str(rc) for rc in codes if rc.is_failure]
        state.problem = f"subscription refused: {refused[0]}" if refused else ""

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        state.connected = False

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties else None
        inbox.put((msg.topic, bytes(msg.payload), ctype))

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_subscribe, client.on_message = on_subscribe, on_message
    return client


def _connect(client: mqtt.Client, opts: Options, connack: queue.SimpleQueue[str]) -> None:
    where = f"{opts.host}:{opts.port}"
    try:
        client.connect(opts.host, opts.port, keepalive=30, clean_start=True)
    except (OSError, ValueError) as e:  # refused, unknown host, TLS verification
        raise MonitorError(f"cannot connect to {where}: {e}") from e
    client.loop_start()
    try:
        refused = connack.get(timeout=10)
    except queue.Empty:
        refused = "no CONNACK within 10 s"
    if refused:
        client.loop_stop()
        client.disconnect()
        raise MonitorError(f"broker {where} refused the connection: {refused}")


def run(opts: Options) -> int:
    """The dashboard until Ctrl-C (exit status 130, as `gridedge tail`), SIGTERM or the end
    of ``duration`` (0)."""
    state = MonitorState()
    state.broker = f"{opts.host}:{opts.port}"
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    connack: queue.SimpleQueue[str] = queue.SimpleQueue()
    client = _client(opts, inbox, state, connack)
    _connect(client, opts, connack)
    stop = threading.Event()

    def on_term(_s: int, _f: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    probe = Console()
    console = probe if probe.is_terminal else Console(width=120, height=40)
    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    status = 0

    def drain() -> None:
        while True:
            try:
                topic, payload, ctype = inbox.get_nowait()
            except queue.Empty:
                return
            state.feed(topic, payload, ctype, time.time())

    def frame() -> RenderableType:
        return render(state, time.time(), height=console.size.height)

    try:
        with Live(frame(), console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set():
                drain()
                live.update(frame(), refresh=True)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                stop.wait(1 / opts.refresh if left is None else min(left, 1 / opts.refresh))
            drain()
            live.update(frame(), refresh=True)
    except KeyboardInterrupt:  # Live has restored the terminal on its way out
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The last frame as it was on screen: taken before the disconnect.
        last = snapshot_text(state, time.time()) if opts.snapshot is not None else ""
        client.disconnect()
        client.loop_stop()
    if opts.snapshot is not None:
        opts.snapshot.write_text(last, encoding="utf-8")
    return status
