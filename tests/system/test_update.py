"""Firmware updates through the whole chain: ``gridedge update`` on the cloud broker, the real
gateway process, its local broker, and the real firmware under MicroPython, started as a
board starts (boot.py, then main.py) from its own flash folder, which ``gridedge flash``'s
build laid out.

The board restarts whenever its process ends: ``machine.reset()`` (after the bundle is
staged), or main.py raising (a board's trial watchdog would reset it).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.command_parts import GW, OPERATOR, start_gateway
from tests.support.firmware_fixtures import VirtualMeter
from tests.support.fwrunner import MACHINE_SHIM, FirmwareRunner
from tests.support.mqtt_capture import Capture
from tools import bundle, flash, update
from tools.vboard import VirtualBoard

MAIN = (flash.FIRMWARE / "main.py").read_text()


class Board:
    """The device folder run as a board: each process is one boot, and the next starts
    when it ends, until stopped."""

    def __init__(self, fw: FirmwareRunner, root: Path, vboard: VirtualBoard) -> None:
        self.runner = FirmwareRunner("micropython", fw.exe, code=[root, root / "lib"],
                                     machine=MACHINE_SHIM)
        self.root, self.env = root, vboard.env()
        self.boots = 0
        self.proc: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            cmd, env = self.runner.command(MACHINE_SHIM / "board_runtime.py", None, self.env)
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.root,
                                         stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, text=True)
            self.boots += 1
            self.proc.wait()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None:
            self.proc.kill()
        self._thread.join(10)
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def flashed(vboard: VirtualBoard, tmp_path: Path, local: Mosquitto | None) -> VirtualMeter:
    """A meter folder as ``gridedge flash`` leaves it, compiled for this unix port; on
    Wi-Fi MQTT to ``local``, else on its serial link."""
    root = tmp_path / "meter"
    root.mkdir()
    link: dict[str, object] = {"link": "serial"} if local is None else {
        "link": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": local.port}
    meter = VirtualMeter(vboard, root, sample_interval_ms=100, report_interval_s=1, **link)
    flash.compile_tree(tmp_path / "stage", "x64")
    shutil.copytree(tmp_path / "stage", root, dirs_exist_ok=True)
    return meter


def options(tmp_path: Path, cloud: Mosquitto, main: str,
            only: tuple[str, ...] = ()) -> update.Options:
    key = tmp_path / "operator.key"
    key.write_text(OPERATOR.hex())
    (tmp_path / "main.py").write_text(main)
    return update.Options(host="127.0.0.1", port=cloud.port, gateway=GW,
                          devices=["mtr-test-01"], key_file=key, arch="x64",
                          main=tmp_path / "main.py", only=only, trial_s=60, poll_s=0.5,
                          timeout=60)


def test_an_update_is_applied_and_a_broken_one_rolls_back(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    meter = flashed(vboard, tmp_path, local)
    alarms = Capture(cloud.port, topic=f"gridedge/v1/gw/{GW}/alarms")
    gw, _log = start_gateway(tmp_path, local, cloud)
    board = Board(fw_micropython, meter.root, vboard)
    try:
        out = io.StringIO()
        new = MAIN.replace('FIRMWARE_VERSION = "0.1.0"', 'FIRMWARE_VERSION = "0.2.0"')
        assert new != MAIN
        assert update.run(options(tmp_path, cloud, new), out) == 0, out.getvalue()
        assert "mtr-test-01: running 0.2.0" in out.getvalue(), out.getvalue()
        assert f"bundle 0.2.0: {len(flash.modules()) + 1} files" in out.getvalue()  # whole
        assert (meter.root / "main.py").read_text() == new
        assert board.boots == 2  # one restart, into the new firmware: it stayed
        # A patch whose main.py raises at boot: three trial boots, then boot.py takes it
        # back.
        out = io.StringIO()
        broken = new.replace('FIRMWARE_VERSION = "0.2.0"', 'FIRMWARE_VERSION = "0.3.0"\n'
                             'raise RuntimeError("broken on purpose")')
        assert update.run(options(tmp_path, cloud, broken, ("main.py",)), out) == 1, \
            out.getvalue()
        assert "mtr-test-01: rolled back from 0.3.0: did not start in 3 boots" in \
            out.getvalue(), out.getvalue()
        assert (meter.root / "main.py").read_text() == new
        assert board.boots == 6  # three trial boots failed; the sixth rolled back
        # Unasked, the meter said both outcomes: the cloud's command_results events.
        def outcomes() -> list[tuple[str, str]]:
            """The results of the two ``update`` commands (their first: "have 0 of N")
            after that first: what came of each update."""
            results = [r for p in alarms.payloads("/alarms") for e in json.loads(p)
                       if e["kind"] == "command_results" for r in e["results"]]
            begun = {r["id"] for r in results if r.get("reason", "").startswith("have 0 of")}
            return [(r["state"], r["reason"]) for r in results
                    if r["id"] in begun and not r["reason"].startswith("have 0 of")]

        assert alarms.wait(lambda: len(outcomes()) == 2, 10), outcomes()
        assert outcomes() == [("done", "running 0.2.0"), (
            "failed", "rolled back from 0.3.0: did not start in 3 boots")]
    finally:
        alarms.close()
        board.stop()
        assert gw.terminate() == 0


def test_a_patch_goes_down_the_serial_line(
        fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path,
        local: Mosquitto, cloud: Mosquitto) -> None:
    """The meter on its UART (bridged to a pty the gateway writes): a patch of two files
    is sent, staged, switched in and confirmed. The meter held the first 10 chunks
    already (an earlier run was cut off): the tool sends the rest only."""
    meter = flashed(vboard, tmp_path, None)
    new = MAIN.replace('FIRMWARE_VERSION = "0.1.0"', 'FIRMWARE_VERSION = "0.2.1"')
    b = bundle.make("x64", new.encode(), ("gemeter/cmdrun.mpy",))
    (meter.root / "ota").mkdir()
    (meter.root / "ota" / "bundle").write_bytes(b.data[:2560])
    (meter.root / "ota.json").write_text(json.dumps(
        {"st": "recv", "v": b.version, "size": len(b.data), "sha256": b.sha256,
         "trial_s": 60, "id": ""}))
    tty = vboard.bridge_pty(meter.link_bus.name)
    gw, _log = start_gateway(tmp_path, local, cloud, serial_tty=tty)
    board = Board(fw_micropython, meter.root, vboard)
    try:
        out = io.StringIO()
        patch = options(tmp_path, cloud, new, ("gemeter/cmdrun.mpy",))
        assert update.run(patch, out) == 0, out.getvalue()
        assert "bundle 0.2.1: 2 files" in out.getvalue()
        rest = -(-(len(b.data) - 2560) // 256)
        assert f"{rest} chunks;" in out.getvalue(), (rest, out.getvalue())
        assert "mtr-test-01: running 0.2.1" in out.getvalue(), out.getvalue()
        assert (meter.root / "main.py").read_text() == new and board.boots == 2
    finally:
        board.stop()
        assert gw.terminate() == 0
