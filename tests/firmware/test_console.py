"""The installer console, driven through its input stream, on the virtual board."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.firmware_fixtures import KEY, VirtualMeter
from tests.support.fwrunner import FirmwareRunner
from tools.vboard import VirtualBoard

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
    shown = replies(out, "show")
    # Each setting with what it accepts (installer.md: "show lists them with their ranges").
    for line in ("device_id = mtr-test-01  (1..32 chars)", "link = serial  (serial|mqtt)",
                 "sample_interval_ms = 1  (1..60000)", "ade_invert_a = off  (on|off)",
                 'ade_map =   (""|ab|ba)', "wifi_password = (not set)  (0..64 chars)"):
        assert line in shown, (line, shown)
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
        "read", "scan 1 3", "calibrate voltage 1 230.0", "READ", "save", "reset-energy 0",
    ])
    read = replies(out, "read")
    assert read[0] == "ch0 pzem004t: 230.4 V 4.200 A 950.0 W pf 0.980 50.00 Hz"
    assert read[1].startswith("ch1 ade7953: 221.1 V")  # uncalibrated: default 26000 counts/V
    assert replies(out, "scan 1 3") == ["PZEM on pzem: 1"]
    assert replies(out, "calibrate voltage 1 230.0")[0].startswith("ch1 voltage: 25000.0 counts")
    # The new calibration reads at once, before a save or reboot (installer.md's step 4).
    assert replies(out, "READ")[1].startswith("ch1 ade7953: 230.0 V"), replies(out, "READ")
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


# ---------------------------------------------------------------- hostile input


def raw_session(fw: FirmwareRunner, board: VirtualBoard, root: Path,
                typed: list[tuple[bytes, int]], timeout: float = 120) -> str:
    """Everything the console printed for these bytes (each part repeated), then 'exit'."""
    parts = [[data.hex(), times] for data, times in [*typed, (b"exit\n", 1)]]
    return fw.run("console_session.py", json.dumps(
        {"root": str(root) + os.sep, "input_parts": parts}), env=board.env(), timeout=timeout)


def test_hostile_lines_get_one_error_line_each_and_the_console_goes_on(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    """A 300-character first word (MicroPython refuses names of 254+ characters), lines of
    20 KB, 100 KB and 1 MB (MemoryError and quadratic time before), bytes that are not
    UTF-8 and control characters: one error line each (none for the control characters,
    which are dropped), and the next command is answered. The 1 MB line must not take
    minutes: the run's timeout is the bound, generous on purpose."""
    typed = [(b"a" * 300 + b"\n", 1), (b"get " + b"k" * 300 + b"\n", 1),
             (b"x" * 1000, 20), (b"\n", 1), (b"set wifi_ssid ", 1), (b"y" * 1000, 100),
             (b"\n", 1), (b"z" * 1000, 1000), (b"\n", 1), (b"\xff\xfe get device_id \xc3\n", 1),
             (b"\x00\x07\x1b\x01\n", 1), (b"get device_id\n", 1)]
    out = raw_session(fw, vboard, meter.root, typed, timeout=60).split("\n")
    answers = [line for line in out if not line.startswith("gridedge> ")]
    assert answers[0] == "gridedge console (help for commands, exit to leave)"
    assert answers[1:] == [
        "error: unknown command '" + "a" * 24 + "...' (try: help)",
        "error: unknown key " + "k" * 300 + " (try: show)",
        "error: line longer than 512 bytes: ignored, nothing was done",
        "error: line longer than 512 bytes: ignored, nothing was done",
        "error: line longer than 512 bytes: ignored, nothing was done",
        "error: the line is not UTF-8 text: ignored, nothing was done",
        "device_id = mtr-test-01",
        "",
    ], answers
    # The dropped part of a long line is not echoed; the 512 bytes before it are.
    assert max(len(line) for line in out) <= len("gridedge> ") + 512
    saved = json.loads((meter.root / "config.json").read_text())
    assert saved.get("wifi_ssid", "") == ""  # the overlong 'set' did nothing


