"""``gridedge demo`` (``make demo``): the whole system on this machine, end to end.

Starts a local and a "cloud" Mosquitto on free loopback ports, writes a gateway config
tuned for a short demo (alarms after 2 s instead of 10, a 20 s energy-balance window),
registers the simulated fleet in the gateway's registry, starts the gateway daemon, the
fleet (real firmware under MicroPython, scenarios/demo.toml) and the live dashboard
(``gridedge monitor``) on the cloud broker. A recorder on the cloud broker counts what
arrives; at the end a summary (readings, alarms by kind, a dashboard snapshot) is printed
and written as JSON, so CI can run the demo with ``--duration`` and check it. Ctrl-C stops
everything, in the order that loses nothing: fleet, gateway (drains), brokers.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tools import resources
from tools.brokers import LOCAL_BROKER_SETTINGS, Mosquitto, resubscribe
from tools.sim_fleet import Fleet, unix_arch
from tools.sim_scenario import load
from tools.simulate import DEFAULT_SCENARIO, register

PREFIX = "gridedge/v1/gw"

GATEWAY_TOML = """# written by `gridedge demo`
[gateway]
id = "demo-gw"
state_dir = "{state}"
log_level = "info"

[local]
port = {local}

[uplink]
host = "127.0.0.1"
port = {cloud}
tls = false            # loopback demo broker; production keeps TLS on (docs/gateway.md)
batch_delay_ms = 100
health_interval_s = 2

[metrics]
port = {metrics}

[checks]
offline_after_periods = 3
stuck_periods = 6
anomaly_warmup = 15
anomaly_sensitivity = 8   # a day in four minutes moves fast; 5 suits a real day
anomaly_profile_days = 0  # judge from the first readings, not after a (4-minute) day
balance_window_s = 20     # with the shipped balance_threshold (0.02)

[checks.limits]
min_duration_s = 2     # demo: raise within seconds (EN 50160 practice is minutes)
max_current = 40

[[checks.override]]    # the feeder head carries the whole street
device = "line-01"
limits = {{ max_current = 400 }}

