"""gateway/stats.py: one snapshot, read alike by /metrics, /status and the health message.

The daemon used to assemble its figures three times (the health message, the Prometheus
collector, and ``status``, which parsed the Prometheus text back by metric name). Here a
real daemon takes good frames, a bad one and an over-voltage, and the three readers must
tell the same story.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.brokers import Mosquitto, free_port
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
    metrics,
)
from tests.support.mqtt_capture import Capture, wait_for


def test_metrics_status_and_health_read_the_same_snapshot(
    tmp_path: Path, local: Mosquitto, cloud: Mosquitto
) -> None:
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, ["mtr-1"], port,
                               extra="[checks.limits]\nmin_duration_s = 0\n",
                               health_interval_s=1))
    health = Capture(cloud.port, topic="gridedge/v1/gw/+/health")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        for s in range(5):
            pub.publish("mtr-1", frame("mtr-1", s))
        pub.publish("mtr-1", frame("mtr-1", 5, volts=262.0))  # over-voltage: an open alarm
        pub.publish("mtr-1", b"\xd1\xc5\x82\x1b\x7f\xff\xff\xff\xff\xff\xff\xff\x01")
        assert wait_for(lambda: metrics(port).get("gridedge_frames_accepted_total") == 6, 15)
        m = metrics(port)
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--config", str(cfg)],
            capture_output=True, text=True, check=True, timeout=30).stdout)["daemon"]
        raw: dict[str, Any] = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert status == raw | {"ingest": raw["ingest"] | {"for_s": status["ingest"]["for_s"]}}

        def last_health() -> dict[str, Any] | None:
            bodies = [json.loads(p) for p in health.payloads("/health")]
            fresh = [b for b in bodies if b["ingest"]["accepted"] == 6]
            return fresh[-1] if fresh else None

        assert wait_for(lambda: last_health() is not None, 10), health.payloads("/health")
        h = last_health()
        assert h is not None
        rejected = {k.split('"')[1]: v for k, v in m.items()
                    if k.startswith("gridedge_frames_rejected_total{")}
        assert rejected == {"malformed": 1}
        assert status["ingest"]["accepted"] == h["ingest"]["accepted"] == 6
        assert status["ingest"]["rejected"] == h["ingest"]["rejected"] == {"malformed": 1}
        assert status["ingest"]["state"] == h["ingest"]["link"]["state"] == "connected"
        assert m['gridedge_ingest_link_info{error="",state="connected"}'] == 1
        assert status["open_alarms"] == [{"kind": "over_voltage", "source": "mtr-1",
                                          "channel": "0"}]
        assert h["open_alarms"] == 1
        assert m['gridedge_alarm_open{channel="0",kind="over_voltage",source="mtr-1"}'] == 1
        assert status["uplink"]["state"] == "connected" and m["gridedge_uplink_connected"] == 1
        assert status["store"] == {"writable": True} and h["store"]["writable"] is True
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").status == 200
    finally:
        pub.close()
        health.close()
        assert gw.terminate() == 0
