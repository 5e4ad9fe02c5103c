"""Gateway benchmarks against real brokers on this machine (part of `make bench`).

- throughput: a publisher process pushes N frames (QoS 1) into the local Mosquitto; the
  bare ceiling is a plain paho subscriber (QoS 1) counting them; the gateway figure is the
  full path local broker -> verify -> SQLite commit -> uplink -> cloud broker -> a cloud
  subscriber, with zero loss checked. Both in the same run; the ratio is what to quote.
- latency: frames paced at a fixed rate carry their send time; p50/p99 from publish to the
  cloud subscriber, plus the gateway process's RSS and CPU share during that run.
- drain: a backlog written straight into the store, then the time the uplink takes to
  empty it into the cloud broker.
Everything runs on loopback; the brokers are private and stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.protocol import Channel, Frame, Stat, build_frame
from gateway.store import Store
from gateway.store_rows import TELEMETRY, Record
from tools.brokers import Mosquitto, resubscribe

DEVICES = [f"bm-{i:03d}" for i in range(50)]
LOCAL_EXTRA = "max_queued_messages 10000000\nmax_queued_bytes 0\nmax_inflight_messages 0\n"

PUBLISHER = r"""
import sys, time, json
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, rate, frames_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
frames = [(t, bytes.fromhex(h)) for t, h in json.load(open(frames_file))]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_inflight_messages_set(2000)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
start = time.monotonic()
infos = []
for i, (topic, payload) in enumerate(frames):
    if rate:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    infos.append(c.publish(topic, payload, qos=1))
for info in infos:
    info.wait_for_publish(60)
print(time.monotonic() - start, flush=True)
c.loop_stop()
"""


def key(device: str) -> bytes:
    return (device.encode() * 32)[:32]


def make_frames(n: int, unix_ms: int | None = None) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        d = DEVICES[i % len(DEVICES)]
        f = Frame(d, 1, i // len(DEVICES), i, 1000, (Channel(0, 0, {
            "voltage": Stat(230_100, 229_000, 231_000), "current": Stat(5_000, 4_000, 6_000),
            "power": Stat(1_150_000, 900_000, 1_400_000), "power_factor": 980,
            "frequency": 50_000, "energy": 12_345, "energy_delta": 320}),), unix_ms=unix_ms)
        out.append((f"gridedge/v1/dev/{d}/frame", build_frame(f, key(d)).hex()))
    return out


class Counter:
    """A QoS 1 subscriber that counts messages, or records inside JSON arrays."""

    def __init__(self, port: int, topic: str, records: bool, persistent: bool = False) -> None:
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.latencies: list[float] = []
        self.records = records
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{topic[:14]}",
                                  clean_session=not persistent)
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        self.client.on_connect = resubscribe(topic)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(30):
            raise TimeoutError(f"no SUBACK for {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        if not self.records:
            self.count += 1
            return
        rows = json.loads(msg.payload)
        self.count += len(rows)
        wall = time.time()
        for r in rows:
            if "time" in r:  # the frame's unix time: when the publisher built and sent it
                self.latencies.append(wall - datetime.fromisoformat(r["time"]).timestamp())

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= n

    def rate(self) -> float:
        return self.count / max(1e-9, self.last - (self.first or self.last))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def gateway_config(folder: Path, local: int, cloud: int, **store: Any) -> Path:
    lines = ["[gateway]", 'id = "bench"', f'state_dir = "{folder / "state"}"',
             'log_level = "warning"', "[local]", f"port = {local}",
             "[store]", f"commit_interval_ms = {store.get('commit_ms', 20)}",
             "[uplink]", 'host = "127.0.0.1"', f"port = {cloud}", "tls = false",
             f"batch_size = {store.get('batch_size', 200)}",
             f"batch_delay_ms = {store.get('batch_delay_ms', 5)}",
             f"max_inflight = {store.get('max_inflight', 200)}",
             "[metrics]", "enabled = false", "[checks]", "enabled = false"]
    for d in DEVICES:
        lines += ["[[devices]]", f'id = "{d}"', f'key = "{key(d).hex()}"']
    path = folder / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def publish(port: int, frames: list[tuple[str, str]], folder: Path, rate: float = 0) -> float:
    f = folder / "frames.json"
    f.write_text(json.dumps(frames))
    out = subprocess.run([sys.executable, "-c", PUBLISHER, str(port), str(rate), str(f)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@contextlib.contextmanager
def brokers(folder: Path, local_extra: str = LOCAL_EXTRA,
            cloud_extra: str = "") -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """A local broker (queues without limit, like a production one) and a cloud broker,
    each with the given extra settings."""
    local = Mosquitto(folder / "local", extra=local_extra).start()
    cloud = Mosquitto(folder / "cloud", extra=cloud_extra).start()
    try:
        yield local, cloud
    finally:
        local.stop()
        cloud.stop()


def stop_gateway(gw: subprocess.Popen[bytes]) -> None:
    gw.terminate()
    gw.wait(60)


def start_gateway(cfg: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config",
                             str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # imports, connect, subscribe
    return proc


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def throughput_once(n: int, folder: Path) -> tuple[float, float, int]:
    """(gateway frames/s, bare paho frames/s, readings not delivered) on fresh brokers.

    Both consumers drain the same backlog that the broker queued for their persistent
    session while they were away, so the publisher's own speed does not cap the figures."""
    with brokers(folder) as (local, cloud):
        frames = make_frames(n)
        bare = Counter(local.port, "gridedge/v1/dev/+/frame", records=False, persistent=True)
        bare.close()
        publish(local.port, frames, folder)
        bare = Counter(local.port, "gridedge/v1/dev/+/frame", records=False, persistent=True)
        bare.wait(n, 300)
        bare_rate = bare.rate()
        bare.close()
        cfg = gateway_config(folder, local.port, cloud.port)
        stop_gateway(start_gateway(cfg))  # subscribe once: the broker queues for the gateway
        publish(local.port, frames, folder)
        cloud_sub = Counter(cloud.port, "gridedge/v1/gw/+/readings", records=True)
        gw = start_gateway(cfg)
        cloud_sub.wait(n, 300)
        stop_gateway(gw)
        cloud_sub.close()
    return cloud_sub.rate(), bare_rate, max(0, n - cloud_sub.count)


