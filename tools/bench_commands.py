"""Command round trips for `make bench`: the control room to a meter's firmware and back, per link.

A signed ``read`` goes from an MQTT 5 client on the cloud broker (as ``gridedge command``
sends it) through the real gateway process (checked, queued durably, sealed) to the
unmodified firmware under the MicroPython unix port on a virtual board, over Wi-Fi MQTT
(the gateway's local broker) or the serial link (the board's UART bridged to a pty that
the gateway reads and writes), and the meter's result comes back up in a frame, through
the gateway, to the control room's response topic. Timed from the request's publish to
the ``done`` answer; p50, p99 and max over ``n`` commands sent one after the other, each
after a random pause of up to one sample period (so they find the meter's loop at any
point of its cycle, as real ones do).

The baseline, measured in the same run, is the floor a control room cannot beat: the
same request answered at once by a client on the cloud broker (two broker hops). Both
brokers run with ``set_tcp_nodelay true`` (the local one as docs/gateway.md configures
it) and every client turns Nagle off, as the gateway's commander does: with Nagle on
either end each small packet waits up to 40 ms for a delayed ACK (the echo alone took
88 ms). The meter samples every 100 ms and services its link at the start and the end of
each iteration: a command waits for the loop to wake, on average half a period. The
serial link runs at its baud rate, 115200: the virtual board's pty bridge passes bytes
each way at the line's pace (a pty alone has no line time).

A firmware update per link: ``gridedge update``'s own code sends the whole firmware (66 KB)
to a meter that runs from its own flashed folder and restarts when its process ends;
timed until the bundle is staged and until the meter says it runs it (its restart and
trial: three frames, one a second). Its baseline is the command path's floor measured
above on the same link: a read's p50 round trip per window of four chunks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.command_auth import sign
from gateway.mqtt_client import no_delay
from tools import bench_gateway, bundle, flash, mpy_deps, resources, update
from tools.bench_gateway import stop_gateway
from tools.brokers import LOCAL_BROKER_SETTINGS, Mosquitto, free_port
from tools.sim_fleet import unix_arch
from tools.vboard import VirtualBoard
from tools.virtual_meter import find_micropython, wire_meter

GW = "bench-gw"
DEVICE = "mtr-bench"
KEY = bytes(range(32, 64))
OPERATOR = bytes(range(32))
SAMPLE_MS = 100
COMMAND_BYTES, RESULT_FRAME_BYTES = 110, 300
# An update-chunk command beyond its 256 bytes of data (COSE, ids, counter, framing).
CHUNK_COMMAND_OVERHEAD = 140


class Requester:
    """The control room: one MQTT 5 client; ``ask`` publishes a request with a response
    topic and correlation data and returns the seconds until the answer in ``final``."""

    def __init__(self, port: int) -> None:
        self.reply = f"bench/{uuid.uuid4().hex}/replies"
        self.answers: dict[bytes, list[tuple[float, dict[str, Any]]]] = {}
        self.cond = threading.Condition()
        self.client = no_delay(mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                           client_id=f"bench-{uuid.uuid4()}"))
        self.client.on_message = self._answer
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(self.reply, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK from the cloud broker")

    def _answer(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        corr = bytes(getattr(msg.properties, "CorrelationData", b"") or b"")
        with self.cond:
            self.answers.setdefault(corr, []).append((time.perf_counter(),
                                                      json.loads(msg.payload)))
            self.cond.notify_all()

    def ask(self, topic: str, body: dict[str, Any], final: str, timeout: float = 20) -> float:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic, props.CorrelationData = self.reply, corr
        t0 = time.perf_counter()
        self.client.publish(topic, json.dumps(body), qos=1, properties=props)
        with self.cond:
            ok = self.cond.wait_for(lambda: any(a.get("state") == final
                                                for _t, a in self.answers.get(corr, [])),
                                    timeout)
            if not ok:
                raise TimeoutError(f"no {final!r} answer: {self.answers.get(corr)}")
            return next(t for t, a in self.answers[corr] if a.get("state") == final) - t0

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def echo_baseline(cloud: Mosquitto, n: int) -> list[float]:
    """The same request answered at once by a client on the cloud broker."""
    echo = no_delay(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo",
                                protocol=mqtt.MQTTv5))
    ready = threading.Event()

    def answer(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        asked = msg.properties
        assert asked is not None  # MQTT 5: the requester set both
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = getattr(asked, "CorrelationData", b"")
        c.publish(getattr(asked, "ResponseTopic", ""), b'{"state": "done"}', qos=1,
                  properties=props)

    echo.on_message = answer
    echo.on_subscribe = lambda *_: ready.set()
    echo.connect("127.0.0.1", cloud.port)
    echo.loop_start()
    echo.subscribe("bench/echo", qos=1)
    ready.wait(10)
    ops = Requester(cloud.port)
    try:
        return [ops.ask("bench/echo", {"id": f"e{i}"}, "done") for i in range(n)]
    finally:
        ops.close()
        echo.loop_stop()
        echo.disconnect()


def brokers(folder: Path) -> contextlib.AbstractContextManager[tuple[Mosquitto, Mosquitto]]:
    """The local broker as documented, and a cloud broker with Nagle off."""
    return bench_gateway.brokers(folder, LOCAL_BROKER_SETTINGS, "set_tcp_nodelay true\n")


def _gateway_config(folder: Path, local: Mosquitto, cloud: Mosquitto, tty: str) -> Path:
    public = Ed25519PrivateKey.from_private_bytes(OPERATOR).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    serial = f'[[serial]]\nport = "{tty}"\ndevice = "{DEVICE}"\n' if tty else ""
    cfg = folder / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nid = "{GW}"\nstate_dir = "{folder / "state"}"\nlog_level = "info"\n'
        f"[local]\nport = {local.port}\n[metrics]\nport = {free_port()}\n"
        f'[uplink]\nhost = "127.0.0.1"\nport = {cloud.port}\ntls = false\n'
        f"batch_delay_ms = 20\n[checks]\nenabled = false\n"
        f'[[devices]]\nid = "{DEVICE}"\nkey = "{KEY.hex()}"\nsite = "s"\nfeeder = "F1"\n'
        f'[commands]\nenabled = true\noperator_keys = ["{public.hex()}"]\n{serial}')
    return cfg


def _micropython() -> str:
    exe = find_micropython()
    if exe is None:
        raise RuntimeError("the MicroPython unix port is missing: run `make setup`")
    return exe


@contextlib.contextmanager
def meter(folder: Path, link: str, local: Mosquitto, flashed: bool = False,
          report_s: int = 60) -> Iterator[str]:
    """The firmware's main.py under MicroPython on a virtual board; yields the pty of its
    serial link (or "" on MQTT). ``flashed``: the compiled firmware in the meter's own
    folder, started as a board starts (boot.py, then main.py) and again whenever its
    process ends (a reset), so an update can replace it."""
    exe = _micropython()
    board = VirtualBoard(str(folder / "board.sock")).start()
    config: dict[str, Any] = {"device_id": DEVICE, "link": link,
                              "report_interval_s": report_s, "sample_interval_ms": SAMPLE_MS}
    if link == "mqtt":
        config.update(mqtt_host="127.0.0.1", mqtt_port=local.port)
    root = folder / "meter"
    rig = wire_meter(board, root, "esp32-devkitc", config, KEY)
    rig.pzem.set_reading(voltage=230.0, current=1.0, power=230.0, frequency=50.0, pf=1.0)
    # The serial link at its baud rate (115200, the board file's): a real line's time.
    tty = board.bridge_pty(rig.gateway_uart, paced=True) if link == "serial" else ""
    shim = resources.machine_shim()
    env = dict(os.environ, **board.env(), MICROPYPATH=f"{shim}:"
               f"{resources.firmware()}:{mpy_deps.ensure()}:.frozen")
    script = resources.firmware() / "main.py"
    if flashed:
        flash.compile_tree(folder / "build", unix_arch(exe))
        shutil.copytree(folder / "build", root, dirs_exist_ok=True)
        env["MICROPYPATH"], script = f"{shim}::.frozen:lib", shim / "board_runtime.py"
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def boots() -> None:
        while not stop.is_set():
            procs.append(subprocess.Popen([exe, str(script)], cwd=root, env=env,
                                          stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            procs[-1].wait()

    runner = threading.Thread(target=boots, daemon=True)
    runner.start()
    try:
        yield tty
    finally:
        stop.set()
        for proc in procs:
            proc.kill()
            proc.wait(10)
        runner.join(10)
        board.stop()


@contextlib.contextmanager
def gateway(folder: Path, local: Mosquitto, cloud: Mosquitto, tty: str) -> Iterator[None]:
    """The real gateway process, listening for commands."""
    log = folder / "gateway.log"
    with log.open("wb") as out:
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config",
                               str(_gateway_config(folder, local, cloud, tty))],
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "commands: listening" not in log.read_text():
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-1500:]}")
            time.sleep(0.1)
        yield
    finally:
        stop_gateway(gw)


def round_trips(link: str, n: int, folder: Path) -> list[float]:
    """n round trips of a signed read over ``link`` ("mqtt" or "serial")."""
    folder.mkdir(parents=True)
    with brokers(folder) as (local, cloud), meter(folder, link, local) as tty, \
            gateway(folder, local, cloud, tty):
        ops = Requester(cloud.port)
        try:
            topic = f"gridedge/v1/gw/{GW}/commands"

            pause = random.Random(12)

            def read(i: int) -> float:
                # A random pause first: requests in step with the meter's loop would all
                # find it at the same point of its 100-ms cycle.
                time.sleep(pause.uniform(0, SAMPLE_MS / 1000))
                return ops.ask(topic, sign(OPERATOR, GW, f"{link[0]}{i}", DEVICE, "read", {},
                                           int(time.time() * 1000) + 60_000), "done", 60)

            read(-1)  # warm-up: the meter connected, the gateway found it online
            return [read(i) for i in range(n)]
        finally:
            ops.close()


def update_time(link: str, folder: Path) -> tuple[bundle.Bundle, update.Outcome]:
    """``gridedge update`` of the whole firmware to a flashed meter over ``link``."""
    folder.mkdir(parents=True)
    key = folder / "operator.key"
    key.write_text(OPERATOR.hex())
    with brokers(folder) as (local, cloud), \
            meter(folder, link, local, flashed=True, report_s=1) as tty, \
            gateway(folder, local, cloud, tty):
        o = update.Options(host="127.0.0.1", port=cloud.port, gateway=GW, devices=[DEVICE],
                           key_file=key, arch=unix_arch(_micropython()), trial_s=60,
                           poll_s=0.5, timeout=300)
        b, (outcome,) = update.send(o, io.StringIO())
        if outcome.code != 0:
            raise RuntimeError(f"update over {link}: {outcome.message}")
        return b, outcome


def _row(case: str, times: list[float], base: list[float], extra: str = "") -> list[dict[str, Any]]:
    ms = sorted(t * 1000 for t in times)
    b50 = statistics.median(base) * 1000
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    baseline = f"the same request answered at once on the cloud broker (p50){extra}"
    return [{"case": f"{case} p50", "unit": "ms", "value": statistics.median(ms),
             "baseline": baseline, "baseline_value": b50,
             "ratio": statistics.median(ms) / b50 if b50 else None},
            {"case": f"{case} p99 (max {ms[-1]:.0f} ms)", "unit": "ms", "value": p99,
             "baseline": baseline, "baseline_value": b50, "ratio": p99 / b50 if b50 else None}]


def run(n: int = 30) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cmd-bench") as tmp:
        folder = Path(tmp)
        with brokers(folder / "echo") as (_local, cloud):
            base = echo_baseline(cloud, n)
        mqtt_times = round_trips("mqtt", n, folder / "mqtt")
        serial_times = round_trips("serial", n, folder / "serial")
        updates = {link: update_time(link, folder / f"update-{link}")
                   for link in ("mqtt", "serial")}
    line_ms = (COMMAND_BYTES + RESULT_FRAME_BYTES) * 10 / 115_200 * 1000
    return (_row(f"command round trip, Wi-Fi MQTT link, {n} reads", mqtt_times, base)
            + _row(f"command round trip, serial link at 115200 baud, {n} reads",
                   serial_times, base, f"; of which the line's time, about {line_ms:.0f} ms")
            + _update_rows(updates, {"mqtt": mqtt_times, "serial": serial_times}))


def _update_rows(updates: dict[str, tuple[bundle.Bundle, update.Outcome]],
                 reads: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The whole firmware's update per link: until staged, and until the meter ran it.
    The baseline is the command path's own floor, measured above on the same link: one
    read's p50 round trip per window of four chunks (and one for ``update``)."""
    rows = []
    for link, (b, o) in updates.items():
        batches = -(-o.chunks // 4) + 1
        floor = batches * statistics.median(reads[link])
        name = {"mqtt": "Wi-Fi MQTT", "serial": "serial at 115200 baud"}[link]
        extra = ""
        if link == "serial":  # the bytes down alone, at the line's rate
            down = o.chunks * (256 + CHUNK_COMMAND_OVERHEAD)
            extra = f"; the chunks' bytes alone take {down * 10 / 115_200:.1f} s on the line"
        for what, value in (("staged", o.sent_s), ("running it", o.total_s)):
            rows.append({
                "case": f"firmware update, {name}: {len(b.data) // 1024} KB in {o.chunks} "
                        f"chunks, until {what}", "unit": "s", "value": value,
                "baseline": f"{batches} read round trips on the link (p50){extra}",
                "baseline_value": floor, "ratio": value / floor if floor else None})
    return rows
