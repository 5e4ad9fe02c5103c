"""The hold: readings reach the cloud from memory, and the SD card is spared (hold.py).

While the cloud keeps up, a reading's local PUBACK waits for the cloud's and the store is
not written for it; the tests check that, and that every way the held readings could be
lost is closed: a SIGKILL while they are held, a local broker that restarts under them
(its redelivered copies must not be acknowledged before the originals are durable), a
cloud that stops acknowledging. Real brokers, the real daemon, a freezable TCP proxy as
the half-open cloud link.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from gateway.store_writer import MARKS_INTERVAL_S
from tests.support.brokers import Mosquitto, free_port
from tests.support.gateway_fixtures import (
    LOCAL_BROKER_EXTRA,
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
    leftovers,
    metrics,
)
from tests.support.mqtt_capture import Capture, wait_for
from tests.support.tcp_proxy import FreezableProxy

DEVICES = ["mtr-1", "mtr-2"]


class Site:
    """Local and cloud brokers, a proxy in front of the cloud, the daemon, a capture."""

    def __init__(self, tmp: Path, hold_s: float = 2.0, ack_timeout_s: float = 60) -> None:
        self.tmp = tmp
        self.local = Mosquitto(tmp / "local", persistence=True,
                               extra=LOCAL_BROKER_EXTRA).start()
        self.cloud = Mosquitto(tmp / "cloud").start()
        self.proxy = FreezableProxy(self.cloud.port)
        self.capture = Capture(self.cloud.port, topic="gridedge/v1/gw/+/readings")
        self.metrics_port = free_port()
        cfg = tmp / "gw.toml"
        cfg.write_text(config_text(tmp / "state", self.local, self.cloud, DEVICES,
                                   self.metrics_port, store=f"hold_s = {hold_s}",
                                   uplink_port=self.proxy.port, batch_delay_ms=20,
                                   ack_timeout_s=ack_timeout_s))
        self.gw = GatewayProcess(cfg, tmp / "gw.log").start(wait_subscribed=True)
        # Readings are held only while the uplink is up: before it is, they go to the store.
        assert wait_for(lambda: metrics(self.metrics_port, missing_ok=True).get(
            "gridedge_uplink_connected") == 1, 20), (tmp / "gw.log").read_text()
        self.pub = DevicePublisher(self.local.port)

    def seen(self) -> set[tuple[str, int]]:
        return {(r["device"], r["seq"]) for p in self.capture.payloads("/readings")
                for r in json.loads(p)}

    def inserted(self) -> int:
        """Readings ever inserted into the store (AUTOINCREMENT keeps the highest id)."""
        db = sqlite3.connect(self.tmp / "state" / "store.db")
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        finally:
            db.close()
        return int(row[0]) if row else 0

    def held(self) -> tuple[float, float]:
        m = metrics(self.metrics_port, missing_ok=True)
        return (m.get('gridedge_hold_readings_total{fate="held"}', 0),
                m.get('gridedge_hold_readings_total{fate="spilled"}', 0))

    def hold_readings(self, n: int) -> None:
        """The cloud stops acknowledging (a frozen link); ``n`` readings of mtr-1 are
        published and end up held, not acknowledged to the local broker."""
        self.proxy.freeze()
        for s in range(n):
            self.pub.publish("mtr-1", frame("mtr-1", s))
        assert wait_for(lambda: self.held() == (n, 0), 5), self.held()

    def delivered(self, n: int) -> bool:
        return wait_for(lambda: self.seen() >= {("mtr-1", s) for s in range(n)}, 20)

    def close(self) -> None:
        self.pub.close()
        if self.gw.proc is not None and self.gw.proc.poll() is None:
            self.gw.terminate()
        self.capture.close()
        self.proxy.close()
        self.local.stop()
        self.cloud.stop()


def test_while_the_cloud_keeps_up_readings_never_touch_the_store(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        expected = set()
        for s in range(50):  # about 20 frames/s
            for d in DEVICES:
                site.pub.publish(d, frame(d, s))
                expected.add((d, s))
            time.sleep(0.05)
        assert wait_for(lambda: site.seen() == expected, 15), len(expected - site.seen())
        assert wait_for(lambda: site.held() == (100, 0), 5), site.held()
        assert site.inserted() == 0  # no reading was ever written to the store
        assert site.gw.terminate() == 0
        # Every local PUBACK went out after its cloud PUBACK: nothing left to redeliver.
        assert leftovers(site.local.port, "gridedge-gateway-ingest") == 0
    finally:
        site.close()


def test_a_gateway_killed_while_readings_are_held_loses_none(tmp_path: Path) -> None:
    site = Site(tmp_path, hold_s=30)
    try:
        site.hold_readings(10)
        site.gw.kill()
        assert site.inserted() == 0  # they were only held: the local broker has them
        site.gw.start()  # new connections through the proxy work again
        assert site.delivered(10), site.seen()
    finally:
        site.close()


def test_replay_marks_never_cover_a_reading_that_is_only_held(tmp_path: Path) -> None:
    """The marks are written every few seconds. Had they taken in the held readings, the
    restarted gateway would drop the broker's redelivery of them as duplicates."""
    site = Site(tmp_path, hold_s=30)
    try:
        site.hold_readings(10)
        time.sleep(MARKS_INTERVAL_S + 1.5)  # the marks are saved meanwhile
        site.gw.kill()
        site.gw.start()
        assert site.delivered(10), site.seen()
    finally:
        site.close()


def test_held_readings_are_durable_before_a_reconnect_acknowledges_their_copies(
        tmp_path: Path) -> None:
    """The local broker restarts while readings are held: it delivers them again on the
    new connection, where de-duplication acknowledges the copies at once. The originals
    are committed first, so a SIGKILL right after loses nothing."""
    site = Site(tmp_path, hold_s=30)
    try:
        site.hold_readings(10)
        site.pub.close()
        site.local.stop()
        site.local.start()
        assert wait_for(lambda: metrics(site.metrics_port, missing_ok=True).get(
            "gridedge_ingest_connected") == 1, 20)
        time.sleep(1.0)  # the copies arrive and are handled (acknowledged as duplicates)
        site.gw.kill()
        assert leftovers(site.local.port, "gridedge-gateway-ingest") == 0  # all acked
        site.pub = DevicePublisher(site.local.port)
        site.gw.start()
        assert site.delivered(10), site.seen()
    finally:
        site.close()


def test_a_cloud_that_stops_acknowledging_gets_the_readings_from_the_store(
        tmp_path: Path) -> None:
    site = Site(tmp_path, hold_s=1, ack_timeout_s=3)
    try:
        site.proxy.freeze()
        for s in range(10):
            site.pub.publish("mtr-1", frame("mtr-1", s))
        assert wait_for(lambda: site.held() == (10, 10), 10), site.held()  # spilled
        assert site.inserted() == 10
        # The half-open link is found out (ack_timeout_s), a new connection delivers.
        assert wait_for(lambda: site.seen() >= {("mtr-1", s) for s in range(10)}, 30)
    finally:
        assert site.gw.terminate() == 0
        site.close()
