"""Hostile input at the gateway's one boundary: a bad message costs only itself (issue 9).

Each test reproduces a way one message used to stop, fill or fool the running gateway:
a 13-byte decimal-fraction frame that failed its whole batch (so ingest stopped and the
poison came back after every restart), cbor2's leak on failed decodes, a log entry kept
per invented device id, a 100 MB payload read into memory before being refused. They use
real Mosquitto brokers, real ptys and the real daemon process.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from gateway import framing
from gateway.config import SerialPort
from gateway.dedup import Deduplicator
from gateway.devices import Device
from gateway.inbox import Inbox
from gateway.ingest_serial import SerialIngest
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.verify import RateLimitedLog, Verifier
from tests.support.brokers import Mosquitto, free_port
from tests.support.gateway_fixtures import (
    LOCAL_BROKER_EXTRA,
    DevicePublisher,
    GatewayProcess,
    Line,
    config_text,
    device_key,
    frame,
    leftovers,
    metrics,
    start_ingest,
    stored,
)
from tests.support.mqtt_capture import wait_for

POISON = bytes.fromhex("d1c5821b7fffffffffffffff01")  # tag 17 around a huge bigfloat
DEVICES = ["mtr-1", "mtr-2"]


def test_a_poison_message_costs_only_itself_on_mqtt(tmp_path: Path, local: Mosquitto) -> None:
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe, ingest = start_ingest(store, local.port, DEVICES)
    pub = DevicePublisher(local.port)
    try:
        for s in range(100):
            pub.publish("mtr-1", frame("mtr-1", s))
        pub.publish("mtr-1", POISON)
        for s in range(100, 200):
            pub.publish("mtr-1", frame("mtr-1", s))
        assert wait_for(lambda: len(stored(store)) == 200, 20), len(stored(store))
        assert stored(store) == [("mtr-1", 1, s) for s in range(200)]
        assert pipe.rejected["malformed"] == 1 and pipe.accepted == 200
    finally:
        pub.close()
        ingest.stop()
        pipe.stop()
    # The poison was acknowledged with the rest: nothing comes back after a restart.
    assert leftovers(local.port) == 0
    store.close()
    local.stop()


def test_a_poison_frame_costs_only_itself_on_serial(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe = Pipeline(store, {"mtr-1": Device(device_key("mtr-1"))}, Inbox(), commit_interval_ms=50)
    pipe.start()
    line = Line(tmp_path / "ttyMETER")
    reader = SerialIngest(SerialPort(port=str(line.link)), pipe.inbox)
    reader.start()
    try:
        assert wait_for(lambda: reader.is_open, 10)
        # One write: the poison lands in the same batch as valid frames on both sides.
        line.write(b"".join(framing.encode(frame("mtr-1", s)) for s in range(10))
                   + framing.encode(POISON)
                   + b"".join(framing.encode(frame("mtr-1", s)) for s in range(10, 20)))
        assert wait_for(lambda: len(stored(store)) == 20, 10), stored(store)
        assert pipe.rejected["malformed"] == 1
    finally:
        reader.stop()
        pipe.stop()
        store.close()


def test_a_serial_port_bound_to_a_device_rejects_other_key_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe = Pipeline(store, {d: Device(device_key(d)) for d in DEVICES}, Inbox(),
                    commit_interval_ms=10)
    pipe.start()
    line = Line(tmp_path / "ttyMETER")
    reader = SerialIngest(SerialPort(port=str(line.link), device="mtr-1"), pipe.inbox)
    reader.start()
    try:
        assert wait_for(lambda: reader.is_open, 10)
        line.write(framing.encode(frame("mtr-2", 0)) + framing.encode(frame("mtr-1", 0)))
        assert wait_for(lambda: len(stored(store)) == 1, 10)
        assert stored(store) == [("mtr-1", 1, 0)] and pipe.rejected["wrong_source"] == 1
    finally:
        reader.stop()
        pipe.stop()
        store.close()


def start_daemon(tmp_path: Path, broker_settings: str) -> tuple[Mosquitto, int, GatewayProcess,
                                                                 int]:
    """A local broker and the gateway daemon on it (no uplink): broker, metrics port,
    process, pid."""
    local = Mosquitto(tmp_path / "local", persistence=True, extra=broker_settings).start()
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, None, DEVICES, port))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    assert gw.proc is not None
    return local, port, gw, gw.proc.pid


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(field)


PUBLISHER = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, path = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile")
c.max_inflight_messages_set(500)
c.connect("127.0.0.1", port)
c.loop_start()
while not c.is_connected():
    pass
infos = []
with open(path, "rb") as f:
    data = f.read()
pos = 0
while pos < len(data):
    tlen = int.from_bytes(data[pos:pos + 2], "big"); pos += 2
    topic = data[pos:pos + tlen].decode(); pos += tlen
    plen = int.from_bytes(data[pos:pos + 4], "big"); pos += 4
    infos.append(c.publish(topic, data[pos:pos + plen], qos=1)); pos += plen
    if len(infos) == 20000:  # packet ids are 16 bits: never more outstanding than that
        for info in infos:
            info.wait_for_publish(60)
        infos = []
for info in infos:
    info.wait_for_publish(60)
c.loop_stop()
c.disconnect()
"""


