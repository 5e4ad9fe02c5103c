"""The firmware's MQTT link against a real Mosquitto: QoS 1, birth and will, outages.

The outage tests stop and restart the broker while the firmware runs; they run under the
MicroPython unix port only (the interpreter boards have), the rest under both.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from gateway.protocol import Frame, FrameDecoder
from tests.support.brokers import Mosquitto
from tests.support.certs import make_pki
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import SCRIPTS, FirmwareRunner
from tests.support.mqtt_capture import Capture
from tools.vboard import VirtualBoard


def mqtt_meter(board: VirtualBoard, root: Path, broker: Mosquitto, **cfg: object) -> VirtualMeter:
    root.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {"sample_interval_ms": 100, "report_interval_s": 1, **cfg}
    return VirtualMeter(board, root, link="mqtt", mqtt_host="127.0.0.1",
                        mqtt_port=broker.port, **settings)


def start_app(
    fw: FirmwareRunner, board: VirtualBoard, meter: VirtualMeter, cycles: int
) -> subprocess.Popen[str]:
    """app_run.py in the background, so the test can stop and start the broker."""
    proc = fw.start(SCRIPTS / "app_run.py", env=board.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(meter.request(cycles)))
    proc.stdin.close()
    return proc


def broker_outage(broker: Mosquitto, seconds: float) -> None:
    broker.stop()
    time.sleep(seconds)
    broker.start()


def finish(proc: subprocess.Popen[str]) -> dict[str, int]:
    """Wait for app_run.py to end; its statistics."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    stats: dict[str, int] = json.loads(out.strip().split("\n")[-1])
    return stats


def decode_all(payloads: list[bytes]) -> list[Frame]:
    decoder = FrameDecoder({DEVICE: KEY})
    return [decoder.decode(p) for p in payloads]


