"""MQTT ingest in-process against a real Mosquitto: batched PUBACKs, read-ahead, sessions.

The ingest sends the PUBACKs of a committed batch in one write and reads the broker
socket through a read-ahead buffer (both through paho internals, for throughput). These
tests hold the behaviour that matters to users: every frame is stored once, every stored
frame is acknowledged (the broker has nothing left to redeliver after a restart), and a
frame is never acknowledged before its commit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from brokers import Mosquitto
from gateway_fixtures import LOCAL_BROKER_EXTRA, DevicePublisher, device_key, frame
from gridedge.gateway.config import LocalBroker
from gridedge.gateway.ingest_mqtt import MQTTIngest
from gridedge.gateway.pipeline import DeviceInfo, Pipeline
from gridedge.gateway.store import TELEMETRY, Store
from mqtt_capture import wait_for

DEVICES = ["mtr-1", "mtr-2", "mtr-3"]


def start_ingest(store: Store, port: int) -> tuple[Pipeline, MQTTIngest]:
    pipe = Pipeline(store, {d: DeviceInfo(device_key(d)) for d in DEVICES},
                    commit_interval_ms=10)
    ingest = MQTTIngest(LocalBroker(port=port, client_id="ingest-test"), pipe)
    pipe.start()
    ingest.start()
    assert wait_for(lambda: ingest.subscribed, 10), "no SUBACK"
    return pipe, ingest


def stored(store: Store) -> list[tuple[str, int, int]]:
    return [(r.device, r.boot, r.seq) for r in store.fetch(TELEMETRY, 0, 100_000)]


def leftovers(port: int) -> int:
    """Connect as the ingest's session and count what the broker still redelivers."""
    got: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest-test", clean_session=False)
    c.on_message = lambda *_: got.append(1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    threading.Event().wait(1.5)
    c.loop_stop()
    c.disconnect()
    return len(got)


def test_every_frame_stored_once_and_acknowledged_in_batches(tmp_path: Path) -> None:
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    store = Store(tmp_path / "s.db", 10**8, 3600)
    pipe, ingest = start_ingest(store, local.port)
    pub = DevicePublisher(local.port)
    try:
        # The paho hooks this module relies on are in effect (else: slower, still correct).
        assert ingest._queue_packet is not None
        assert type(ingest.client._sock).__name__ == "_ReadAhead"
        expected = [(d, 1, s) for s in range(400) for d in DEVICES]
        for d, _, s in expected:
            pub.publish(d, frame(d, s))
        assert wait_for(lambda: len(stored(store)) == len(expected), 30), len(stored(store))
        assert stored(store) == expected  # in order, none twice
        assert pipe.accepted == len(expected) and sum(pipe.rejected.values()) == 0
        assert pipe.commits < len(expected)  # some batches held several frames (and PUBACKs)
    finally:
        pub.close()
        ingest.stop()
        pipe.stop()
    # Every frame was acknowledged: the session holds nothing to redeliver.
    assert leftovers(local.port) == 0
    store.close()
    local.stop()


def test_nothing_is_acknowledged_before_its_commit(tmp_path: Path) -> None:
    """A store that cannot commit: the frames stay unacknowledged at the broker and come
    back to the next session, where they are stored."""
    local = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    store = Store(tmp_path / "s.db", 10**8, 3600)
    release = threading.Event()
    real_commit = store.commit

    def blocked_commit(*args: object, **kwargs: object) -> None:
        release.wait()
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    store.commit = blocked_commit  # type: ignore[method-assign]
    pipe, ingest = start_ingest(store, local.port)
    submitted: list[bytes] = []
    real_submit = pipe.submit
    pipe.submit = lambda raw, source, ack=None: (  # type: ignore[method-assign]
        submitted.append(raw), real_submit(raw, source, ack))[-1]
    pub = DevicePublisher(local.port)
    for s in range(20):
        pub.publish("mtr-1", frame("mtr-1", s))
    pub.close()
    assert wait_for(lambda: len(submitted) == 20, 10)  # all handed over, none committed
    ingest.stop()  # the gateway goes away with the batch uncommitted
    assert leftovers(local.port) == 20  # all of them are still the broker's
    release.set()
    pipe.stop()
    store.close()
    local.stop()