def publish_all(port: int, messages: list[tuple[str, bytes]], folder: Path) -> None:
    """Publish from another process, so this one's memory is not in the picture."""
    path = folder / "messages.bin"
    with path.open("wb") as f:
        for topic, payload in messages:
            t = topic.encode()
            f.write(len(t).to_bytes(2, "big") + t + len(payload).to_bytes(4, "big") + payload)
    subprocess.run([sys.executable, "-c", PUBLISHER, str(port), str(path)], check=True,
                   timeout=300)


def bad_frames(rng: random.Random, n: int, start: int) -> list[tuple[str, bytes]]:
    """Garbage, poison, and well-formed frames of invented device ids with bad MACs."""
    out = []
    for i in range(start, start + n):
        kind = i % 4
        if kind == 0:
            out.append(("gridedge/v1/dev/mtr-1/frame", rng.randbytes(5)))
        elif kind == 1:
            out.append(("gridedge/v1/dev/mtr-1/frame", POISON[:2] + rng.randbytes(3) +
                        POISON[5:]))
        else:
            dev = f"ghost-{i}"  # a new id each time: every per-key map would grow
            f = frame(dev, i) if kind == 2 else frame("mtr-1", i, key=bytes(32))
            out.append((f"gridedge/v1/dev/{dev}/frame" if kind == 2 else
                        "gridedge/v1/dev/mtr-1/frame", f))
    return out


def test_bad_frames_leave_the_running_gateway_memory_flat(tmp_path: Path) -> None:
    """100,000 bad frames (garbage, decode failures, 50,000 invented device ids) grow the
    daemon's resident memory by less than 5 MiB; 10,000 of the same go first to warm it."""
    local, port, gw, pid = start_daemon(tmp_path, LOCAL_BROKER_EXTRA)
    rng = random.Random(9)

    def rejected() -> float:
        m = metrics(port, missing_ok=True)
        return sum(v for k, v in m.items() if k.startswith("gridedge_frames_rejected_total"))

    try:
        publish_all(local.port, bad_frames(rng, 10_000, 0), tmp_path)
        assert wait_for(lambda: rejected() == 10_000, 60), rejected()
        before = _status(pid, "VmRSS")
        publish_all(local.port, bad_frames(rng, 100_000, 10_000), tmp_path)
        assert wait_for(lambda: rejected() == 110_000, 120), rejected()
        grown = _status(pid, "VmRSS") - before
        assert grown < 5 * 1024, f"RSS grew {grown} KiB over 100,000 bad frames"
        m = metrics(port)
        assert m['gridedge_frames_rejected_total{reason="unknown_device"}'] == 27_500
        log = (tmp_path / "gw.log").read_text()
        assert log.count("unknown_device from") < 50  # a few lines a minute, not 27,500
    finally:
        gw.terminate()
        local.stop()


