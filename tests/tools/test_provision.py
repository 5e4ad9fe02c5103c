"""``gridedge provision`` against the real firmware console: MicroPython behind a socat pty.

The device is a tools.vdevice.VirtualDevice whose program is firmware/main.py
(unmodified, from the source tree) under the MicroPython unix port, on the virtual board
with the PZEM-004T and ADE7953 emulators, its output also copied to a transcript file. The
tool runs as the installer runs it (``python -m tools.cli provision``) against a
gateway config in a temporary folder; the tests then read what the board saved, what the
registry holds, and decode the frames the meter sends with the registry's key. They need
``micropython`` and ``socat``: without them they skip with a reason (MicroPython wheels
exist only for x86-64 Linux), and under CI (``CI=true``) they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import framing
from gateway.config import load
from gateway.errors import ProtocolError
from gateway.protocol import Frame, FrameDecoder
from gateway.registry import Registry
from tests.support.brokers import Mosquitto
from tests.support.certs import make_pki
from tests.support.firmware_fixtures import VirtualMeter
from tests.support.fwrunner import FIRMWARE, MPY_LIB, firmware_module
from tests.support.mqtt_capture import Capture
from tools.provision import console_value
from tools.vboard import VirtualBoard
from tools.vdevice import MACHINE_SHIM, VirtualDevice

WIFI_SECRET = "correct-horse-battery"
MQTT_SECRET = "mqtt-s3cret-pw"
RUN_MAIN = """#!/bin/sh
# firmware/main.py as a board runs it; everything it prints also goes to the transcript
export MICROPYPATH={path} GRIDEDGE_VBOARD={vboard}
exec 2>&1
{micropython} main.py | tee -a {transcript}
"""


def gridedge(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gridedge provision: ")
    return lines[0][len("gridedge provision: "):]


@pytest.fixture
def gateway_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway" / "gateway.toml"
    path.parent.mkdir()
    path.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[uplink]\nenabled = false\n')
    return path


class Board:
    """A fresh meter (board file, no config, no key) running main.py behind a pty."""

    def __init__(self, micropython: str, vboard: VirtualBoard, folder: Path) -> None:
        self.root = folder / "device"
        self.root.mkdir(parents=True)
        self.meter = VirtualMeter(vboard, self.root, report_interval_s=1)
        (self.root / "key.bin").unlink()
        (self.root / "config.json").unlink()
        shutil.copyfile(FIRMWARE / "main.py", self.root / "main.py")
        self.transcript = folder / "transcript.log"
        script = folder / "run-main"
        script.write_text(RUN_MAIN.format(
            path=f"{MACHINE_SHIM}:{FIRMWARE}:{MPY_LIB}:.frozen", vboard=vboard.path,
            micropython=micropython, transcript=self.transcript))
        script.chmod(0o755)
        self.device = VirtualDevice(self.root, str(script))

    def frames(self, device_id: str, key: bytes) -> list[Frame]:
        decoder = FrameDecoder({device_id: key})
        frames = []
        for item in framing.Deframer().feed(b"".join(self.meter.link_bus.written)):
            assert not isinstance(item, ProtocolError), item
            frames.append(decoder.decode(item))
        return frames


@pytest.fixture
def board(micropython: str, vboard: VirtualBoard, tmp_path: Path) -> Iterator[Board]:
    b = Board(micropython, vboard, tmp_path / "b")
    with b.device:
        yield b


def provision(board: Board, config: Path, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return gridedge("provision", "--port", str(board.device.link), "--gateway-config",
                    str(config), *args, env=env)


def wait_for_frames(board: Board, device_id: str, key: bytes, count: int) -> list[Frame]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        frames = board.frames(device_id, key)
        if len(frames) >= count:
            return frames
        time.sleep(0.1)
    raise AssertionError(f"no frames; transcript: {board.transcript.read_text()}")


def test_provision_configures_saves_registers_and_the_meter_runs(
    board: Board, gateway_config: Path, tmp_path: Path
) -> None:
    secret_file = tmp_path / "mqtt.pw"
    secret_file.write_text(MQTT_SECRET + "\n")
    assert board.meter.ade is not None
    board.meter.ade.voltage = 230.0
    board.meter.ade.front_end.volts = 25_000.0
    proc = provision(
        board, gateway_config, "--device-id", "mtr-0042", "--link", "serial",
        "--set", "mqtt_host=gw.local", "--set", "mqtt_port=8883", "--set", "wifi_ssid=site-7",
        "--set", "sample_interval_ms=20", "--set", "report_interval_s=1",
        "--secret-env", "wifi_password=WIFI_PASS",
        "--secret-file", f"mqtt_password={secret_file}", "--calibrate", "voltage", "1", "230.0",
        "--site", "north", "--feeder", "F3", "--channel", "L1", "--channel", "L2",
        env={"WIFI_PASS": WIFI_SECRET})
    assert proc.returncode == 0, proc.stderr

    key = load(gateway_config).device_keys()["mtr-0042"]
    assert (board.root / "key.bin").read_bytes() == key
    saved = json.loads((board.root / "config.json").read_text())
    assert {k: saved[k] for k in ("device_id", "link", "mqtt_host", "mqtt_port", "wifi_ssid",
                                  "wifi_password", "mqtt_password", "sample_interval_ms")} == {
        "device_id": "mtr-0042", "link": "serial", "mqtt_host": "gw.local", "mqtt_port": 8883,
        "wifi_ssid": "site-7", "wifi_password": WIFI_SECRET, "mqtt_password": MQTT_SECRET,
        "sample_interval_ms": 20}
    assert saved["calibration"]["1"]["volts"] == pytest.approx(25_000.0, rel=1e-4)
    (entry,) = Registry(gateway_config).entries()
    assert (entry.device.role, entry.device.site, entry.device.feeder,
            entry.device.channels) == ("meter", "north", "F3", ["L1", "L2"])
    fp = hashlib.sha256(b"gridedge-key:" + key).hexdigest()[:16]  # docs/protocol.md
    assert f"key set on the board, fingerprint {fp}\n" in proc.stdout
    assert proc.stdout.startswith(f"console on {board.device.link}\n")
    assert proc.stdout.endswith("left the console: the meter starts with its new settings\n")

    # The console left, the meter runs with the saved settings; the gateway's key verifies it.
    frames = wait_for_frames(board, "mtr-0042", key, 2)
    assert [f.seq for f in frames[:2]] == [0, 1] and frames[0].device_id == "mtr-0042"

    transcript = board.transcript.read_text()
    assert f"gridedge> key set {'*' * 64}\nkey stored, fingerprint {fp}\n" in transcript
    assert f"gridedge> set wifi_password {'*' * len(WIFI_SECRET)}\n" in transcript
    everything = proc.stdout + proc.stderr + transcript
    for secret in (key.hex(), key.hex().upper(), WIFI_SECRET, MQTT_SECRET):
        assert secret not in everything


def test_with_the_gateways_ca_the_meter_sends_over_tls(
    board: Board, gateway_config: Path, tmp_path: Path
) -> None:
    """--ca-file (PEM here): the board gets the CA as /ca.der and mqtt_tls on; after the
    console is left, the meter publishes to a TLS-only broker that checks its password,
    verifying the broker against that CA."""
    pki = make_pki(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "meter", MQTT_SECRET],
                   check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "tls-broker", extra="\n".join([
        f"cafile {pki.ca_pem}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        f"password_file {passwd}", "allow_anonymous false", "",
    ])).start()
    capture = Capture(broker.port, ca=str(pki.ca_pem), user="meter", password=MQTT_SECRET,
                      host="localhost")
    try:
        proc = provision(
            board, gateway_config, "--device-id", "mtr-tls", "--link", "mqtt",
            "--set", "mqtt_host=localhost", "--set", f"mqtt_port={broker.port}",
            "--set", "mqtt_user=meter", "--secret-env", "mqtt_password=MQTT_PW",
            "--set", "sample_interval_ms=20", "--set", "report_interval_s=1",
            "--ca-file", str(pki.ca_pem), env={"MQTT_PW": MQTT_SECRET})
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        der = pki.ca_der.read_bytes()
        assert (board.root / "ca.der").read_bytes() == der
        assert json.loads((board.root / "config.json").read_text())["mqtt_tls"] == "on"
        digest = hashlib.sha256(der).hexdigest()[:16]
        assert (f"the gateway's CA stored on the board as /ca.der ({len(der)} bytes, sha256 "
                f"{digest}): MQTT over TLS\n") in proc.stdout
        key = load(gateway_config).device_keys()["mtr-tls"]
        assert capture.wait(lambda: len(capture.payloads("mtr-tls/frame")) >= 2, 20), \
            board.transcript.read_text()
        frames = [FrameDecoder({"mtr-tls": key}).decode(p)
                  for p in capture.payloads("mtr-tls/frame")]
        assert [f.seq for f in frames[:2]] == [0, 1]
    finally:
        capture.close()
        broker.stop()
    assert MQTT_SECRET not in proc.stdout + proc.stderr + board.transcript.read_text()


def test_an_mqtt_password_without_tls_is_refused_unless_allowed(
    board: Board, gateway_config: Path
) -> None:
    """MQTT with a password and no CA (auto means plaintext then) or mqtt_tls off: refused
    before anything is saved. mqtt_tls on without a CA: refused. --allow-plaintext: done,
    with a warning."""
    mqtt = ("--device-id", "mtr-pw", "--link", "mqtt", "--set", "mqtt_host=gw.local",
            "--secret-env", "mqtt_password=MQTT_PW")
    env = {"MQTT_PW": MQTT_SECRET}
    line = one_line_error(provision(board, gateway_config, *mqtt, env=env))
    assert line == ("the board would send its MQTT password over Wi-Fi in clear (no CA "
                    "certificate (/ca.der) on the board): give the gateway's CA with "
                    "--ca-file, or --allow-plaintext to accept that; nothing saved on the board")
    line = one_line_error(provision(board, gateway_config, *mqtt, "--set", "mqtt_tls=off",
                                    env=env))
    assert line.startswith("the board would send its MQTT password over Wi-Fi in clear "
                           "(mqtt_tls is off)")
    line = one_line_error(provision(board, gateway_config, *mqtt, "--set", "mqtt_tls=on",
                                    env=env))
    assert line == ("mqtt_tls is on but the board has no CA certificate (/ca.der): give the "
                    "gateway's CA with --ca-file; nothing saved on the board")
    assert sorted(p.name for p in board.root.iterdir()) == ["board.json", "main.py"]
    assert Registry(gateway_config).entries() == []

    proc = provision(board, gateway_config, *mqtt, "--allow-plaintext", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("WARNING: MQTT without TLS (no CA certificate (/ca.der) on the "
                           "board): the board's MQTT password crosses the Wi-Fi in clear "
                           "(--allow-plaintext)\n")
    saved = json.loads((board.root / "config.json").read_text())
    assert saved["mqtt_tls"] == "auto" and saved["mqtt_password"] == MQTT_SECRET
    assert MQTT_SECRET not in proc.stdout + proc.stderr


def test_a_ca_file_that_is_no_certificate_is_refused_before_the_port(
    gateway_config: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    line = one_line_error(gridedge("provision", "--port", "/dev/null", "--device-id", "m1",
                                   "--gateway-config", str(gateway_config),
                                   "--ca-file", str(bogus)))
    assert line == f"--ca-file {bogus}: not a certificate (PEM or DER)"


def test_at_the_repl_with_a_key_file_and_reboot(
    micropython: str, gateway_config: Path, tmp_path: Path
) -> None:
    # A board at the MicroPython REPL (the plain virtual device): the tool starts the console.
    root = tmp_path / "device"
    root.mkdir()
    (root / "lib").symlink_to(FIRMWARE)  # the device finds gemeter in its lib folder
    key = bytes(range(7, 39))
    key_file = tmp_path / "key.hex"
    key_file.write_text(key.hex() + "\n")
    with VirtualDevice(root, micropython) as device:
        proc = gridedge("provision", "--port", str(device.link), "--device-id", "ls-7",
                        "--role", "line_sensor", "--gateway-config", str(gateway_config),
                        "--key-file", str(key_file), "--reboot")
        assert proc.returncode == 0, proc.stderr
        device.wait_resets(1)  # `reboot`: the shim's machine.reset() ends the process
    assert (root / "key.bin").read_bytes() == key == load(gateway_config).device_keys()["ls-7"]
    assert json.loads((root / "config.json").read_text())["device_id"] == "ls-7"
    assert Registry(gateway_config).entries()[0].device.role == "line_sensor"
    assert proc.stdout.endswith("the board reboots with its new settings\n")
    assert key.hex() not in proc.stdout + proc.stderr


def test_console_errors_stop_the_run_and_nothing_is_saved(
    board: Board, gateway_config: Path
) -> None:
    # Settings the firmware's schema refuses are refused here, before the port is opened
    # (test_settings_are_checked_here_before_the_port_is_opened); a secret is checked only
    # by the board, so its refusal takes the console's path.
    line = one_line_error(provision(board, gateway_config, "--device-id", "mtr-1",
                                    "--set", "mqtt_port=99999"))
    assert line.startswith("--set mqtt_port: mqtt_port must be 1..65535")
    with pytest.MonkeyPatch.context() as mp:  # a secret's value never appears in the message
        mp.setenv("LONG_PW", "x" * 65)
        line = one_line_error(provision(board, gateway_config, "--device-id", "mtr-1",
                                        "--secret-env", "wifi_password=LONG_PW"))
    assert line.startswith("the board refused 'set wifi_password (secret)': wifi_password "
                           "must be 0..64 characters") and "x" * 65 not in line
    # The console discarded the change (exit); without a key the firmware cannot start and
    # opens its console again (no reset), where the next run finds it.
    assert board.device.resets == 0
    assert sorted(p.name for p in board.root.iterdir()) == ["board.json", "main.py"]
    assert Registry(gateway_config).entries() == []


def test_duplicate_id_is_refused_before_touching_the_port(gateway_config: Path) -> None:
    Registry(gateway_config).add("mtr-dup")
    master, slave = os.openpty()
    try:
        line = one_line_error(gridedge("provision", "--port", os.ttyname(slave), "--device-id",
                                       "mtr-dup", "--gateway-config", str(gateway_config)))
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)  # nothing was sent to the port
    finally:
        os.close(master)
        os.close(slave)
    assert line == f"device mtr-dup is already registered in {gateway_config.parent}/" \
        "devices.toml; remove it there first (gridedge-gateway devices remove ID)"


def test_missing_port(gateway_config: Path, tmp_path: Path) -> None:
    line = one_line_error(gridedge("provision", "--port", str(tmp_path / "ttyUSB0"),
                                   "--device-id", "m1", "--gateway-config", str(gateway_config)))
    assert line.startswith(f"no port {tmp_path / 'ttyUSB0'}: is the board plugged in")


def test_silent_port(gateway_config: Path) -> None:
    master, slave = os.openpty()  # a port that exists, with nothing behind it
    name = os.ttyname(slave)
    try:
        started = time.monotonic()
        proc = gridedge("provision", "--port", name, "--device-id", "m1",
                        "--gateway-config", str(gateway_config), "--timeout", "1")
        assert time.monotonic() - started < 10
    finally:
        os.close(master)
        os.close(slave)
    assert one_line_error(proc) == f"no console answering on {name} within 1 s: " \
        "reset the board and run provision again within its 3-s boot window"
    assert Registry(gateway_config).entries() == []


def test_secrets_on_the_command_line_are_refused(gateway_config: Path) -> None:
    line = one_line_error(gridedge("provision", "--port", "/dev/null", "--device-id", "m1",
                                   "--gateway-config", str(gateway_config),
                                   "--set", "wifi_password=hunter2"))
    assert line.startswith("--set wifi_password: a secret on the command line shows in ps")
    assert "hunter2" not in line
    line = one_line_error(gridedge("provision", "--port", "/dev/null", "--device-id", "m1",
                                   "--gateway-config", str(gateway_config),
                                   "--secret-env", "wifi_password=NOT_SET_ANYWHERE"))
    assert line == "--secret-env wifi_password: environment variable NOT_SET_ANYWHERE is not set"


def test_settings_are_checked_here_before_the_port_is_opened(gateway_config: Path) -> None:
    """A typo or a value the console would refuse stops provision before it touches the
    board (/dev/null is no console: reaching it would fail differently)."""
    def provision(*extra: str) -> str:
        return one_line_error(gridedge("provision", "--port", "/dev/null",
                                       "--gateway-config", str(gateway_config), *extra))

    assert provision("--device-id", "m1", "--set", "wifi_sid=x") == \
        "--set wifi_sid: no such setting (did you mean wifi_ssid?)"
    assert provision("--device-id", "m1", "--set", "zzz=1") == \
        "--set zzz: no such setting (gridedge provision --help)"
    assert provision("--device-id", "m1", "--set", "mqtt_port=99999") == \
        "--set mqtt_port: mqtt_port must be 1..65535 (gateway's MQTT broker port)"
    assert provision("--device-id", "bad/id") == \
        "--device-id device_id: device_id may only hold A-Z a-z 0-9 . _ -"


def _fake_console(master: int, log: list[str]) -> None:
    """A console that stores any key but shows another fingerprint (a broken firmware)."""
    os.write(master, b"gridedge console\ngridedge> ")
    buf = b""
    while True:
        try:
            buf += os.read(master, 1024)
        except OSError:
            return
        while b"\r" in buf:
            line, _, buf = buf.partition(b"\r")
            text = line.decode()
            log.append(text)
            reply = ""
            if text.startswith("key set "):
                text, reply = "key set " + "*" * 64, "key stored, fingerprint 0123456789abcdef\n"
            elif text == "key fingerprint":
                reply = "fingerprint 0123456789abcdef\n"
            os.write(master, f"{text}\n{reply}gridedge> ".encode())


def test_fingerprint_mismatch_stops_before_save(gateway_config: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo by the pty itself, as a USB serial port
    log: list[str] = []
    thread = threading.Thread(target=_fake_console, args=(master, log), daemon=True)
    thread.start()
    try:
        line = one_line_error(gridedge("provision", "--port", os.ttyname(slave), "--device-id",
                                       "m1", "--gateway-config", str(gateway_config)))
    finally:
        os.close(slave)
        os.close(master)
    assert line.endswith(", but the board answered 'key stored, fingerprint 0123456789abcdef / "
                         "fingerprint 0123456789abcdef'; the board keeps the new key (not "
                         "registered), its settings are not saved")
    sent = [c for c in log if c]
    assert [c[:8] for c in sent] == ["show", "set devi", "key set ", "key fing", "exit"]
    assert Registry(gateway_config).entries() == []


@given(st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")),
               max_size=40))
@settings(max_examples=300)
def test_what_provision_types_is_what_the_console_reads(value: str) -> None:
    """Any printable value (spaces, quotes, backslashes, empty) survives the trip through
    provision's quoting and the firmware console's parser (run in-process, CPython)."""
    console = firmware_module("gemeter.console")
    assert console.set_args(f"set wifi_password {console_value(value)}") == (
        "wifi_password", value)
