"""Serial ingest on real pseudo-terminals: garbage, corruption, unplug and replug."""

from __future__ import annotations

from pathlib import Path

from gateway import framing
from gateway.config import SerialPort
from gateway.devices import Device
from gateway.inbox import Inbox
from gateway.ingest_serial import SerialIngest
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.store_rows import TELEMETRY
from tests.support.gateway_fixtures import Line, device_key, frame
from tests.support.mqtt_capture import wait_for


def make_pipeline(tmp_path: Path) -> tuple[Store, Pipeline]:
    store = Store(tmp_path / "s.db", max_bytes=10**8, max_age_s=3600)
    pipe = Pipeline(store, {"mtr-1": Device(device_key("mtr-1"))}, Inbox(), commit_interval_ms=10)
    pipe.start()
    return store, pipe


def open_line(tmp_path: Path) -> tuple[Store, Pipeline, Line, SerialIngest]:
    """A pipeline, a pty line and a serial reader that has opened it."""
    store, pipe = make_pipeline(tmp_path)
    line = Line(tmp_path / "ttyMETER")
    reader = SerialIngest(SerialPort(port=str(line.link)), pipe.inbox)
    reader.start()
    assert wait_for(lambda: reader.is_open, 10)
    return store, pipe, line, reader


def stored_seqs(store: Store) -> list[int]:
    return [r.seq for r in store.fetch(TELEMETRY, 0, 10_000)]


def test_frames_garbage_and_corruption(tmp_path: Path) -> None:
    store, pipe, line, reader = open_line(tmp_path)
    try:
        good = [framing.encode(frame("mtr-1", s)) for s in range(20)]
        corrupt = bytearray(framing.encode(frame("mtr-1", 99)))
        corrupt[20] ^= 0x10
        line.write(b"\x00boot noise \xff\xfe" + b"\x00" + b"".join(good[:10]) + bytes(corrupt)
                   + b"".join(good[10:]))
        assert wait_for(lambda: len(stored_seqs(store)) == 20, 10)
        assert stored_seqs(store) == list(range(20))  # the corrupt frame was not accepted
        assert pipe.rejected["bad_crc"] == 1 and reader.errors >= 2
    finally:
        reader.stop()
        pipe.stop()


def test_unplug_and_replug(tmp_path: Path) -> None:
    store, pipe, line, reader = open_line(tmp_path)
    try:
        line.write(b"".join(framing.encode(frame("mtr-1", s)) for s in range(5)))
        assert wait_for(lambda: len(stored_seqs(store)) == 5, 10)
        line.unplug()
        assert wait_for(lambda: not reader.is_open, 10)
        line.plug()  # the adapter comes back under the same name
        assert wait_for(lambda: reader.is_open, 15)
        line.write(b"\x00" + b"".join(framing.encode(frame("mtr-1", s)) for s in range(5, 10)))
        assert wait_for(lambda: len(stored_seqs(store)) == 10, 10)
        assert reader.opens == 2
    finally:
        reader.stop()
        pipe.stop()
