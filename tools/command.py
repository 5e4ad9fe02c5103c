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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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


def run(o: Options, out: TextIO | None = None) -> int:
    stream = out or sys.stdout  # at the call: a default bound at import would outlive it
    cid = o.id or uuid.uuid4().hex[:12]
    request = sign(read_key(o.key_file), o.gateway, cid, o.device, o.op, o.args,
                   int((time.time() + o.expires_s) * 1000))
    reply = f"gridedge/v1/ops/{uuid.uuid4().hex}/replies"
    correlation = cid.encode()
    outcome: list[int] = []
    done, subscribed = threading.Event(), threading.Event()

    def answer(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if bytes(getattr(msg.properties, "CorrelationData", b"") or b"") != correlation:
            return
        body = json.loads(msg.payload)
        print(json.dumps(body), file=stream, flush=True)
        if body.get("state") in FINAL:
            outcome.append(FINAL[body["state"]])
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ops-{cid}",
                         protocol=mqtt.MQTTv5)
    if o.tls:
        client.tls_set(ca_certs=o.ca, cert_reqs=ssl.CERT_REQUIRED)
    if o.user:
        client.username_pw_set(o.user, os.environ.get(o.password_env or "", "") or None)
    client.on_message = answer
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        client.connect(o.host, o.port, keepalive=30)
    except OSError as e:
        raise ToolError(f"cannot reach the cloud broker {o.host}:{o.port}: {e}") from None
    client.loop_start()
    try:
        client.subscribe(reply, qos=1)
        if not subscribed.wait(10):
            raise ToolError("the cloud broker did not confirm the subscription")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic, props.CorrelationData = reply, correlation
        client.publish(f"{o.prefix}/{o.gateway}/commands", json.dumps(request), qos=1,
                       properties=props).wait_for_publish(10)
        if not done.wait(o.timeout):
            print(f"gridedge command: no final answer for {cid} within {o.timeout:g} s "
                  "(its answers so far are above)", file=sys.stderr)
            return 3
        return outcome[0]
    finally:
        client.loop_stop()
        client.disconnect()
