"""Test access to tools.brokers: a broker that cannot start fails the test; ports that
parallel tests cannot take from each other.

``free_port`` here hands each pytest-xdist worker its own block of ports below Linux's
ephemeral range (32768-60999), one after the other. A port from the kernel's ``bind(0)``
(tools.brokers.free_port) is only free until someone else's bind(0) or outgoing
connection takes it: a gateway whose metrics port a parallel test's Mosquitto had taken
meanwhile failed to start. Ports here are never handed out twice in a run and are never
a connection's source port.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import pytest

from tools import brokers

__all__ = ["Mosquitto", "free_port"]

BLOCK = 2000  # ports per worker from 20000 up: six blocks fit below 32768 (more wrap)
_taken = itertools.count()


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = 20000 + (int(worker) if worker.isdigit() else 0) % 6 * BLOCK
    for _ in range(BLOCK):
        port = base + next(_taken) % BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: the next one
            return port
    pytest.fail(f"no free port in {base}..{base + BLOCK - 1}", pytrace=False)


class Mosquitto(brokers.Mosquitto):
    def __init__(self, folder: Path, persistence: bool = False, extra: str = "",
                 conf: str | None = None, port: int | None = None) -> None:
        try:
            brokers.mosquitto_binary()
        except brokers.BrokerError as e:
            pytest.fail(str(e), pytrace=False)
        super().__init__(folder, persistence, extra, conf, port or free_port())

    def start(self, timeout: float = 10) -> Mosquitto:
        try:
            super().start(timeout)
        except brokers.BrokerError as e:
            pytest.fail(str(e), pytrace=False)
        return self
