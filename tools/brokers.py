"""Private Mosquitto brokers on free loopback ports (tests, benchmarks, the demo).

Each broker runs from its own folder (config, persistence, log) and is stopped by PID.
``stop`` sends SIGTERM, so a broker with persistence writes its database as a real one
does on shutdown, and ``start`` brings it back on the same port: a broker restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.errors import ToolError


class BrokerError(ToolError):
    pass


# The gateway's local broker as docs/gateway.md documents it, beyond its listener and
# persistence (a test holds the two equal). Mosquitto queues only 1000 messages for an
# offline client by default, and the gateway's session must hold a whole outage; a frame
# is at most 1 KiB, so a payload over 16 KiB is refused before anyone stores it.
LOCAL_BROKER_SETTINGS = (
    "max_queued_messages 1000000\nmax_queued_bytes 0\nmessage_size_limit 16384\n"
    "set_tcp_nodelay true\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        raise BrokerError("mosquitto is not installed: run `make setup` as root, or "
                          "`sudo apt-get install mosquitto`")
    return exe


class Mosquitto:
    """A private Mosquitto in ``folder`` on a free loopback port (anonymous clients) or, with
    ``conf``, on exactly that configuration (``port`` is where start() waits for it)."""

    def __init__(self, folder: Path, persistence: bool = False, extra: str = "",
                 conf: str | None = None, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        if conf is not None:
            self.conf.write_text(conf)
            return
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"log_dest file {folder / 'mosquitto.log'}",
            "log_type error", "log_type warning", "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and loses access
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/",
                      "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    def start(self, timeout: float = 10) -> Mosquitto:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise BrokerError(f"mosquitto exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def resubscribe(topic: str, qos: int = 1) -> Callable[..., None]:
    """A paho ``on_connect`` callback that subscribes to ``topic`` on every (re)connection
    (paho's callback types want None back, which a lambda around subscribe() is not)."""

    def on_connect(client: Any, *_: object) -> None:
        client.subscribe(topic, qos=qos)

    return on_connect
