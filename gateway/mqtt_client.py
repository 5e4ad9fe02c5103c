"""One way to make a paho client for the cloud broker, as the uplink and the commander need.

MQTT 5 or 3.1.1 as ``[uplink] protocol`` says (a 3.1.1 session is clean or persistent as
the caller asks; MQTT 5 sets it at connect), TLS verifying the broker against
``ca_file`` with an optional client certificate, and the user name and password.
``no_delay`` turns Nagle's algorithm off on a client's socket (paho leaves it on): a
lone small packet, such as a command or its answer, otherwise waits up to 40 ms for the
peer's delayed ACK at every hop. For clients that send little: one that streams frames
is better served by Nagle's coalescing.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import UplinkSection


def cloud_client(cfg: UplinkSection, client_id: str, clean_session: bool) -> mqtt.Client:
    if cfg.protocol == "mqtt5":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean_session)
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.client_cert or None,
                       keyfile=cfg.client_key or None, cert_reqs=ssl.CERT_REQUIRED)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    return client


def no_delay(client: mqtt.Client) -> mqtt.Client:
    """Set TCP_NODELAY on the client's socket at each connect (see the docstring)."""
    def opened(_c: mqtt.Client, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = opened
    return client
