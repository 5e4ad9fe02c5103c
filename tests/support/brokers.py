"""Test access to tools.brokers: a broker that cannot start fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import brokers
from tools.brokers import free_port

__all__ = ["Mosquitto", "free_port"]


class Mosquitto(brokers.Mosquitto):
    def __init__(self, folder: Path, persistence: bool = False, extra: str = "",
                 conf: str | None = None, port: int | None = None) -> None:
        try:
            brokers.mosquitto_binary()
        except brokers.BrokerError as e:
            pytest.fail(str(e), pytrace=False)
        super().__init__(folder, persistence, extra, conf, port)

    def start(self, timeout: float = 10) -> Mosquitto:
        try:
            super().start(timeout)
        except brokers.BrokerError as e:
            pytest.fail(str(e), pytrace=False)
        return self