def bench_throughput(n: int, folder: Path, repeats: int = 3) -> dict[str, Any]:
    """The median of several runs: on a shared 2-core machine one run can be 40 % off."""
    runs = [throughput_once(n, folder / f"run{i}") for i in range(repeats)]
    ratios = [rate / bare for rate, bare, _ in runs]
    return {"case": f"local MQTT -> store -> cloud, {n} frames, QoS 1, median of {repeats}",
            "unit": "frames/s", "value": statistics.median(r[0] for r in runs),
            "baseline": "bare paho QoS 1 subscriber draining the same queued backlog, "
            "same runs (each run's gateway/bare frames/s: "
            + ", ".join(f"{rate:,.0f}/{bare:,.0f}" for rate, bare, _ in runs) + ")",
            "baseline_value": statistics.median(r[1] for r in runs),
            "ratio": statistics.median(ratios), "lost": sum(r[2] for r in runs),
            "runs": [{"value": rate, "baseline_value": bare, "lost": lost}
                     for rate, bare, lost in runs]}


def bench_latency(rate: float, seconds: float, folder: Path) -> list[dict[str, Any]]:
    n = int(rate * seconds)
    with brokers(folder) as (local, cloud):
        cloud_sub = Counter(cloud.port, "gridedge/v1/gw/+/readings", records=True)
        gw = start_gateway(gateway_config(folder, local.port, cloud.port, batch_delay_ms=2,
                                          commit_ms=5))
        cpu0, _ = proc_usage(gw.pid)
        samples: list[int] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(0.5):
                samples.append(proc_usage(gw.pid)[1])

        threading.Thread(target=sample_rss, daemon=True).start()
        t0 = time.monotonic()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat")
        pub.connect("127.0.0.1", local.port)
        pub.loop_start()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            d = DEVICES[i % len(DEVICES)]
            f = Frame(d, 1, i // len(DEVICES), i, 1000, (Channel(0, 0, {"power": 1000}),),
                      unix_ms=int(time.time() * 1000))
            pub.publish(f"gridedge/v1/dev/{d}/frame", build_frame(f, key(d)), qos=1)
        cloud_sub.wait(n, 60)
        wall = time.monotonic() - t0
        cpu1, _ = proc_usage(gw.pid)
        stop.set()
        pub.loop_stop()
        stop_gateway(gw)
        cloud_sub.close()
    lat = sorted(cloud_sub.latencies)
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    return [
        {"case": f"end-to-end latency p50 at {rate:.0f} frames/s", "unit": "ms", "value": p50,
         "baseline": "target p99 25 ms", "baseline_value": 25.0, "ratio": None},
        {"case": f"end-to-end latency p99 at {rate:.0f} frames/s", "unit": "ms", "value": p99,
         "baseline": "target p99 25 ms", "baseline_value": 25.0, "ratio": p99 / 25.0},
        {"case": f"gateway RSS at {rate:.0f} frames/s", "unit": "MiB",
         "value": max(samples) / 2**20 if samples else None, "baseline": "-",
         "baseline_value": None, "ratio": None},
        {"case": f"gateway CPU at {rate:.0f} frames/s", "unit": "% of 1 core",
         "value": 100 * (cpu1 - cpu0) / wall, "baseline": "-", "baseline_value": None,
         "ratio": None},
    ]