[commands]             # the demo's control room signs with an operator key made for it
enabled = true
operator_keys = ["{operator}"]
"""
COMMAND_AT_S = 12.0  # the demo's command goes out when the meters are up and reporting
PATCH_VERSION = "0.1.1"  # the demo's firmware update: main.py with this version
UPDATE_TIMEOUT_S = 60.0
MAIN_FILE = resources.firmware() / "main.py"


class Recorder:
    """Counts readings and collects alarm events on the cloud broker, for the summary."""

    def __init__(self, port: int) -> None:
        self.readings: set[tuple[str, int, int]] = set()
        self.alarms: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-recorder")
        self.client.on_connect = resubscribe(f"{PREFIX}/+/#")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(30):  # readings published before the SUBACK would be missed
            raise TimeoutError("the cloud broker did not confirm the recorder's subscription")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.endswith(("/readings", "/alarms")):
            return
        records = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/readings"):
                self.readings.update((r["device"], r["boot"], r["seq"]) for r in records)
            else:
                self.alarms.extend(records)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            raised = Counter(a["kind"] for a in self.alarms if a["state"] == "raised")
            cleared = Counter(a["kind"] for a in self.alarms if a["state"] == "cleared")
            events = Counter(a["kind"] for a in self.alarms if a["state"] == "event")
            return {"readings": len(self.readings),
                    "devices": len({d for d, _b, _s in self.readings}),
                    "raised": dict(raised), "cleared": dict(cleared), "events": dict(events)}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",
                                 "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "subscribed to" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def monitor_command(cloud_port: int, duration: float, snapshot: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tools.cli", "monitor", "--port", str(cloud_port),
           "--snapshot", str(snapshot)]
    return cmd + (["--duration", str(duration)] if duration > 0 else [])


def run(duration: float, workdir: Path, out: TextIO, scenario_path: Path = DEFAULT_SCENARIO,
        meters: int | None = None, monitor: bool = True) -> dict[str, Any]:
    from tools.brokers import free_port

    scenario = load(scenario_path, meters=meters)
    local = Mosquitto(workdir / "local", persistence=True, extra=LOCAL_BROKER_SETTINGS).start()
    cloud = Mosquitto(workdir / "cloud").start()
    config = workdir / "gateway.toml"
    metrics_port = free_port()
    key_file = workdir / "operator.key"
    config.write_text(GATEWAY_TOML.format(state=workdir / "state", local=local.port,
                                          cloud=cloud.port, metrics=metrics_port,
                                          operator=operator_key(key_file)))
    meter_ids = scenario.meter_ids()
    patched = meter_ids[1:2]  # flashed as a board is, to take the demo's firmware update
    fleet = Fleet(scenario, workdir / "fleet", "mqtt", ("127.0.0.1", local.port),
                  flashed=tuple(patched))
    register(fleet, config)
    recorder = Recorder(cloud.port)
    gateway: subprocess.Popen[bytes] | None = None
    while gateway is None:
        try:
            gateway = start_gateway(config, workdir / "gateway.log")
        except RuntimeError as e:
            # The metrics port was free when picked, but another process took it before
            # the gateway bound it (free_port can only release it): pick another, twice.
            if "cannot listen on" not in str(e) or str(e).count("cannot listen on") > 2:
                raise
            new = free_port()
            config.write_text(config.read_text().replace(f"port = {metrics_port}\n",
                                                          f"port = {new}\n"))
            metrics_port = new
    snapshot = workdir / "dashboard.txt"
    out.write(f"demo: {len(fleet.devices)} devices -> local broker :{local.port} -> gateway "
              f"(metrics http://127.0.0.1:{metrics_port}/metrics) -> cloud broker "
              f":{cloud.port}; files in {workdir}\n")
    for line in scenario.skipped:
        out.write(f"scenario: skipped {line}\n")
    out.write("watch what reaches the cloud, in another terminal while the demo runs:\n"
              f"  {watch_command(cloud.port)}\n")
    out.flush()
    fleet.start()
    t0 = time.monotonic()
    control = ControlRoom(cloud.port, key_file, meter_ids[0])
    if patched:
        control.update(patched[0], unix_arch(fleet.exe), workdir)
    control.start()
    cpu0, own0 = fleet.cpu_seconds(), time.process_time()
    try:
        if monitor:
            subprocess.run(monitor_command(cloud.port, duration, snapshot), check=False)
        else:
            while duration <= 0 or time.monotonic() - t0 < duration:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cpu = fleet.cpu_seconds() - cpu0
        own = time.process_time() - own0  # virtual boards and emulators, in this process
        wall = time.monotonic() - t0
        fleet.power_off()
        gateway.terminate()  # drains: what it took is acknowledged, stored, forwarded
        gateway.wait(60)
        fleet.stop()
        time.sleep(0.5)
        summary = recorder.summary()
        summary["command"] = control.result()
        summary["update"] = control.update_result()
        recorder.close()
        local.stop()
        cloud.stop()
    summary.update(seconds=round(wall, 1), events=fleet.events_played,
                   cpu_per_device_pct=round(cpu / wall / len(fleet.devices) * 100, 2),
                   simulator_cpu_pct=round(own / wall * 100, 1),
                   snapshot=snapshot.read_text() if snapshot.exists() else "",
                   cloud_port=cloud.port, workdir=str(workdir))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def operator_key(path: Path) -> str:
    """A new operator key pair for the demo: the private half in ``path``, the public
    half (hex) returned for the gateway's [commands] operator_keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = secrets.token_bytes(32)
    path.write_text(private.hex() + "\n")
    path.chmod(0o600)
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw).hex()


