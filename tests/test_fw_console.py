"""The installer console, driven through its input stream, on the virtual board."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware_fixtures import KEY, VirtualMeter
from fwrunner import FirmwareRunner
from gridedge.tools.vboard import VirtualBoard

WIFI_SECRET = "hunter2-wifi-secret"
MQTT_SECRET = "s3cr3t-mqtt"
NEW_KEY = bytes(range(200, 232)).hex()


def session(fw: FirmwareRunner, board: VirtualBoard, root: Path, lines: list[str]) -> list[str]:
    out = fw.run("console_session.py", json.dumps(
        {"root": str(root) + os.sep, "input": "\n".join([*lines, "exit"]) + "\n"}),
        env=board.env())
    return out.split("\n")


@pytest.fixture
def meter(vboard: VirtualBoard, tmp_path: Path) -> VirtualMeter:
    return VirtualMeter(vboard, tmp_path, pzem_timeout_ms=30)


SECRET_PREFIXES = ("set wifi_password ", "set mqtt_password ", "key set ")


def echoed(command: str) -> str:
    """The console's echo of a typed command: a secret's characters show as '*'."""
    for p in SECRET_PREFIXES:
        if command.startswith(p):
            return p + "*" * (len(command) - len(p))
    return command


def replies(out: list[str], command: str) -> list[str]:
    """The lines printed in answer to one command (between its prompt and the next)."""
    for i, line in enumerate(out):
        if line.startswith("gridedge> ") and line[len("gridedge> "):] == echoed(command):
            rest = []
            for nxt in out[i + 1:]:
                if nxt.startswith("gridedge> "):
                    break
                rest.append(nxt)
            return rest
    raise AssertionError(f"no prompt for {command!r} in {out}")


def test_settings_and_secrets(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    out = session(fw, vboard, meter.root, [
        "show", f"set wifi_password {WIFI_SECRET}", f"set mqtt_password {MQTT_SECRET}",
        "get wifi_password", "set report_interval_s 30", "save", "show",
    ])
    text = "\n".join(out)
    assert WIFI_SECRET not in text and MQTT_SECRET not in text  # never echoed nor shown
    assert "*" * len(WIFI_SECRET) in text  # typed characters of a secret echo as '*'
    assert "device_id = mtr-test-01" in replies(out, "show")
    assert replies(out, "get wifi_password") == ["wifi_password = (set)"]
    assert replies(out, "save") == [f"saved {meter.root}{os.sep}config.json"]
    saved = json.loads((meter.root / "config.json").read_text())
    assert saved["wifi_password"] == WIFI_SECRET and saved["report_interval_s"] == 30


def test_values_keep_their_spaces_and_can_be_emptied(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    """A Wi-Fi name or password with spaces, one with outer spaces (quoted), a quote and a
    backslash inside quotes, and a setting emptied with \"\"."""
    lines = ["set wifi_ssid Site 7  Annex", 'set wifi_password " pass phrase "',
             'set mqtt_user "a\\"b\\\\c"', "set mqtt_user2", 'set ntp_host ""', "save"]
    out = session(fw, vboard, meter.root, lines)
    assert replies(out, lines[0]) == ["wifi_ssid = Site 7  Annex (not saved yet: save)"]
    assert " pass phrase " not in "\n".join(out)  # a secret is never shown
    assert replies(out, "set mqtt_user2")[0].startswith("error: usage: set KEY VALUE")
    saved = json.loads((meter.root / "config.json").read_text())
    assert saved["wifi_ssid"] == "Site 7  Annex"
    assert saved["wifi_password"] == " pass phrase "
    assert saved["mqtt_user"] == 'a"b\\c'
    assert saved["ntp_host"] == ""


