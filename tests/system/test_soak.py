"""Soak: minutes of steady load with faults injected at random, then an exact account.

``make soak`` (SOAK_SECONDS, default 600). Fifty devices publish continuously while, at
random intervals, the gateway is SIGKILLed, the cloud broker restarts and the local broker
restarts. At the end every reading the local broker acknowledged must have reached the
cloud subscriber (duplicates allowed: the cloud de-duplicates by identity), the store must
be empty, and the gateway's memory must not have grown without bound.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
)
from tests.support.mqtt_capture import Capture, wait_for
from tools.bench_gateway import proc_usage

DEVICES = [f"soak-{i:03d}" for i in range(50)]


@pytest.mark.soak
def test_soak_with_faults(tmp_path: Path, local: Mosquitto) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "1")))
    cloud = Mosquitto(tmp_path / "cloud", persistence=True).start()
    capture = Capture(cloud.port, topic="gridedge/v1/gw/+/readings")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, DEVICES, backoff_min_s=0.2,
                               backoff_max_s=2.0, extra="[checks]\nenabled = false\n"))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    acked: set[tuple[str, int, int]] = set()
    stop = threading.Event()
    broker_down = threading.Lock()  # held while the local broker restarts

    def devices() -> None:
        seq = 0
        pub: DevicePublisher | None = None
        while not stop.is_set():
            with broker_down:
                try:
                    pub = pub or DevicePublisher(local.port)
                    for d in DEVICES:
                        pub.publish(d, frame(d, seq))
                        acked.add((d, 1, seq))
                except (OSError, TimeoutError, RuntimeError, ValueError):
                    if pub is not None:  # not acknowledged: the device keeps it, retries
                        pub.close()
                    pub = None
                    time.sleep(0.2)
                    continue
            seq += 1
            time.sleep(0.01)
        if pub is not None:
            pub.close()

    publisher = threading.Thread(target=devices, daemon=True)
    publisher.start()
    rss: list[int] = []
    faults = {"gateway_kill": 0, "cloud_restart": 0, "local_restart": 0}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(5, 20))
            assert gw.proc is not None
            rss.append(proc_usage(gw.proc.pid)[1])
            fault = rng.choice(list(faults))
            faults[fault] += 1
            if fault == "gateway_kill":
                gw.kill()
                gw.start()
            elif fault == "cloud_restart":
                cloud.stop()
                time.sleep(rng.uniform(1, 5))
                cloud.start()
            else:
                with broker_down:
                    local.stop()
                    time.sleep(rng.uniform(0.5, 2))
                    local.start()
        stop.set()
        publisher.join(30)

        def seen() -> set[tuple[str, int, int]]:
            return {(r["device"], r["boot"], r["seq"]) for p in capture.payloads("/readings")
                    for r in json.loads(p)}

        assert wait_for(lambda: acked <= seen(), 120), len(acked - seen())
    finally:
        stop.set()
        gw.terminate()
        capture.close()
        cloud.stop()
    print(f"\nsoak: {seconds:.0f} s, {len(acked)} readings acknowledged, all delivered; "
          f"faults {faults}; gateway RSS {min(rss) / 2**20:.1f}..{max(rss) / 2**20:.1f} MiB")
    assert max(rss) < 4 * min(rss)  # bounded; a leak grows with every minute of load
