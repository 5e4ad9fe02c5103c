"""``gridedge command`` and ``gridedge operator-key``: sign a command, send it, await answers.

An operator's key is an Ed25519 private key in a file (64 hex digits, mode 0600), made by
``gridedge operator-key FILE``, which prints the public key for the gateway's
``[commands] operator_keys``. ``gridedge command`` signs a request for one gateway and one
device (gateway/command_auth.py: the signature covers the gateway, the id, the device,
the operation, its arguments and the expiry), publishes it with MQTT 5 to
``<prefix>/<gateway>/commands`` with a response topic of its own and a correlation id,
prints each answer as a line of JSON, and exits with the outcome: 0 once the device says
it is done, 1 if the gateway rejects it, it expires, or the device refuses it or fails, 3
if no final answer comes within ``--timeout`` (the command may still be delivered and
done later: its id says which).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.command_auth import ArgValue, key_id, sign
from tools.errors import ToolError

FINAL = {"done": 0, "failed": 1, "refused": 1, "rejected": 1, "expired": 1}


def make_key(path: Path, out: TextIO | None = None) -> int:
    """A new operator key in ``path`` (refused if it exists); its public half printed."""
    out = out or sys.stdout
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ToolError(f"{path} exists: an operator key is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    print(f"operator key {key_id(public)} written to {path} (keep it secret)\n"
          f"trust it on a gateway, in its config:\n"
          f'  [commands]\n  enabled = true\n  operator_keys = ["{public.hex()}"]', file=out)
    return 0


def read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ToolError(f"cannot read the operator key {path}: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ToolError(f"{path}: not an operator key (64 hex digits)")
    return key


def parse_args(pairs: list[str]) -> dict[str, ArgValue]:
    """``key=value`` pairs: integers, true/false and null as such, the rest as text."""
    out: dict[str, ArgValue] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ToolError(f"argument {pair!r}: write it as name=value")
        value: ArgValue = {"true": True, "false": False, "null": None}.get(text, text)
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        out[key] = value
    return out


@dataclass
class Options:
    host: str
    port: int
    gateway: str
    device: str
    op: str
    key_file: Path
    args: dict[str, ArgValue] = field(default_factory=dict)
    tls: bool = False
    ca: str | None = None
    user: str | None = None
    password_env: str | None = None
    prefix: str = "gridedge/v1/gw"
    expires_s: float = 3600.0
    timeout: float = 30.0
    id: str = ""


class Broker(Protocol):
    """Where the cloud broker is, as the CLI's options say."""

    host: str
    port: int
    tls: bool
    ca: str | None
    user: str | None
    password_env: str | None
    prefix: str
    gateway: str


class Cloud:
    """One MQTT 5 session with the cloud broker for signed requests: a response topic of
    its own, and each answer handed to ``on_answer`` with its correlation data."""

    def __init__(self, o: Broker, on_answer: Callable[[bytes, dict[str, Any]], None]) -> None:
        self.topic = f"{o.prefix}/{o.gateway}/commands"
        self.reply = f"gridedge/v1/ops/{uuid.uuid4().hex}/replies"
        subscribed = threading.Event()

        def answer(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(body, dict):
                on_answer(bytes(getattr(msg.properties, "CorrelationData", b"") or b""),
                          body)

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"ops-{uuid.uuid4().hex[:12]}",
                                  protocol=mqtt.MQTTv5)
        if o.tls:
            self.client.tls_set(ca_certs=o.ca, cert_reqs=ssl.CERT_REQUIRED)
        if o.user:
            self.client.username_pw_set(o.user, os.environ.get(o.password_env or "", "")
                                        or None)
        self.client.on_message = answer
        self.client.on_subscribe = lambda *_: subscribed.set()
        try:
            self.client.connect(o.host, o.port, keepalive=30)
        except OSError as e:
            raise ToolError(f"cannot reach the cloud broker {o.host}:{o.port}: {e}") from None
        self.client.loop_start()
        self.client.subscribe(self.reply, qos=1)
        if not subscribed.wait(10):
            self.close()
            raise ToolError("the cloud broker did not confirm the subscription")

    def send(self, request: dict[str, object], correlation: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic, props.CorrelationData = self.reply, correlation
        self.client.publish(self.topic, json.dumps(request), qos=1,
                            properties=props).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(o: Options, out: TextIO | None = None) -> int:
    stream = out or sys.stdout  # at the call: a default bound at import would outlive it
    cid = o.id or uuid.uuid4().hex[:12]
    request = sign(read_key(o.key_file), o.gateway, cid, o.device, o.op, o.args,
                   int((time.time() + o.expires_s) * 1000))
    correlation = cid.encode()
    outcome: list[int] = []
    done = threading.Event()

    def answer(got: bytes, body: dict[str, Any]) -> None:
        if got != correlation:
            return
        print(json.dumps(body), file=stream, flush=True)
        if body.get("state") in FINAL:
            outcome.append(FINAL[body["state"]])
            done.set()

    cloud = Cloud(o, answer)
    try:
        cloud.send(request, correlation)
        if not done.wait(o.timeout):
            print(f"gridedge command: no final answer for {cid} within {o.timeout:g} s "
                  "(its answers so far are above)", file=sys.stderr)
            return 3
        return outcome[0]
    finally:
        cloud.close()
