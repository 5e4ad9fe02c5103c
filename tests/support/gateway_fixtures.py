"""Run the real gateway daemon as a process against private brokers, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import tty
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import LocalBroker
from gateway.devices import Device
from gateway.inbox import Inbox
from gateway.ingest_mqtt import MQTTIngest
from gateway.pipeline import Pipeline
from gateway.protocol import Channel, Frame, Stat, build_frame
from gateway.store import Store
from gateway.store_rows import TELEMETRY
from tests.support.brokers import Mosquitto, free_port
from tests.support.mqtt_capture import wait_for
from tools.brokers import LOCAL_BROKER_SETTINGS

LOCAL_BROKER_EXTRA = LOCAL_BROKER_SETTINGS  # as documented for production


def device_key(device: str) -> bytes:
    return (device.encode() * 32)[:32]


def frame(device: str, seq: int, boot: int = 1, key: bytes | None = None,
          volts: float | None = None) -> bytes:
    mv = int(volts * 1000) if volts is not None else 230_000 + seq % 100
    f = Frame(device, boot=boot, seq=seq, uptime_ms=1000 * seq, period_ms=1000,
              channels=(Channel(0, 0, {"voltage": Stat(mv, min(mv, 229_000), max(mv, 231_000)),
                                       "power": 1000 + seq}),))
    return build_frame(f, device_key(device) if key is None else key)


def config_text(state_dir: Path, local: Mosquitto, cloud: Mosquitto | None,
                devices: list[str], metrics_port: int = 0, extra: str = "",
                store: str = "", uplink_port: int = 0, **uplink: object) -> str:
    """``store``: more [store] lines; ``uplink_port``: reach the cloud there (a proxy)."""
    lines = [
        "[gateway]", 'id = "gw-test"', f'state_dir = "{state_dir}"', 'log_level = "info"',
        "[local]", f"port = {local.port}",
        "[store]", "commit_interval_ms = 20", store,
        "[metrics]", f"port = {metrics_port or free_port()}",
        "[uplink]",
    ]
    if cloud is None:
        lines.append("enabled = false")
    else:
        settings = {"host": "127.0.0.1", "port": uplink_port or cloud.port, "tls": False,
                    "batch_delay_ms": 20, **uplink}
        for k, v in settings.items():
            lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                         .replace("'", '"'))
    for d in devices:
        lines += ["[[devices]]", f'id = "{d}"', f'key = "{device_key(d).hex()}"',
                  'site = "sub-1"', 'feeder = "F1"']
    return "\n".join(lines) + "\n" + extra


class GatewayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_subscribed: bool = False) -> GatewayProcess:
        """Start the daemon. The first start must wait until ingest has subscribed: only
        then does the local broker hold the gateway's session and queue frames for it."""
        before = self.log.read_text().count("subscribed to") if self.log.exists() else 0
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        if wait_subscribed and (proc.poll() is not None or not wait_for(
                lambda: proc.poll() is not None or
                self.log.read_text().count("subscribed to") > before, 30)
                or proc.poll() is not None):
            raise TimeoutError(f"gateway did not subscribe: {self.log.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


class DevicePublisher:
    """Publishes frames to the local broker as devices do (QoS 1, waits for each PUBACK)."""

    def __init__(self, port: int, qos: int = 1, login: tuple[str, str] | None = None) -> None:
        self.qos = qos
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-devices")
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, device: str, payload: bytes) -> None:
        info = self.client.publish(f"gridedge/v1/dev/{device}/frame", payload, qos=self.qos)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            raise TimeoutError("local broker did not acknowledge")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Line:
    """A pty pair whose slave is reached through a stable symlink (like /dev/serial/by-id)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()

    def plug(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(name)

    def unplug(self) -> None:
        os.close(self.master)
        self.link.unlink()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read(self) -> bytes:
        """What the gateway wrote down the line so far (nothing: b"")."""
        os.set_blocking(self.master, False)
        out = b""
        with contextlib.suppress(BlockingIOError, OSError):  # EIO: the other side is closed
            while chunk := os.read(self.master, 65536):
                out += chunk
        return out


def start_ingest(store: Store, port: int, devices: list[str],
                 local: LocalBroker | None = None) -> tuple[Pipeline, MQTTIngest]:
    """An in-process pipeline and MQTT ingest on ``store``, subscribed to the broker
    (``local``: the [local] settings, e.g. with a user name and password)."""
    inbox = Inbox()
    ingest = MQTTIngest(local or LocalBroker(port=port, client_id="ingest-test"), inbox)
    pipe = Pipeline(store, {d: Device(device_key(d)) for d in devices}, inbox,
                    commit_interval_ms=10, listeners=[ingest])
    pipe.start()
    ingest.start()
    assert wait_for(lambda: ingest.subscribed, 10), "no SUBACK"
    return pipe, ingest


def stored(store: Store) -> list[tuple[str, int, int]]:
    return [(r.device, r.boot, r.seq) for r in store.fetch(TELEMETRY, 0, 100_000)]


def leftovers(port: int, client_id: str = "ingest-test") -> int:
    """Connect as the ingest's session and count what the broker still redelivers (the
    daemon's session is ``gridedge-gateway-ingest``)."""
    got: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = lambda *_: got.append(1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    threading.Event().wait(1.5)
    c.loop_stop()
    c.disconnect()
    return len(got)


def metrics(port: int, missing_ok: bool = False) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except urllib.error.URLError:
        if missing_ok:  # not listening yet
            return {}
        raise
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
