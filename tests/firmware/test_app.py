"""The unmodified firmware application on the virtual board, under both interpreters."""

from __future__ import annotations

from pathlib import Path

import serial

from gateway import framing
from gateway.errors import ProtocolError
from gateway.protocol import ST_INVALID, ST_TIMEOUT, FrameDecoder, Stat
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import FirmwareRunner
from tools.vboard import VirtualBoard


def test_frames_reach_the_gateway(fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    meter = VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10)
    stats = fw.run_json("app_run.py", meter.request(300), env=vboard.env())
    frames, errors = meter.frames()
    assert errors == []
    assert stats["frames"] == 3 and len(frames) == 3
    assert [f.seq for f in frames] == [0, 1, 2] and {f.boot for f in frames} == {1}
    pzem, ade_a, ade_b = frames[0].channels
    assert pzem.values["voltage"] == Stat(230_400, 230_400, 230_400)
    assert pzem.values["samples"] == 100 and pzem.status == 0
    assert ade_a.values["power"] == Stat(2_200_000, 2_200_000, 2_200_000)
    assert ade_b.values["power"] == Stat(-200_000, -200_000, -200_000)
    assert ade_a.flags == ["uncalibrated"]
    assert vboard.wdt_feeds == 300
    assert 900 <= frames[1].period_ms <= 1500
    assert frames[0].unix_ms is not None  # the unix port's clock counts as synchronised


def test_dead_ic_marks_channel_invalid_and_sampling_goes_on(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=100)  # each read waits 200 ms
    meter.pzem.fault = "silence"
    fw.run_json("app_run.py", meter.request(10), env=vboard.env())
    frames, errors = meter.frames()
    assert errors == [] and len(frames) == 1
    pzem, ade_a, _ = frames[0].channels
    assert pzem.status & ST_INVALID and pzem.status & ST_TIMEOUT
    assert set(pzem.values) == {"samples", "errors"} and pzem.values["errors"] == 10
    assert ade_a.valid and ade_a.values["samples"] == 10


def test_boot_counter_and_energy_survive_restart(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10)
    fw.run_json("app_run.py", meter.request(100), env=vboard.env())
    assert meter.ade is not None
    meter.ade.advance(36)  # 22 Wh on channel A between the runs... counted at the next read
    second = fw.run_json("app_run.py", meter.request(100), env=vboard.env())
    frames, _ = meter.frames()
    assert [f.boot for f in frames] == [1, 2] and second["boot"] == 2
    assert frames[1].channels[1].values["energy"] == 22  # Wh, restored and integrated
    assert second["state_writes"] == 2  # the boot counter, then the final checkpoint only


def test_serial_link_over_a_pty(fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """The gateway's side of a serial link is a real tty read with pyserial."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10)
    port = serial.Serial(vboard.bridge_pty("uart1"), timeout=0.2)
    try:
        fw.run_json("app_run.py", meter.request(200), env=vboard.env())
        data = port.read(65536)
    finally:
        port.close()
    decoder = FrameDecoder({DEVICE: KEY})
    frames = [decoder.decode(m) for m in framing.Deframer().feed(data)
              if not isinstance(m, ProtocolError)]
    assert [f.seq for f in frames] == [0, 1]
    assert data.startswith(b"\x00")  # the link opens with a delimiter