SECRET_SPELLINGS = [  # (typed line, the secret in it, the setting it lands in or "key")
    ("SET wifi_password W-upper-1", "W-upper-1", "wifi_password"),
    ("Set mqtt_password M-mixed-2", "M-mixed-2", "mqtt_password"),
    ("   set wifi_password W-spaces-3", "W-spaces-3", "wifi_password"),
    ("\tset\tmqtt_password\tM-tabs-4", "M-tabs-4", "mqtt_password"),
    (' \t SET \t WIFI_PASSWORD "W quoted 5"', "W quoted 5", None),  # refused, still masked
    ("set wifi_passworX\bd W-backspace-6", "W-backspace-6", "wifi_password"),
    ("set wifi_ssid site\b\b\b\b\b\b\b\b\bpassword W-retyped-7", "W-retyped-7", "wifi_password"),
    (f"key set {NEW_KEY}", NEW_KEY, "key"),
    (f"KEY  SET {NEW_KEY}", NEW_KEY, "key"),
    (f"\tKey\tSet\t{NEW_KEY}", NEW_KEY, "key"),
]


@pytest.mark.parametrize("typed,secret,setting", SECRET_SPELLINGS,
                         ids=[str(i) for i in range(len(SECRET_SPELLINGS))])
def test_secrets_are_masked_by_the_parsed_command_however_typed(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter, typed: str, secret: str,
    setting: str | None
) -> None:
    """Masking follows the words, not a prefix: any case, spaces or tabs before and between
    them, a backspace that turns a word into a secret key. Nothing of the secret is
    echoed; the command works as typed."""
    out = raw_session(fw, vboard, meter.root, [(f"{typed}\nsave\n".encode(), 1)])
    for part in {secret, secret[:4], secret[-4:], *(w for w in secret.split() if len(w) > 2)}:
        assert part not in out and part.upper() not in out, out
    assert "*" * len(secret) in out
    if setting == "key":
        assert (meter.root / "key.bin").read_bytes() == bytes.fromhex(NEW_KEY)
    elif setting is not None:
        assert json.loads((meter.root / "config.json").read_text())[setting] == secret
    else:
        assert "error: unknown key WIFI_PASSWORD (try: show)" in out


def test_the_gateways_ca_reaches_the_board_in_hex_chunks(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter, tmp_path: Path
) -> None:
    """ca begin / add / end stores /ca.der (a DER certificate, checked), ca fingerprint
    and show report it; garbage is refused with one error line and stores nothing."""
    import hashlib

    from tests.support.certs import make_pki

    der = make_pki(tmp_path / "pki").ca_der.read_bytes()
    chunks = [der[i:i + 200].hex() for i in range(0, len(der), 200)]
    fp = hashlib.sha256(der).hexdigest()[:16]
    lines = ["ca fingerprint", "ca end", "ca add 00", "ca begin", "ca add 3005020100",
             "ca end", "ca begin", "ca add zz", "ca begin",
             *[f"ca add {c}" for c in chunks], "ca end", "ca fingerprint", "show"]
    out = session(fw, vboard, meter.root, lines)
    assert replies(out, "ca fingerprint") == ["ca: none"]
    assert replies(out, "ca end")[0].startswith("error: nothing received")
    assert replies(out, "ca add 00") == ["error: ca begin first"]
    assert replies(out, "ca add 3005020100") == ["ca: 5 bytes"]
    assert any(line == "error: not a certificate in DER form (openssl x509 -outform der)"
               for line in out)
    assert replies(out, "ca add zz")[0].startswith("error: ca add takes hex digits")
    assert f"ca stored, {len(der)} bytes, sha256 {fp}" in out
    assert f"ca: {len(der)} bytes, sha256 {fp}" in replies(out, "show")
    assert (meter.root / "ca.der").read_bytes() == der
    assert any(line.startswith("heap: ") for line in replies(out, "show"))


def test_exit_names_what_it_discards_and_what_was_stored_when_typed(
    fw: FirmwareRunner, vboard: VirtualBoard, meter: VirtualMeter
) -> None:
    """``key set`` writes key.bin at once: exit must not claim to discard it."""
    out = session(fw, vboard, meter.root, [
        "set report_interval_s 30", f"key set {NEW_KEY}", "set report_interval_s 20",
        "set ade_invert_b on"])
    assert "unsaved changes discarded: report_interval_s, ade_invert_b" in out, out
    assert "kept (stored when typed): key" in out, out
    assert (meter.root / "key.bin").read_bytes() == bytes.fromhex(NEW_KEY)
    saved = out.index("kept (stored when typed): key")
    assert out.index("unsaved changes discarded: report_interval_s, ade_invert_b") < saved
    # Nothing unsaved, nothing stored: exit says nothing.
    quiet = session(fw, vboard, meter.root, ["set report_interval_s 30", "save"])
    assert not [line for line in quiet if "discarded" in line or "kept" in line], quiet