class ControlRoom:
    """At COMMAND_AT_S, ``gridedge command``'s own code sends one signed command: the first
    meter's relay off for 10 s. Its answers, for the summary."""

    def __init__(self, cloud_port: int, key_file: Path, device: str) -> None:
        from tools.command import Options

        self.options = Options(host="127.0.0.1", port=cloud_port, gateway="demo-gw",
                               device=device, op="relay", key_file=key_file,
                               args={"state": "off", "seconds": 10}, timeout=20,
                               id="demo-relay-1")
        self.what = f"relay off for 10 s to {device}"
        self.answers = io.StringIO()
        self.rc: int | None = None
        self._thread = threading.Thread(target=self._send, name="control-room", daemon=True)

        self.patch: Any = None  # update.Options of the firmware update, if any
        self.update_out = io.StringIO()
        self.update_rc: int | None = None

    def update(self, device: str, arch: str, workdir: Path) -> None:
        """After the command, a firmware patch to ``device``: main.py with a new version
        (what a point release that changes one file sends)."""
        from tools.update import Options

        main = workdir / "main.py"
        main.write_text(re.sub(r'^FIRMWARE_VERSION = "[^"]*"',
                               f'FIRMWARE_VERSION = "{PATCH_VERSION}"',
                               MAIN_FILE.read_text(), count=1, flags=re.MULTILINE))
        self.patch = Options(host="127.0.0.1", port=self.options.port, gateway="demo-gw",
                             devices=[device], key_file=self.options.key_file, arch=arch,
                             main=main, only=("main.py",), trial_s=60, poll_s=1.0,
                             timeout=UPDATE_TIMEOUT_S)

    def start(self) -> None:
        self._thread.start()

    def _send(self) -> None:
        from tools.command import run

        time.sleep(COMMAND_AT_S)
        try:
            self.rc = run(self.options, out=self.answers)
        except Exception as e:
            self.answers.write(json.dumps({"state": f"error: {e}"}) + "\n")
        if self.patch is not None:
            from tools import update

            try:
                self.update_rc = update.run(self.patch, out=self.update_out)
            except Exception as e:
                self.update_out.write(f"{self.patch.devices[0]}: error: {e}\n")

    def update_result(self) -> dict[str, Any]:
        if self.patch is None:
            return {}
        device = self.patch.devices[0]
        lines = [line for line in self.update_out.getvalue().splitlines()
                 if line.startswith(f"{device}: ")]
        return {"what": f"firmware patch (main.py, version {PATCH_VERSION}) to {device}",
                "outcome": lines[-1][len(device) + 2:] if lines else "no answer yet",
                "exit": self.update_rc}

    def result(self) -> dict[str, Any]:
        states = [json.loads(line).get("state", "?")
                  for line in self.answers.getvalue().splitlines() if line.strip()]
        return {"what": self.what, "states": states, "exit": self.rc}


def watch_command(cloud_port: int) -> str:
    """What shows the cloud side's messages: the gateway's readings, alarms and status."""
    return f"mosquitto_sub -p {cloud_port} -t '{PREFIX}/#' -v"


def report(summary: dict[str, Any], out: TextIO) -> None:
    out.write(f"\ndemo summary: {summary['readings']} readings from {summary['devices']} "
              f"devices reached the cloud in {summary['seconds']} s\n")
    out.write(f"  alarms raised:  {summary['raised']}\n  alarms cleared: {summary['cleared']}\n")
    out.write(f"  scenario events played: {len(summary['events'])}; each device's firmware "
              f"process used {summary['cpu_per_device_pct']} % of a core; the virtual "
              f"boards {summary['simulator_cpu_pct']} % of a core in all\n")
    c = summary.get("command") or {}
    if c:
        done = " (the meter opened its relay, and closed it again itself)" \
            if "done" in c["states"] else ""
        out.write(f"  command: {c['what']}: {' -> '.join(c['states']) or 'no answer'}{done}\n")
    u = summary.get("update") or {}
    if u:
        out.write(f"  update: {u['what']}: {u['outcome']}\n")
    out.write("to watch a demo's cloud traffic, run the command it prints at start (each "
              "demo picks free ports), e.g.\n"
              f"  {watch_command(summary['cloud_port'])}\n")


def main(duration: float, workdir: str | None, meters: int | None, monitor: bool,
         out: TextIO) -> int:
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        summary = run(duration, Path(workdir), out, meters=meters, monitor=monitor)
    else:
        with tempfile.TemporaryDirectory(prefix="gridedge-demo-") as tmp:
            summary = run(duration, Path(tmp), out, meters=meters, monitor=monitor)
    report(summary, out)
    return 0
