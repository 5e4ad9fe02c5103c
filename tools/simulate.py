"""``gridedge simulate``: run a fleet of simulated meters against a gateway.

Loads a scenario (sim_scenario), optionally registers the fleet's devices in a gateway's
registry (``--gateway-config``: the same registry ``gridedge-gateway devices`` manages;
reload the gateway afterwards), starts the fleet (sim_fleet: the real firmware under
MicroPython, one process per device) and reports once every ``--every`` seconds: devices
running, events played, and the CPU the device processes used (per device, as a share
of one core) - the figure that says how many devices fit on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import TextIO

from tools import resources
from tools.sim_fleet import Fleet, FleetError
from tools.sim_scenario import Scenario, load

DEFAULT_SCENARIO = resources.scenarios() / "demo.toml"


def register(fleet: Fleet, gateway_config: Path) -> tuple[int, Path]:
    """Add the fleet's devices to the gateway's registry (skipping ids already there with
    the same key); returns how many were added and the registry file written."""
    from gateway.config import load as load_config
    from gateway.registry import Registry

    known = load_config(gateway_config).device_keys()
    reg = Registry(gateway_config)
    added = 0
    for d in fleet.device_list():
        if d.id in known:
            if known[d.id] != d.key:
                raise FleetError(f"device {d.id} is registered with another key in "
                                 f"{gateway_config}; remove it first")
            continue
        reg.add(d.id, role=d.role, site=d.site, feeder=d.feeder, channels=d.channels,
                key=d.key)
        added += 1
    return added, reg.path


def run(fleet: Fleet, duration: float, every: float, out: TextIO) -> dict[str, float]:
    """Run the fleet for ``duration`` seconds (0: until Ctrl-C); returns the figures."""
    fleet.start()
    t0 = time.monotonic()
    cpu0 = fleet.cpu_seconds()
    played = 0
    try:
        while duration <= 0 or time.monotonic() - t0 < duration:
            time.sleep(min(every, max(0.1, duration - (time.monotonic() - t0)))
                       if duration > 0 else every)
            for line in fleet.events_played[played:]:
                out.write(f"event {line}\n")
            played = len(fleet.events_played)
            wall = time.monotonic() - t0
            per_device = (fleet.cpu_seconds() - cpu0) / wall / len(fleet.devices) * 100
            out.write(f"{wall:6.0f}s  {fleet.alive()}/{len(fleet.devices)} devices running,"
                      f" CPU {per_device:.1f} % of a core per device\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        wall = time.monotonic() - t0
        cpu = fleet.cpu_seconds() - cpu0
        fleet.stop()
    return {"devices": len(fleet.devices), "seconds": wall,
            "cpu_per_device_pct": cpu / wall / len(fleet.devices) * 100}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario TOML")
    p.add_argument("--meters", type=int, help="override the scenario's meter count")
    p.add_argument("--line-sensors", type=int, help="override the line sensor count")
    p.add_argument("--link", choices=["mqtt", "serial"], default="mqtt",
                   help="how the devices reach the gateway: its local broker (default) or a "
                   "pty per device, for [[serial]] ports")
    p.add_argument("--mqtt-host", default="127.0.0.1", help="the gateway's local broker")
    p.add_argument("--mqtt-port", type=int, default=1883,
                   help="the gateway's local broker's port (default 1883)")
    p.add_argument("--gateway-config", help="register the devices in this gateway's registry")
    p.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--every", type=float, default=10, help="report interval, seconds")
    p.add_argument("--workdir", help="device folders (default: a temporary folder)")


def main(args: argparse.Namespace, out: TextIO) -> int:
    scenario: Scenario = load(args.scenario, meters=args.meters,
                              line_sensors=args.line_sensors)
    with tempfile.TemporaryDirectory(prefix="gridedge-fleet-") as tmp:
        workdir = Path(args.workdir or tmp)
        for line in scenario.skipped:
            out.write(f"scenario: skipped {line}\n")
        fleet = Fleet(scenario, workdir, args.link, (args.mqtt_host, args.mqtt_port))
        if args.gateway_config:
            n, devices_file = register(fleet, Path(args.gateway_config))
            out.write(f"registered {n} devices in {devices_file}; reload the "
                      "gateway (systemctl reload gridedge-gateway) before they report\n")
        if args.link == "serial":
            out.write("serial ports for the gateway config:\n" + fleet.serial_config())
        out.write(f"{len(fleet.devices)} devices, firmware under {os.path.basename(fleet.exe)}"
                  f", link {args.link}\n")
        figures = run(fleet, args.duration, args.every, out)
    out.write(f"done: {figures['devices']} devices for {figures['seconds']:.0f} s, "
              f"{figures['cpu_per_device_pct']:.1f} % of a core per device\n")
    return 0