def drain_rate(n: int, folder: Path, **uplink: Any) -> tuple[float, int]:
    """(records/s, records received) for an n-record backlog drained with these settings."""
    with brokers(folder) as (local, cloud):
        store = Store(folder / "state" / "store.db", max_bytes=2**40, max_age_s=86400)
        body = json.dumps({"device": "bm-000", "boot": 1, "seq": 0, "channels": [
            {"channel": 0, "status": [], "power_w": {"mean": 1150.0, "min": 900.0,
                                                      "max": 1400.0}}]}).encode()
        for start in range(0, n, 50_000):
            store.commit([Record(TELEMETRY, "bm-000", 1, i, body)
                          for i in range(start, min(n, start + 50_000))])
        store.close()
        cloud_sub = Counter(cloud.port, "gridedge/v1/gw/+/readings", records=True)
        gw = start_gateway(gateway_config(folder, local.port, cloud.port, batch_delay_ms=0,
                                          **uplink))
        cloud_sub.wait(n, 900)
        stop_gateway(gw)
        cloud_sub.close()
    return cloud_sub.rate(), cloud_sub.count  # first to last record at the subscriber


def bench_drain(n: int, folder: Path) -> dict[str, Any]:
    rate, count = drain_rate(n, folder, batch_size=1000)
    ok = count >= n
    return {"case": f"drain a {n:,}-reading backlog to the cloud", "unit": "readings/s",
            "value": rate, "baseline": "target 100,000 readings/s",
            "baseline_value": 100_000.0, "ratio": rate / 100_000,
            "lost": None if not ok else n - count}


def bench_inflight(n: int, folder: Path) -> list[dict[str, Any]]:
    """One record per message, so the per-PUBACK cost shows: paho scans its in-flight
    messages on every PUBACK, so a bigger window is not free. Baseline: a window of 16."""
    rows = []
    base = None
    for window in (16, 128, 1000):
        rate, count = drain_rate(n, folder / f"w{window}", batch_size=1,
                                 max_inflight=window)
        base = base or rate
        rows.append({"case": f"uplink, 1 record/message, in-flight window {window}",
                     "unit": "messages/s", "value": rate, "baseline": "window 16",
                     "baseline_value": base, "ratio": rate / base,
                     "lost": n - count if count <= n else 0})
    return rows


def run(frames: int, backlog: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="gw-bench") as tmp:
        folder = Path(tmp)
        rows = [bench_throughput(frames, folder / "tp")]
        rows += bench_latency(1000.0, 10.0, folder / "lat")
        rows.append(bench_drain(backlog, folder / "drain"))
        rows += bench_inflight(20_000, folder / "inflight")
    return rows
