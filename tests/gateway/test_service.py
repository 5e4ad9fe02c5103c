"""systemd integration: the unit file, READY/WATCHDOG/STOPPING notifications, SIGHUP reload."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import time
from pathlib import Path

from gateway import sdnotify
from gateway.store import Store
from gateway.store_rows import TELEMETRY
from tests.support.brokers import Mosquitto
from tests.support.fwrunner import REPO
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
)
from tests.support.mqtt_capture import wait_for


def test_unit_file_is_hardened_notify_service() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "deploy" / "gridedge-gateway.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["WatchdogSec"] == "30"
    assert svc["Restart"] == "on-failure" and svc["StateDirectory"] == "gridedge"
    assert svc["User"] == "gridedge" and svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, value in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes")]:
        assert svc[key] == value
    assert "AF_INET" in svc["RestrictAddressFamilies"]
    assert svc["ExecStart"].endswith("gridedge-gateway run --config /etc/gridedge/gateway.toml")


def test_watchdog_pings_only_while_all_loops_progress(monkeypatch: object) -> None:
    clock = {"a": 100.0, "b": 100.0}
    os.environ["WATCHDOG_USEC"] = "10000000"  # 10 s: progress must be under 5 s old
    try:
        w = sdnotify.Watchdog({"a": lambda: clock["a"], "b": lambda: clock["b"]})
        assert w.healthy(now=104.0)
        clock["a"] = 90.0
        assert not w.healthy(now=104.0) and w.stalled == ["a"]
    finally:
        del os.environ["WATCHDOG_USEC"]
    assert sdnotify.Watchdog({}).healthy()  # outside systemd: nothing to ping


def test_notify_ready_watchdog_stopping_and_reload(tmp_path: Path, local: Mosquitto) -> None:
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(0.2)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-a"]))
    os.environ.update(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    try:
        gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    messages: list[str] = []

    def receive_until(text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(notify.recv(256).decode())
            except TimeoutError:
                continue
            if text in messages:
                return True
        return False

    pub = DevicePublisher(local.port)
    try:
        assert receive_until("READY=1", 10)
        assert receive_until("WATCHDOG=1", 5)
        pub.publish("mtr-b", frame("mtr-b", 0))  # not registered yet: rejected
        cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-a", "mtr-b"]))
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in (tmp_path / "gw.log").read_text(), 10)
        pub.publish("mtr-b", frame("mtr-b", 1))  # accepted after the reload
        time.sleep(0.5)
        assert gw.terminate() == 0
        assert receive_until("STOPPING=1", 5)
    finally:
        pub.close()
        notify.close()
    store = Store(tmp_path / "state" / "store.db", max_bytes=10**8, max_age_s=3600)
    assert [(r.device, r.seq) for r in store.fetch(TELEMETRY, 0, 10)] == [("mtr-b", 1)]