def test_an_oversized_message_is_refused_without_being_read(tmp_path: Path) -> None:
    """32 MiB on the frame topic of a broker without a size limit: the daemon's peak
    memory stays within 8 MiB, the message is counted too_large and acknowledged."""
    unlimited = LOCAL_BROKER_EXTRA.replace("message_size_limit", "#")  # as if forgotten
    local, port, gw, pid = start_daemon(tmp_path, unlimited)
    try:
        publish_all(local.port, [("gridedge/v1/dev/mtr-1/frame", frame("mtr-1", 0))],
                    tmp_path)
        assert wait_for(lambda: metrics(port, True).get(
            "gridedge_frames_accepted_total") == 1, 20)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM)
        before = _status(pid, "VmHWM")
        publish_all(local.port, [("gridedge/v1/dev/mtr-1/frame", os.urandom(32 << 20)),
                                 ("gridedge/v1/dev/mtr-1/frame", frame("mtr-1", 1))],
                    tmp_path)
        assert wait_for(lambda: metrics(port, True).get(
            "gridedge_frames_accepted_total") == 2, 60)
        m = metrics(port)
        assert m['gridedge_frames_rejected_total{reason="too_large"}'] == 1
        peak = _status(pid, "VmHWM") - before
        assert peak < 8 * 1024, f"peak RSS grew {peak} KiB for a 32 MiB message"
    finally:
        gw.terminate()
    assert leftovers(local.port, "gridedge-gateway-ingest") == 0  # acknowledged: gone
    local.stop()


def test_the_log_limiter_is_bounded_and_says_what_it_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimitedLog(interval_s=60, burst=10, max_keys=1024)
    with caplog.at_level(logging.WARNING):
        for i in range(200_000):
            limiter(f"ghost-{i}", "unknown_device", "no key")
        limiter("mtr-1", "bad_mac", "MAC does not verify")
    assert len(limiter._last) <= 1024
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unknown_device" in line for line in lines) == 10
    assert any("bad_mac" in line for line in lines)  # other reasons have their own budget
    limiter.interval_s = 0  # the next window: one line, with the count it held back
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        limiter("ghost-x", "unknown_device", "no key")
    assert "199990 more like it not logged" in caplog.records[0].getMessage()


def test_an_unforeseen_exception_costs_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder bug (any exception type) is counted internal_error for that frame only."""
    verifier = Verifier({"mtr-1": Device(device_key("mtr-1"))}, Deduplicator())
    real = verifier.decoder.decode

    def buggy(raw: bytes, claimed: str | None = None):  # type: ignore[no-untyped-def]
        if raw == b"boom":
            raise ZeroDivisionError
        return real(raw, claimed)

    monkeypatch.setattr(verifier.decoder, "decode", buggy)
    assert verifier.verify(b"boom", "test") is None
    ok = verifier.verify(frame("mtr-1", 0), "test")
    assert ok is not None and ok.frame.seq == 0
    assert dict(verifier.rejected) == {"internal_error": 1}


def test_a_failing_edge_check_costs_only_its_alarms(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.checks import EdgeChecks
    from gateway.config import ChecksSection

    checks = EdgeChecks(ChecksSection(), {"mtr-1": Device(b"")})
    monkeypatch.setattr(checks, "observe", lambda *_: 1 / 0)
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe = Pipeline(store, {"mtr-1": Device(device_key("mtr-1"))}, Inbox(),
                    commit_interval_ms=10, checks=checks)
    acked: list[int] = []
    for s in range(5):
        pipe.inbox.submit(frame("mtr-1", s), "test", lambda s=s: acked.append(s))
    pipe.start()
    assert wait_for(lambda: len(acked) == 5, 10)
    pipe.stop()
    assert [seq for _, _, seq in stored(store)] == list(range(5))
    store.close()


def test_cbor2_is_not_used_on_received_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """cbor2 leaks on failed decodes (agronholm/cbor2#257): received frames never meet it."""
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("cbor2.loads called on received bytes")

    monkeypatch.setattr(cbor2, "loads", refuse)
    verifier = Verifier({"mtr-1": Device(device_key("mtr-1"))}, Deduplicator())
    for raw in (frame("mtr-1", 0), POISON, b"\x00", frame("mtr-1", 1)[:-3]):
        verifier.verify(raw, "test")
    assert verifier.rejected.total() == 3