def test_every_bad_input_gets_one_error_line(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    bad = [
        "frobnicate", "get", "get nosuch", "set", "set nosuch 1", "set sample_interval_ms abc",
        "set sample_interval_ms 0", "set link carrier-pigeon", "set mqtt_tls maybe",
        "set device_id bad/id", "set pzem_addresses 1,999", "calibrate", "calibrate heat 1 2",
        "calibrate voltage x 230", "calibrate voltage 1 -5", "calibrate voltage 9 230",
        "calibrate voltage 0 230", "pzem-address", "pzem-address x", "pzem-address 300",
        "reset-energy", "reset-energy x", "reset-energy 9", "key", "key set zz",
        f"key set {'ab' * 31}", "key frob", "wifi", "wifi test", "link", "factory-reset",
        "scan 5", "scan 9 2",
    ]
    out = session(fw, vboard, meter.root, bad)
    for command in bad:
        answer = replies(out, command)
        assert len(answer) == 1 and answer[0].startswith("error: "), (command, answer)
    assert replies(out, "calibrate voltage 0 230") == [
        "error: channel 0 is a PZEM-004T: factory calibrated, nothing to set"]
    assert "no Wi-Fi" in replies(out, "wifi test")[0]


def test_hardware_commands(fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter) -> None:
    assert meter.ade is not None
    meter.ade.voltage = 230.0
    meter.ade.front_end.volts = 25_000.0  # this board's divider differs from the default
    meter.pzem.energy_wh = 777
    out = session(fw, vboard, meter.root, [
        "read", "scan 1 3", "calibrate voltage 1 230.0", "save", "reset-energy 0",
    ])
    read = replies(out, "read")
    assert read[0] == "ch0 pzem004t: 230.4 V 4.200 A 950.0 W pf 0.980 50.00 Hz"
    assert read[1].startswith("ch1 ade7953: 221.1 V")  # uncalibrated: default 26000 counts/V
    assert replies(out, "scan 1 3") == ["PZEM on pzem: 1"]
    assert replies(out, "calibrate voltage 1 230.0")[0].startswith("ch1 voltage: 25000.0 counts")
    cal = json.loads((meter.root / "config.json").read_text())["calibration"]["1"]
    assert cal["volts"] == pytest.approx(25_000.0, rel=1e-4) and "date" in cal
    assert replies(out, "reset-energy 0") == ["ch0 energy counter reset"]
    assert meter.pzem.energy_wh == 0


def test_keys_are_never_printed(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    out = session(fw, vboard, meter.root, [
        "key fingerprint", "key generate", "key fingerprint", f"key set {NEW_KEY}",
        "key fingerprint", "show",
    ])
    text = "\n".join(out)
    assert KEY.hex() not in text and NEW_KEY not in text and NEW_KEY.upper() not in text
    generated = (meter.root / "key.bin").read_bytes()
    assert generated.hex() not in text
    fingerprints = [line for line in out if "fingerprint" in line]
    assert len(fingerprints) >= 5
    assert (meter.root / "key.bin").read_bytes() == bytes.fromhex(NEW_KEY)


def test_factory_reset(fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter) -> None:
    out = session(fw, vboard, meter.root, ["factory-reset confirm", "key fingerprint"])
    assert replies(out, "factory-reset confirm")[0].startswith("factory reset done")
    assert replies(out, "key fingerprint") == ["error: no key yet (key generate)"]
    assert not (meter.root / "config.json").exists() and not (meter.root / "key.bin").exists()


def test_broken_config_falls_back_and_says_so(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    (meter.root / "config.json").write_text('{"sample_interval_ms": "fast", "bogus": 1,')
    out = session(fw, vboard, meter.root, ["get sample_interval_ms"])
    assert out[0].startswith("problem: ") and "not valid JSON" in out[0]
    assert replies(out, "get sample_interval_ms") == ["sample_interval_ms = 1000"]
    (meter.root / "config.json").write_text('{"sample_interval_ms": "fast", "bogus": 1}')
    out = session(fw, vboard, meter.root, ["show"])
    problems = [line for line in out if line.startswith("problem: ")]
    assert any("sample_interval_ms must be a whole number" in p for p in problems)
    assert any("unknown key bogus" in p for p in problems)
