"""The gateway daemon: wires config, store, pipeline, readers and uplink; handles signals.

``Daemon.run`` blocks until SIGTERM or SIGINT, then shuts down in the order that loses
nothing: stop taking new frames, let the committer drain what it holds (and acknowledge
it), let the uplink collect outstanding PUBACKs, close the store. Errors that stop the
start (bad config, unusable store folder) reach the user in the CLI, once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from gridedge.gateway.config import Config
from gridedge.gateway.ingest_mqtt import MQTTIngest
from gridedge.gateway.pipeline import DeviceInfo, Pipeline
from gridedge.gateway.store import Store
from gridedge.gateway.uplink import Uplink

log = logging.getLogger(__name__)


def device_registry(cfg: Config) -> dict[str, DeviceInfo]:
    return {d.id: DeviceInfo(bytes.fromhex(d.key), d.site, d.feeder, d.role,
                             tuple(d.channels)) for d in cfg.devices}


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg.store_path, cfg.store.max_bytes, cfg.store.max_age_s)
        if self.store.recovered_from is not None:
            log.error("ALARM: the store was corrupt and was moved aside to %s",
                      self.store.recovered_from)
        self.pipeline = Pipeline(self.store, device_registry(cfg),
                                 cfg.store.commit_interval_ms)
        self.ingest = MQTTIngest(cfg.local, self.pipeline)
        self.uplink = Uplink(cfg.uplink, cfg.gateway.id, self.store) \
            if cfg.uplink.enabled else None
        self._stop = threading.Event()

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def start(self) -> None:
        self.pipeline.start()
        self.ingest.start()
        if self.uplink is not None:
            self.uplink.start()
        log.info("gateway %s running: store %s, %d devices", self.cfg.gateway.id,
                 self.cfg.store_path, len(self.cfg.devices))

    def shutdown(self) -> None:
        self.ingest.stop()
        self.pipeline.stop()
        if self.uplink is not None:
            self.uplink.stop()
        self.store.close()
        log.info("gateway stopped cleanly")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.shutdown()
