"""firmware/main.py, unmodified, as a board runs it: boot window, console, main loop."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.firmware_fixtures import VirtualMeter
from tests.support.fwrunner import FIRMWARE, FirmwareRunner
from tools.vboard import VirtualBoard


def test_without_key_it_goes_to_the_console(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    meter = VirtualMeter(vboard, tmp_path)
    (meter.root / "key.bin").unlink()
    out = fw.run(FIRMWARE / "main.py", stdin="", env=vboard.env(), cwd=meter.root)
    lines = out.split("\n")
    assert lines[0] == "gridedge firmware 0.1.0"
    assert "gridedge: cannot start: no device key: run the console's 'key generate' or " \
        "provision\ngridedge console (help for commands, exit to leave)" in out


def test_main_loop_sends_frames_until_stopped(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=20, report_interval_s=1)
    proc = fw.start(FIRMWARE / "main.py", env=vboard.env(), cwd=meter.root)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(meter.frames()[0]) < 2:
            time.sleep(0.2)
    finally:
        proc.kill()
        out, err = proc.communicate()
    frames, errors = meter.frames()
    assert errors == [], err
    assert len(frames) >= 2 and [f.seq for f in frames[:2]] == [0, 1], (out, err)
    assert out.startswith("gridedge firmware 0.1.0\npress Enter within 3 s")
    assert vboard.wdt_timeout_ms == 8000 and vboard.wdt_feeds > 0


def test_a_key_made_at_the_console_starts_the_meter_when_it_is_left(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """No key: "cannot start", console. The installer generates one and leaves: the meter
    starts (no reset needed) and sends frames signed with the new key."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=20, report_interval_s=1)
    (meter.root / "key.bin").unlink()
    proc = fw.start(FIRMWARE / "main.py", env=vboard.env(), cwd=meter.root)
    try:
        assert proc.stdin is not None
        proc.stdin.write("\n")  # into the boot window's console: leave it at once
        proc.stdin.write("exit\n")
        proc.stdin.write("key generate\nexit\n")  # at the "cannot start" console
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (meter.root / "key.bin").exists():
            time.sleep(0.1)
        meter.key = (meter.root / "key.bin").read_bytes()  # what frames are signed with
        while time.monotonic() < deadline and len(meter.frames()[0]) < 1:
            time.sleep(0.2)
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert "gridedge: cannot start: no device key" in out, (out, err)
    assert "new key, fingerprint" in out
    frames, errors = meter.frames()
    assert errors == [] and frames and frames[0].seq == 0, (out, err, errors)


def test_nothing_typed_at_the_console_keeps_the_meter_from_starting(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """Into the boot window's console: a 300-character word (RuntimeError: name too long
    under MicroPython, which ended main.py before), a 20 KB line, bytes that are not
    UTF-8. Each is one error line; after exit the meter starts and sends frames."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=20, report_interval_s=1)
    proc = fw.start(FIRMWARE / "main.py", env=vboard.env(), cwd=meter.root)
    try:
        assert proc.stdin is not None
        proc.stdin.buffer.write(b"\n" + b"a" * 300 + b"\n" + b"x" * 20_000 + b"\n"
                                + b"\xff\xc3\n" + b"exit\n")
        proc.stdin.buffer.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(meter.frames()[0]) < 2:
            time.sleep(0.2)
        alive = proc.poll() is None
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert alive, (out, err)
    frames, errors = meter.frames()
    assert errors == [] and [f.seq for f in frames[:2]] == [0, 1], (out, err)
    assert [line for line in out.split("\n") if "error:" in line] == [
        "error: unknown command '" + "a" * 24 + "...' (try: help)",
        "error: line longer than 512 bytes: ignored, nothing was done",
        "error: the line is not UTF-8 text: ignored, nothing was done"], out
    assert "Traceback" not in err, err