def test_frames_birth_and_will(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    capture = Capture(mosquitto.port)
    meter = mqtt_meter(vboard, tmp_path, mosquitto)
    stats = fw.run_json("app_run.py", meter.request(30), env=vboard.env())
    assert capture.wait(lambda: len(capture.payloads("/status")) >= 2, 10)
    frames = decode_all(capture.payloads("/frame"))
    capture.close()
    assert [f.seq for f in frames] == [0, 1, 2] and stats["frames"] == 3
    assert frames[0].channels[0].values["voltage"].mean == 230_400
    # Birth on connect; the will when the process ends without a DISCONNECT (power loss).
    assert capture.payloads("/status") == [b"online", b"offline"]


def run_through_outage(
    fw: FirmwareRunner, board: VirtualBoard, root: Path, broker: Mosquitto, ring_size: int,
    cycles: int, outage_s: float,
) -> tuple[dict[str, int], dict[int, Frame]]:
    """Run the firmware, take its broker away for outage_s once a few frames arrived, and
    return its statistics and the frames that reached the broker, by seq."""
    capture = Capture(broker.port)
    meter = mqtt_meter(board, root, broker, ring_size=ring_size)
    proc = start_app(fw, board, meter, cycles)
    assert capture.wait(lambda: len(capture.payloads("/frame")) >= 2, 20)
    broker_outage(broker, outage_s)
    stats = finish(proc)
    # Distinct frames: the broker's restart redelivers what the capture had not yet
    # acknowledged, and counting those copies ended the wait before the last frames came.
    capture.wait(lambda: len({f.seq for f in decode_all(capture.payloads("/frame"))})
                 >= stats["frames"] - stats["dropped"] - stats["unsent"], 20)
    capture.close()
    return stats, {f.seq: f for f in decode_all(capture.payloads("/frame"))}


def test_outage_loses_nothing_while_the_ring_has_room(
    fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The gateway's broker goes away for ~5 report periods; the ring holds 32.
    stats, frames = run_through_outage(fw_micropython, vboard, tmp_path, mosquitto,
                                       ring_size=32, cycles=140, outage_s=5)
    assert stats["frames"] == 14 and stats["dropped"] == 0
    assert sorted(frames) == list(range(14))  # every frame arrived (duplicates: gateway's job)


def test_ring_overflow_drops_oldest_and_counts(
    fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    stats, frames = run_through_outage(fw_micropython, vboard, tmp_path, mosquitto,
                                       ring_size=2, cycles=160, outage_s=6)
    assert stats["dropped"] > 0
    missing = sorted(set(range(stats["frames"])) - set(frames))
    # Exactly the dropped frames are missing, and those the run ended with in its ring (the
    # reconnect's backoff, up to 8 s with jitter, may come after the last cycle)...
    unsent = stats["unsent"]
    assert len(missing) == stats["dropped"] + unsent, (missing, stats)
    assert missing[len(missing) - unsent:] == list(range(stats["frames"] - unsent,
                                                         stats["frames"]))
    last = frames[max(frames)]  # ...and the frames say how many were dropped (by the time
    # each was built: the last one sent, if others after it were dropped, says fewer)
    assert last.dropped == stats["dropped"] if not unsent else last.dropped <= stats["dropped"]


def test_tls_and_password(
    fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """TLS verified against the gateway's CA (DER on the device), user and password.
    MicroPython only: mbedTLS's SSLContext is what boards have."""
    pki = make_pki(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "meter", "pa55-w0rd"],
                   check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "tls-broker", extra="\n".join([
        f"cafile {pki.ca_pem}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        f"password_file {passwd}", "allow_anonymous false", "",
    ])).start()
    capture = Capture(broker.port, ca=str(pki.ca_pem), user="meter", password="pa55-w0rd",
                      host="localhost")
    try:
        root = tmp_path / "meter"
        root.mkdir()
        (root / "ca.der").write_bytes(pki.ca_der.read_bytes())
        meter = VirtualMeter(vboard, root, link="mqtt", mqtt_host="localhost",
                             mqtt_port=broker.port, mqtt_tls="on", mqtt_user="meter",
                             mqtt_password="pa55-w0rd", sample_interval_ms=100,
                             report_interval_s=1)
        stats = fw_micropython.run_json("app_run.py", meter.request(20), env=vboard.env())
        assert stats["frames"] == 2 and stats["link_sent"] == 2, stats
        assert capture.wait(lambda: len(capture.payloads("/frame")) == 2, 10)
        assert [f.seq for f in decode_all(capture.payloads("/frame"))] == [0, 1]
        # Wrong password: refused, counted, retried, and sampling went on all the same.
        cfg = json.loads((root / "config.json").read_text())
        cfg["mqtt_password"] = "wrong"
        (root / "config.json").write_text(json.dumps(cfg))
        stats = fw_micropython.run_json("app_run.py", meter.request(20), env=vboard.env())
        assert stats["frames"] == 2 and stats["link_sent"] == 0
        assert stats["link_connects"] == 0 and stats["link_failures"] >= 1
        assert len(capture.payloads("/frame")) == 2  # nothing arrived from that boot
    finally:
        capture.close()
        broker.stop()
    log = (tmp_path / "tls-broker" / "mosquitto.log").read_text().lower()
    assert "not authorised" in log or "bad user name or password" in log, log


def test_tls_is_the_default_once_the_gateways_ca_is_on_the_board(
    fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """mqtt_tls left at its default (auto) with /ca.der on the board: TLS, verified. Set
    to on without the CA: the link stays down and says why; sampling goes on."""
    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "tls-broker", extra="\n".join([
        f"cafile {pki.ca_pem}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        "allow_anonymous true", "",
    ])).start()
    capture = Capture(broker.port, ca=str(pki.ca_pem), host="localhost")
    try:
        root = tmp_path / "meter"
        root.mkdir()
        (root / "ca.der").write_bytes(pki.ca_der.read_bytes())
        meter = VirtualMeter(vboard, root, link="mqtt", mqtt_host="localhost",
                             mqtt_port=broker.port, sample_interval_ms=100, report_interval_s=1)
        assert "mqtt_tls" not in json.loads((root / "config.json").read_text())
        stats = fw_micropython.run_json("app_run.py", meter.request(20), env=vboard.env())
        assert stats["link_sent"] == 2 and stats["link_failures"] == 0, stats
        assert capture.wait(lambda: len(capture.payloads("/frame")) == 2, 10)

        (root / "ca.der").unlink()
        cfg = json.loads((root / "config.json").read_text())
        (root / "config.json").write_text(json.dumps({**cfg, "mqtt_tls": "on"}))
        stats = fw_micropython.run_json("app_run.py", meter.request(20), env=vboard.env())
        assert stats["frames"] == 2 and stats["link_sent"] == 0 and stats["link_failures"] >= 1
        assert f"mqtt_tls is on but there is no CA certificate {root}/ca.der" in stats["link_error"]
    finally:
        capture.close()
        broker.stop()


def test_keepalive_pings_when_idle(
    fw_micropython: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path
) -> None:
    """With nothing to send for half the keepalive, the firmware pings (umqtt.simple does
    not do it by itself) and the broker keeps the session."""
    broker = Mosquitto(tmp_path / "broker", extra="log_type debug\n").start()
    try:
        meter = mqtt_meter(vboard, tmp_path / "m", broker, mqtt_keepalive_s=10,
                           sample_interval_ms=500, report_interval_s=8)
        stats = fw_micropython.run_json("app_run.py", meter.request(17), env=vboard.env())
    finally:
        broker.stop()
    log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert stats["link_connects"] == 1 and stats["link_failures"] == 0, stats
    assert f"Received PINGREQ from gridedge-{DEVICE}" in log


def test_a_read_command_comes_back_done_in_a_frame_at_once(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The gateway's sealed ``read`` reaches the meter on its command topic; the meter
    answers with a frame at once (its period is 60 s) carrying the result. The same
    command again is not run again: its result is sent again (the first may have been
    lost). One with a used counter is refused as replayed, and a forged one leaves no
    result (it is only counted)."""
    from gateway.command import Command

    capture = Capture(mosquitto.port)
    meter = mqtt_meter(vboard, tmp_path, mosquitto, report_interval_s=60)
    proc = start_app(fw, vboard, meter, 80)  # 8 s at 100 ms a sample
    try:
        assert capture.wait(lambda: b"online" in capture.payloads("/status"), 20)
        expires = int(time.time() * 1000) + 60_000
        read = Command(DEVICE, 5, expires, b"r1", "read").seal(KEY)
        publish = Capture(mosquitto.port, topic="unused/#")
        for msg in (read, read, Command(DEVICE, 5, expires, b"r2", "read").seal(KEY),
                    Command(DEVICE, 6, expires, b"r3", "read").seal(bytes(32)),
                    Command(DEVICE, 7, expires, b"r4", "bogus").seal(KEY)):
            publish.client.publish(f"gridedge/v1/dev/{DEVICE}/cmd", msg,
                                   qos=1).wait_for_publish(10)
            time.sleep(0.3)
        publish.close()
        assert capture.wait(lambda: sum(len(f.results) for f in decode_all(
            capture.payloads("/frame"))) >= 4, 10)
    finally:
        stats = finish(proc)
    frames = decode_all(capture.payloads("/frame"))
    capture.close()
    results = [r for f in frames for r in f.results]
    assert results == [(b"r1", "done", ""), (b"r1", "done", ""),
                       (b"r2", "refused", "replayed"), (b"r4", "failed", "unsupported")]
    assert stats["commands_refused"] == 2  # the replay, the forgery
    # Each result came in a frame of its own, long before the 60-s period ended.
    assert all(f.period_ms < 5000 for f in frames if f.results)


def test_time_sets_the_clock_and_reboot_restarts_after_its_result(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """``time`` carries the gateway's clock sealed in the command (the unix port's host
    keeps its own: the result says the offset); ``reboot`` sends its result, then the
    board restarts at the next report (the virtual board's machine.reset exits with 75)."""
    from gateway.command import Command

    capture = Capture(mosquitto.port)
    meter = mqtt_meter(vboard, tmp_path, mosquitto, report_interval_s=2)
    proc = start_app(fw, vboard, meter, 200)
    try:
        assert capture.wait(lambda: b"online" in capture.payloads("/status"), 20)
        expires = int(time.time() * 1000) + 60_000
        for cmd in (Command(DEVICE, 1, expires, b"t1", "time",
                            sent_ms=int(time.time() * 1000) + 5000),
                    Command(DEVICE, 2, expires, b"b1", "reboot")):
            capture.client.publish(f"gridedge/v1/dev/{DEVICE}/cmd", cmd.seal(KEY),
                                   qos=1).wait_for_publish(10)
            time.sleep(0.5)
        assert proc.wait(timeout=30) == 75  # machine.reset()
    finally:
        if proc.poll() is None:
            proc.kill()
    capture.wait(lambda: sum(len(f.results) for f in decode_all(
        capture.payloads("/frame"))) >= 2, 10)
    results = [r for f in decode_all(capture.payloads("/frame")) for r in f.results]
    capture.close()
    (t_id, t_state, t_reason), reboot = results
    assert (t_id, t_state, reboot) == (b"t1", "done", (b"b1", "done", ""))
    assert t_reason.startswith("offset ") and 4000 < int(t_reason.split()[1]) < 6000


def test_set_changes_one_setting_with_the_consoles_checks(
    fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A good value is written to config.json (the rest of the file as it was) and
    applies at the next start; a bad one is refused with the console's words; the device
    id, which the key is bound to, is not changed remotely."""
    from gateway.command import Command

    capture = Capture(mosquitto.port)
    meter = mqtt_meter(vboard, tmp_path, mosquitto, report_interval_s=60)
    before = json.loads((tmp_path / "config.json").read_text())
    proc = start_app(fw, vboard, meter, 60)
    try:
        assert capture.wait(lambda: b"online" in capture.payloads("/status"), 20)
        expires = int(time.time() * 1000) + 60_000
        for n, (key, value) in enumerate((("report_interval_s", "30"),
                                          ("report_interval_s", 0),
                                          ("device_id", "mtr-evil"),
                                          ("mqtt_password", "s3cret"))):
            capture.client.publish(f"gridedge/v1/dev/{DEVICE}/cmd", Command(
                DEVICE, n + 1, expires, b"s%d" % n, "set", {"key": key, "value": value}
            ).seal(KEY), qos=1).wait_for_publish(10)
            time.sleep(0.3)
        assert capture.wait(lambda: sum(len(f.results) for f in decode_all(
            capture.payloads("/frame"))) >= 4, 10)
    finally:
        finish(proc)
    results = {r[0]: r[1:] for f in decode_all(capture.payloads("/frame")) for r in f.results}
    capture.close()
    assert results[b"s0"] == ("done", "applies at the next start")
    assert results[b"s1"][0] == "failed" and "report_interval_s" in results[b"s1"][1]
    assert results[b"s2"] == ("failed", "not a setting to change remotely")
    assert results[b"s3"] == ("done", "applies at the next start")  # never echoed
    after = json.loads((tmp_path / "config.json").read_text())
    assert after == dict(before, report_interval_s=30, mqtt_password="s3cret")
