"""SD-card wear: bytes the gateway (and its local broker) write to storage per frame.

A Raspberry Pi's SD card dies of writes, and SQLite in WAL mode writes whole pages: a
gateway that commits each small frame on its own rewrites several 4 KiB pages per frame.
This bench runs the production shape on this machine - the documented local Mosquitto
(persistence, ``autosave_interval 1``), the daemon with its default settings, a cloud
broker that is up - feeds it frames at a steady rate from another process, and reads
``write_bytes`` from /proc/PID/io (what each process caused to be written to the block
device, fsyncs included) over a measured window after a warm-up. The figure to quote is
the gateway's bytes per frame against the target of 1 KiB; the broker's is reported
beside it, as the price of its crash safety.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.protocol import Channel, Frame, Stat, build_frame
from tools.bench_gateway import DEVICES, Counter, key
from tools.brokers import LOCAL_BROKER_SETTINGS, Mosquitto

TARGET = 1024  # bytes written per frame at 20 frames/s, cloud up (issue 9)

PACED = r"""
import sys, time, json
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, rate, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
frames = [(t, bytes.fromhex(h)) for t, h in json.load(open(path))]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="wear-pub")
c.connect("127.0.0.1", port)
c.loop_start()
start = time.monotonic()
for i, (topic, payload) in enumerate(frames):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    c.publish(topic, payload, qos=1).wait_for_publish(10)
c.loop_stop()
"""


def make_frames(n: int, unix_ms: int) -> list[tuple[str, str]]:
    """Readings that move a little, as real ones do (constant ones would raise stuck_value
    alarms, whose records are written at once: not the steady state this measures)."""
    out = []
    for i in range(n):
        d = DEVICES[i % len(DEVICES)]
        seq = i // len(DEVICES)
        mv, ma = 230_000 + (i * 37) % 900, 5_000 + (i * 53) % 400
        f = Frame(d, 1, seq, seq * 1000, 1000, (Channel(0, 0, {
            "voltage": Stat(mv, mv - 500, mv + 500), "current": Stat(ma, ma - 100, ma + 100),
            "power": Stat(mv * ma // 1000, 0, 2 * mv * ma // 1000), "power_factor": 980,
            "frequency": 50_000 + (i * 7) % 40, "energy": 12_345 + seq,
            "energy_delta": 320}),), unix_ms=unix_ms + i)
        out.append((f"gridedge/v1/dev/{d}/frame", build_frame(f, key(d)).hex()))
    return out


def written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise KeyError("write_bytes")


def config(folder: Path, local: int, cloud: int) -> Path:
    """The daemon with its defaults (commit interval, batching), as installed."""
    lines = ["[gateway]", 'id = "wear"', f'state_dir = "{folder / "state"}"',
             'log_level = "warning"', "[local]", f"port = {local}",
             "[uplink]", 'host = "127.0.0.1"', f"port = {cloud}", "tls = false",
             "[metrics]", "enabled = false"]
    for d in DEVICES:
        lines += ["[[devices]]", f'id = "{d}"', f'key = "{key(d).hex()}"']
    path = folder / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(rate: float, seconds: float, warmup: float, folder: Path) -> dict[str, float]:
    """Bytes written per frame by the gateway and the local broker, in steady state."""
    import json

    local = Mosquitto(folder / "local", persistence=True, extra=LOCAL_BROKER_SETTINGS).start()
    cloud = Mosquitto(folder / "cloud").start()
    gw = None
    try:
        n = int(rate * (warmup + seconds + 2))
        frames = make_frames(n, unix_ms=int(time.time() * 1000))
        path = folder / "frames.json"
        path.write_text(json.dumps(frames))
        sub = Counter(cloud.port, "gridedge/v1/gw/+/readings", records=True)
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",
                               "--config", str(config(folder, local.port, cloud.port))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # imports, connect, subscribe
        pub = subprocess.Popen([sys.executable, "-c", PACED, str(local.port), str(rate),
                                str(path)])
        time.sleep(warmup)
        assert local.proc is not None
        gw0, mq0, seen0, t0 = written(gw.pid), written(local.proc.pid), sub.count, \
            time.monotonic()
        time.sleep(seconds)
        gw1, mq1, seen1, t1 = written(gw.pid), written(local.proc.pid), sub.count, \
            time.monotonic()
        pub.wait(60)
        frames_done = max(1, seen1 - seen0)
        sub.wait(n, 30)
        sub.close()
        return {"gateway": (gw1 - gw0) / frames_done, "broker": (mq1 - mq0) / frames_done,
                "rate": frames_done / (t1 - t0), "delivered": sub.count, "sent": n}
    finally:
        if gw is not None:
            gw.terminate()
            gw.wait(30)
        local.stop()
        cloud.stop()


def bench_wear(rate: float = 20.0, seconds: float = 30.0) -> list[dict[str, Any]]:
    # On the disk this checkout is on (a tmpfs /tmp would count nothing).
    Path("build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wear-", dir="build") as tmp:
        m = measure(rate, seconds, 5.0, Path(tmp))
    lost = m["sent"] - m["delivered"]  # the capture counts records, duplicates included
    return [
        {"case": f"gateway bytes written per frame at {m['rate']:.0f} frames/s, cloud up",
         "unit": "B/frame", "value": m["gateway"], "baseline": "target 1 KiB/frame",
         "baseline_value": float(TARGET), "ratio": m["gateway"] / TARGET,
         "lost": max(0, int(lost))},
        {"case": f"local Mosquitto bytes written per frame (autosave 1 s) at "
                 f"{m['rate']:.0f} frames/s", "unit": "B/frame", "value": m["broker"],
         "baseline": "-", "baseline_value": None, "ratio": None},
    ]


if __name__ == "__main__":
    for row in bench_wear(*(float(a) for a in sys.argv[1:3])):
        print(f"{row['case']}: {row['value']:,.0f} {row['unit']}")
