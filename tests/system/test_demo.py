"""`gridedge demo` end to end: the scenario's alarms reach the cloud, the dashboard renders.

This is `make demo` with a fixed duration (CI also runs `DEMO_SECONDS=… make demo` on a
fresh clone): brokers, gateway, 20 meters and a line sensor running the real firmware
under MicroPython, and the `gridedge monitor` dashboard, whose last frame is saved as text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.fwrunner import FirmwareRunner


def test_demo_alarms_reach_the_cloud_and_the_dashboard_renders(
    fw_micropython: FirmwareRunner, tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "demo", "--duration", "44",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["devices"] == 21 and summary["readings"] > 21 * 15
    raised = summary["raised"]
    # Every scenario event that should raise an alarm did (scenarios/demo.toml):
    for kind in ("under_voltage", "over_current", "frequency_low", "stuck_value",
                 "offline", "non_technical_loss"):
        assert raised.get(kind, 0) >= 1, (kind, summary)
    assert summary["cleared"].get("under_voltage", 0) >= 1  # the sag ended
    assert len(summary["events"]) == 7
    snapshot = summary["snapshot"]
    assert "mtr-001" in snapshot and "line-01" in snapshot, snapshot
    assert "demo-gw" in snapshot
    # The control room's command and firmware patch (to mtr-002, flashed as a board is).
    assert summary["command"]["states"] == ["accepted", "delivered", "done"], summary
    assert summary["update"]["exit"] == 0, summary["update"]
    assert summary["update"]["outcome"].startswith("running 0.1.1 "), summary["update"]
    assert (tmp_path / "fleet" / "mtr-002" / "main.py").read_text().count('"0.1.1"') == 1
    # Which broker to watch is said at the start, while the demo still runs.
    start, _, end = out.stdout.partition("demo summary:")
    assert f"-> cloud broker :{summary['cloud_port']};" in start, start
    assert f"  mosquitto_sub -p {summary['cloud_port']} -t 'gridedge/v1/gw/#' -v\n" in start, start
    assert end
    print("\n" + snapshot)
