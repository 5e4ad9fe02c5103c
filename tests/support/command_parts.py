"""Parts for command tests: a meter on the local broker, and a running commander."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.alarm import Alarm
from gateway.command_auth import Authority
from gateway.command_queue import CommandQueue
from gateway.commander import Commander
from gateway.config import LocalBroker, UplinkSection
from gateway.devices import Device
from tests.support.brokers import Mosquitto
from tests.support.firmware_fixtures import DEVICE, KEY
from tests.support.fwrunner import REPO
from tests.support.gateway_fixtures import GatewayProcess, config_text, device_key
from tests.support.mqtt_capture import wait_for

OPERATOR = bytes(range(32))
GW = "gw-test"
RESULT = Draft202012Validator(
    json.loads((REPO / "docs" / "schemas" / "command_result.schema.json").read_text()),
    format_checker=Draft202012Validator.FORMAT_CHECKER)
REQUEST = Draft202012Validator(
    json.loads((REPO / "docs" / "schemas" / "command.schema.json").read_text()))


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
                    events: list[Alarm], **kw: Any) -> Commander:
    """``kw``: Commander's own (wired, redeliver_s)."""
    devices = {d: Device(device_key(d)) for d in ("mtr-1", "mtr-2")}
    c = Commander(UplinkSection(host="127.0.0.1", port=cloud.port, tls=False),
                  LocalBroker(port=local.port), GW,
                  Authority(GW, [public(OPERATOR)], set(devices)),
                  CommandQueue(folder / "commands.db"), devices, events.append, **kw)
    c.start()
    assert c.listening.wait(10) and c.following.wait(10)
    return c


class Operator:
    """The control room: an MQTT 5 client that signs, publishes with a response topic and
    correlation data, and collects the answers."""

    def __init__(self, port: int) -> None:
        self.answers: list[tuple[str, dict[str, Any], bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"ops-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, m: self.answers.append((
            m.topic, json.loads(m.payload),
            bytes(getattr(m.properties, "CorrelationData", b"") or b"")))
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([("ops/replies", 1), (f"gridedge/v1/gw/{GW}/command_results", 1)])
        assert done.wait(10)

    def send(self, request: dict[str, Any] | bytes, correlation: bytes = b"") -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "ops/replies"
        if correlation:
            props.CorrelationData = correlation
        if not isinstance(request, bytes) and "signature" in request:
            REQUEST.validate(request)  # what the docs say a request is, as signed here
        payload = request if isinstance(request, bytes) else json.dumps(request)
        self.client.publish(f"gridedge/v1/gw/{GW}/commands", payload, qos=1,
                            properties=props).wait_for_publish(10)

    def states(self, cid: str) -> list[str]:
        return [a["state"] for _t, a, _c in list(self.answers) if a.get("id") == cid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        for _t, answer, _c in self.answers:  # every answer the gateway gave, in any test
            RESULT.validate(answer)


def start_gateway(tmp_path: Path, local: Mosquitto, cloud: Mosquitto,
                  serial_tty: str = "", metrics_port: int = 0,
                  devices: tuple[str, ...] = ()) -> tuple[GatewayProcess, Path]:
    """The real gateway process with commands on, for DEVICE (wired to ``serial_tty``
    when given) and ``devices``, listening for requests."""
    extra = (f'[[devices]]\nid = "{DEVICE}"\nkey = "{KEY.hex()}"\nsite = "s"\nfeeder = "F1"\n'
             f'[commands]\nenabled = true\noperator_keys = ["{public(OPERATOR).hex()}"]\n')
    if serial_tty:
        extra += f'[[serial]]\nport = "{serial_tty}"\ndevice = "{DEVICE}"\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, list(devices), extra=extra,
                               metrics_port=metrics_port)
                   .replace('id = "gw-test"', f'id = "{GW}"'))
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    assert wait_for(lambda: "commands: listening" in log.read_text(), 10)
    return gw, log
