"""Parts for command tests: a meter on the local broker, and a running commander."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.alarm import Alarm
from gateway.command_auth import Authority
from gateway.command_queue import CommandQueue
from gateway.commander import Commander
from gateway.config import LocalBroker, UplinkSection
from gateway.devices import Device
from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import device_key

OPERATOR = bytes(range(32))
GW = "gw-test"


class Meter:
    """A device on the local broker: a persistent session on its command topic, and its
    retained status."""

    def __init__(self, port: int, device: str) -> None:
        self.device, self.got = device, []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device,
                                  clean_session=False)
        self.client.on_message = lambda _c, _u, m: self.got.append(bytes(m.payload))
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"gridedge/v1/dev/{device}/cmd", qos=1)
        assert done.wait(10)

    def status(self, state: str) -> None:
        self.client.publish(f"gridedge/v1/dev/{self.device}/status", state, qos=1,
                            retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def public(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def start_commander(folder: Path, local: Mosquitto, cloud: Mosquitto,
              events: list[Alarm]) -> Commander:
    devices = {d: Device(device_key(d)) for d in ("mtr-1", "mtr-2")}
    c = Commander(UplinkSection(host="127.0.0.1", port=cloud.port, tls=False),
                  LocalBroker(port=local.port), GW,
                  Authority(GW, [public(OPERATOR)], set(devices)),
                  CommandQueue(folder / "commands.db"), devices, events.append)
    c.start()
    assert c.listening.wait(10) and c.following.wait(10)
    return c
