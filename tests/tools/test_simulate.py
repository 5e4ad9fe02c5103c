"""The fleet simulator: scenario files, the grid's physics, and a small fleet for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError
from tests.support.brokers import Mosquitto
from tests.support.fwrunner import REPO, FirmwareRunner
from tests.support.gateway_fixtures import LOCAL_BROKER_EXTRA, GatewayProcess, config_text
from tests.support.mqtt_capture import Capture, wait_for
from tools.sim_fleet import Fleet
from tools.sim_profiles import Grid
from tools.sim_scenario import parse
from tools.simulate import register

SMALL = """
[fleet]
meters = 3
line_sensors = 1
pv_share = 0.0
report_interval_s = 1
sample_interval_ms = 250
losses = 0.05

[[event]]
at = 2
duration = 100
kind = "bypass"
devices = ["mtr-002"]
value = 0.5

[[event]]
at = 3
duration = 4
kind = "reboot"
devices = ["mtr-003"]
"""


def test_scenario_problems_are_reported_at_once_with_paths() -> None:
    with pytest.raises(ConfigError) as info:
        parse('[fleet]\nmeters = "many"\ncolour = 1\n[[event]]\nkind = "meteor"\n', "s.toml")
    text = str(info.value)
    for expected in ("fleet.meters: must be an integer", "fleet.colour: unknown key",
                     "event[0].kind: must be one of"):
        assert expected in text, text
    with pytest.raises(ConfigError, match=re.escape("event[1].devices: no device 'mtr-999'")):
        parse('[[event]]\nkind = "sag"\n[[event]]\nkind = "sag"\ndevices = ["mtr-999"]\n')
    assert parse((REPO / "scenarios" / "demo.toml").read_text()).fleet.meters == 20


def test_a_scenario_scales_down_to_a_smaller_fleet_and_says_what_it_skipped() -> None:
    """`gridedge demo --meters 5` / `simulate --meters 4` used to fail: the demo scenario
    names meters up to mtr-018."""
    demo = (REPO / "scenarios" / "demo.toml").read_text()
    small = parse(demo, "demo.toml", meters=4)
    assert small.meter_ids() == ["mtr-001", "mtr-002", "mtr-003", "mtr-004"]
    played = {d for ev in small.event for d in small.targets(ev)}
    assert played <= set(small.meter_ids()) | set(small.line_sensor_ids())
    sag = next(ev for ev in small.event if ev.kind == "sag")
    assert sag.devices == ["mtr-003", "mtr-004"]  # mtr-005 is not in this fleet
    assert small.skipped and all("not in this fleet" in s for s in small.skipped)
    assert any(s.startswith("event[1] (overcurrent at 16 s): mtr-007") for s in small.skipped)
    full = parse(demo, "demo.toml")
    assert full.skipped == [] and len(full.event) == len(small.event) + len(small.skipped)
    # The file's own fleet must fit its events: there it is a mistake, said with the size.
    with pytest.raises(ConfigError, match=re.escape("no device 'mtr-007' in this fleet (4 "
                                                    "meters, 1 line sensors)")):
        parse(demo.replace("meters = 20", "meters = 4"), "demo.toml")


def test_the_feeder_sees_the_bypassed_load_and_the_losses() -> None:
    sc = parse(SMALL)
    a, b = Grid(sc), Grid(sc)
    for t in (0.5, 1.0, 5.0, 30.0):
        state = a.step(t)
        assert state == b.step(t)  # one seed, one run
        meters = {d: state[d][0].power + state[d][1].power for d in sc.meter_ids()}
        line = state["line-01"][1].power  # the ADE7953 input: signed
        assert state["line-01"][0].power == 0.0
        if t < 2:  # before the bypass: the feeder carries the meters plus 5 % losses
            assert line == pytest.approx(sum(meters.values()) * 1.05)
        else:  # mtr-002 measures half its load; the feeder still carries all of it
            true_net = sum(meters.values()) + state["mtr-002"][0].power
            assert line == pytest.approx(true_net * 1.05)


def test_the_feeder_sensor_sees_export_signed() -> None:
    """Every house with PV, at noon: the feeder exports, and its sensor says so, less the
    losses on the way back (a PZEM-004T on the feeder would have read the magnitude)."""
    sc = parse(SMALL.replace("pv_share = 0.0", "pv_share = 1.0"))
    g = Grid(sc)
    hours = (13.0 - sc.fleet.start_hour) % 24  # 13:00
    state = g.step(sc.fleet.day_seconds * hours / 24)
    net = sum(state[d][0].power + state[d][1].power for d in sc.meter_ids())
    net += state["mtr-002"][0].power  # bypassed: half its load is not on its register
    line = state["line-01"][1]
    assert net < 0 and line.power == pytest.approx(net + 0.05 * abs(net))
    assert line.pf < 0 and line.current > 0


def test_events_change_what_the_ics_measure() -> None:
    sc = parse(SMALL + '[[event]]\nat = 1\nduration = 2\nkind = "sag"\ndevices = ["*"]\n'
               'value = 190.0\n[[event]]\nat = 1\nduration = 5\nkind = "stuck"\n'
               'devices = ["mtr-001"]\n[[event]]\nat = 1\nduration = 2\n'
               'kind = "overcurrent"\ndevices = ["mtr-003"]\nvalue = 50.0\n')
    g = Grid(sc)
    g.step(0.5)
    during = g.step(1.5)
    assert all(abs(during[d][0].voltage - 190) < 2 for d in ("mtr-002", "mtr-003"))
    assert during["mtr-003"][0].current == 50.0
    assert g.step(2.5)["mtr-001"] is g.step(3.0)["mtr-001"]  # stuck: the same values
    assert g.step(4.0)["mtr-002"][0].voltage > 225  # the sag is over


def test_a_small_fleet_runs_the_real_firmware_through_a_gateway(
    fw_micropython: FirmwareRunner, tmp_path: Path
) -> None:
    """(fw_micropython: skips loudly without the unix port, fails under CI.)"""
    sc = parse(SMALL)
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    cloud = Mosquitto(tmp_path / "cloud").start()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, []))
    fleet = Fleet(sc, tmp_path / "fleet", "mqtt", ("127.0.0.1", local.port))
    devices_file = tmp_path / "devices.toml"
    assert register(fleet, cfg) == (4, devices_file)
    assert register(fleet, cfg) == (0, devices_file)  # idempotent
    capture = Capture(cloud.port, topic="gridedge/v1/gw/+/readings")
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    try:
        fleet.start()

        def identities() -> set[tuple[str, int, int]]:
            return {(r["device"], r["boot"], r["seq"]) for p in capture.payloads("/readings")
                    for r in json.loads(p)}

        # mtr-003 loses power at 3 s and boots again at 7 s: its boot counter goes up.
        assert wait_for(lambda: ("mtr-003", 2, 1) in identities(), 30), \
            sorted(identities())[-5:]
        assert {d for d, _b, _s in identities()} == {"mtr-001", "mtr-002", "mtr-003",
                                                     "line-01"}
        assert fleet.devices["mtr-003"].boots == 2 and fleet.alive() == 4
        assert fleet.cpu_seconds() > 0
    finally:
        fleet.stop()
        gw.terminate()
        capture.close()
        local.stop()
        cloud.stop()


def test_simulate_command_reports_and_registers(
    fw_micropython: FirmwareRunner, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[uplink]\nenabled = false\n')
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "simulate", "--scenario", str(scenario),
         "--gateway-config", str(cfg), "--duration", "3", "--every", "1",
         "--mqtt-port", "9"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"registered 4 devices in {tmp_path / 'devices.toml'};" in out.stdout
    assert "4 devices, firmware under" in out.stdout
    assert "% of a core per device" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "tools.cli", "simulate",
                          "--scenario", str(tmp_path / "none.toml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
