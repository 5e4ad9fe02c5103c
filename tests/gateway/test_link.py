"""The local-broker link says what is wrong: in the log once per change, in status, in metrics.

End to end with the real daemon: started with its local Mosquitto down, against a TLS-only
listener that wants client certificates (the ingest speaks plain MQTT), and the back-off
of the log lines with a clock under test control.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.link import DISCONNECTED, REFUSED, Link
from tests.support.brokers import Mosquitto, free_port
from tests.support.certs import make_pki
from tests.support.gateway_fixtures import LOCAL_BROKER_EXTRA, GatewayProcess, config_text, metrics
from tests.support.mqtt_capture import wait_for


def status(cfg: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--config",
                          str(cfg)], capture_output=True, text=True, check=True, timeout=30)
    ingest: dict[str, Any] = json.loads(out.stdout)["daemon"]["ingest"]
    return ingest


def start_gateway(tmp_path: Path, local: Mosquitto) -> tuple[GatewayProcess, Path, int]:
    cfg, port = tmp_path / "gw.toml", free_port()
    cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-a"], port))
    return GatewayProcess(cfg, tmp_path / "gw.log").start(), cfg, port


def test_broker_down_is_logged_once_shown_in_status_and_metrics(tmp_path: Path) -> None:
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA)
    gw, cfg, port = start_gateway(tmp_path, local)  # the broker is not started
    log = tmp_path / "gw.log"
    where = f"the local broker 127.0.0.1:{local.port}"
    try:
        assert wait_for(lambda: f"ingest cannot reach {where}: Connection refused; retrying"
                        in log.read_text(), 5), log.read_text()
        st = status(cfg)
        assert (st["state"], st["error"]) == ("disconnected", "Connection refused"), st
        assert st["subscribed"] is False and st["accepted"] == 0
        down_since = st["since"]
        m = metrics(port)
        assert m["gridedge_ingest_connected"] == 0
        assert m['gridedge_ingest_link_info{error="Connection refused",state="disconnected"}'] \
            == 1
        assert abs(m["gridedge_ingest_state_since_seconds"] - time.time()) < 15
        time.sleep(10)  # paho retried 4 times meanwhile (1, 2, 4 s back-off)
        assert metrics(port)["gridedge_ingest_connect_failures_total"] >= 3
        assert log.read_text().count("cannot reach") == 1, log.read_text()

        local.start()
        assert wait_for(lambda: re.search(f"ingest connected to {where} after [0-9]+ s",
                                          log.read_text()), 25), log.read_text()
        assert wait_for(lambda: status(cfg)["subscribed"], 5)
        st = status(cfg)
        assert (st["state"], st["error"]) == ("connected", ""), st
        assert st["since"] > down_since
        m = metrics(port)
        assert m["gridedge_ingest_connected"] == 1
        assert m['gridedge_ingest_link_info{error="",state="connected"}'] == 1
    finally:
        assert gw.terminate() == 0
        local.stop()
    assert log.read_text().count("cannot reach") == 1


def test_a_clean_stop_warns_of_nothing(tmp_path: Path, local: Mosquitto, cloud: Mosquitto) -> None:
    """SIGTERM closes both links on purpose: "uplink lost (Normal disconnection)" at
    WARNING was a false alarm in every operator's log."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, ["mtr-a"]))
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start(wait_subscribed=True)
    try:
        assert wait_for(lambda: "uplink connected to" in log.read_text(), 15), log.read_text()
    finally:
        assert gw.terminate() == 0
    text = log.read_text()
    assert "uplink closed the connection to" in text, text
    assert not [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line], text


def test_plain_mqtt_against_a_tls_only_listener_is_a_visible_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    local = Mosquitto(tmp_path / "local", extra=(
        f"certfile {pki.server_cert}\nkeyfile {pki.server_key}\ncafile {pki.ca_pem}\n"
        "require_certificate true\n")).start()
    gw, cfg, port = start_gateway(tmp_path, local)
    log = tmp_path / "gw.log"
    try:
        assert wait_for(lambda: "TLS-only listener" in log.read_text(), 5), log.read_text()
        assert wait_for(lambda: metrics(port, missing_ok=True).get(
            "gridedge_ingest_connect_failures_total", 0) >= 3, 10)  # retried twice
        st = status(cfg)
        assert st["state"] == "disconnected" and "TLS-only listener" in st["error"], st
        assert metrics(port)["gridedge_ingest_connected"] == 0
    finally:
        assert gw.terminate() == 0
        local.stop()
    text = log.read_text()
    assert text.count("TLS-only listener") == 1, text
    assert "ERROR gateway.ingest_mqtt: ingest cannot reach the local broker" in text


def test_log_lines_back_off_while_the_state_lasts(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    link = Link("ingest", "the local broker h:1", logging.getLogger("t"), remind_s=60,
                clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, "t")
    for _ in range(120):  # ten minutes of attempts every 5 s
        link.down(DISCONNECTED, "Connection refused")
        now[0] += 5
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines[0] == "ingest cannot reach the local broker h:1: Connection refused; retrying"
    assert len(lines) == 10, lines  # then one reminder a minute
    assert lines[1] == ("ingest still cannot reach the local broker h:1 after 60 s "
                        "(13 attempts): Connection refused; retrying")
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 110
    snap = link.snapshot()
    assert (snap.state, snap.since, snap.error, snap.failures) == (
        DISCONNECTED, 1000.0, "Connection refused", 120)
    caplog.clear()
    link.down(REFUSED, "Not authorized")  # a new error is news at once
    link.up()
    link.up()  # already up: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "ingest: the local broker h:1 refused the connection: Not authorized; retrying",
        "ingest connected to the local broker h:1 after 10 min"]  # since the start
    assert link.snapshot().error == ""
    caplog.clear()
    now[0] += 3600
    link.down(DISCONNECTED, "connection lost")
    now[0] += 42
    link.down(DISCONNECTED, "Connection refused")
    link.up()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "ingest lost the local broker h:1: connection lost; reconnecting"),
        ("ERROR", "ingest cannot reach the local broker h:1: Connection refused; retrying"),
        ("INFO", "ingest connected to the local broker h:1 again after 42 s")]
