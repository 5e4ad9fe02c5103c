"""Run the real gateway daemon as a process against private brokers, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from brokers import Mosquitto, free_port
from gridedge.gateway.protocol import Channel, Frame, Stat, build_frame
from mqtt_capture import wait_for

# Production local brokers need this too: Mosquitto queues at most 1000 messages per
# offline client by default, and the gateway's session must hold a whole outage.
LOCAL_BROKER_EXTRA = "max_queued_messages 1000000\nmax_queued_bytes 0\n"


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
                **uplink: object) -> str:
    lines = [
        "[gateway]", 'id = "gw-test"', f'state_dir = "{state_dir}"', 'log_level = "info"',
        "[local]", f"port = {local.port}",
        "[store]", "commit_interval_ms = 20",
        "[metrics]", f"port = {metrics_port or free_port()}",
        "[uplink]",
    ]
    if cloud is None:
        lines.append("enabled = false")
    else:
        settings = {"host": "127.0.0.1", "port": cloud.port, "tls": False,
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
            [sys.executable, "-m", "gridedge.gateway.cli", "run", "--config", str(self.config)],
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

    def __init__(self, port: int, qos: int = 1) -> None:
        self.qos = qos
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-devices")
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

