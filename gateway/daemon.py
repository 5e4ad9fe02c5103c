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

from gateway import sdnotify
from gateway.checks import EdgeChecks
from gateway.config import Config, ConfigError, load
from gateway.hold import Hold
from gateway.homeassistant import Discovery
from gateway.ingest_mqtt import MQTTIngest
from gateway.ingest_serial import SerialIngest
from gateway.pipeline import DeviceInfo, Pipeline
from gateway.registry import fingerprint
from gateway.store import Store
from gateway.uplink import Uplink

log = logging.getLogger(__name__)


def device_registry(cfg: Config) -> dict[str, DeviceInfo]:
    out = {}
    for d in cfg.devices:
        key = bytes.fromhex(d.key)
        generation = fingerprint(key) + (f"+{d.resync}" if d.resync else "")
        out[d.id] = DeviceInfo(key, d.site, d.feeder, d.role, tuple(d.channels), generation)
    return out


def check_info(registry: dict[str, DeviceInfo]) -> dict[str, dict[str, str]]:
    """What the edge checks need to know of each device (no keys)."""
    return {d: {"site": i.site, "feeder": i.feeder, "role": i.role} for d, i in registry.items()}


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.store = Store(cfg.store_path, cfg.store.max_bytes, cfg.store.max_age_s)
        registry = device_registry(cfg)
        checks = EdgeChecks(cfg.checks, check_info(registry)) if cfg.checks.enabled else None
        self.pipeline = Pipeline(self.store, registry,
                                 cfg.store.commit_interval_ms, checks=checks)
        self.ingest = MQTTIngest(cfg.local, self.pipeline)
        self.serial = [SerialIngest(p, self.pipeline) for p in cfg.serial]
        if cfg.homeassistant.enabled:
            ha = Discovery(self.ingest.publish, cfg.homeassistant.discovery_prefix,
                           cfg.homeassistant.state_prefix)
            self.pipeline.on_frames = lambda frames: ha.frames(frames, self.pipeline.devices)
            self.ingest.on_connected = ha.forget
        self.uplink = Uplink(cfg.uplink, cfg.gateway.id, self.store) \
            if cfg.uplink.enabled else None
        if self.uplink is not None:
            self.pipeline.on_commit = self.uplink.wake.set
            self.uplink.health = self.health
        if self.uplink is not None and cfg.store.hold_s > 0:
            pipeline = self.pipeline
            hold = Hold(self.store, pipeline.durable, pipeline.flush_acks,
                        max_age_s=cfg.store.hold_s)
            pipeline.hold = self.uplink.hold = hold
        self._stop = threading.Event()
        self._reload = threading.Event()
        probes = {"committer": lambda: self.pipeline.progress,
                  "ingest-mqtt": self.ingest.progress}
        if self.uplink is not None:
            uplink = self.uplink
            probes["uplink"] = lambda: uplink.progress
        for reader in self.serial:
            probes[reader.source] = (lambda r: lambda: r.progress)(reader)
        self.watchdog = sdnotify.Watchdog(probes)

    def health(self) -> dict[str, object]:
        """Store depth, ingest counts and link, open alarms for the uplink's health message."""
        depth = self.store.depth()
        p = self.pipeline
        return {
            "store": {"alarms": depth["alarms"], "telemetry": depth["telemetry"],
                      "bytes": depth["bytes"], "oldest_age_s": depth["oldest_age_s"],
                      "writable": p.store_blocked is None},
            "ingest": {"accepted": p.accepted, "rejected": dict(p.rejected),
                       "missing": p.missing, "link": self.ingest.link.snapshot().as_dict()},
            "open_alarms": len(p.checks.open_alarms()) if p.checks is not None else 0,
        }

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
            return
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply the device registry and log level. The store
        and the connections stay as they are (changing those needs a restart)."""
        if self.config_path is None:
            return
        try:
            new = load(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        registry = device_registry(new)
        self.pipeline.set_devices(registry)
        if self.pipeline.checks is not None:
            self.pipeline.checks.set_devices(check_info(registry))
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        for section in ("local", "uplink", "store", "serial", "metrics", "homeassistant"):
            if getattr(new, section) != getattr(self.cfg, section):
                log.warning("reload: [%s] changed; it takes effect at the next restart",
                            section)
        self.cfg.devices = new.devices
        self.cfg.gateway.log_level = new.gateway.log_level
        log.info("reloaded %s: %d devices", self.config_path, len(new.devices))

    def start(self) -> None:
        self.pipeline.start()
        self.ingest.start()
        for reader in self.serial:
            reader.start()
        if self.uplink is not None:
            self.uplink.start()
        if self.cfg.metrics.enabled:
            from gateway.metrics import serve

            serve(self, self.cfg.metrics.host, self.cfg.metrics.port)
        log.info("gateway %s running: store %s, %d devices", self.cfg.gateway.id,
                 self.cfg.store_path, len(self.cfg.devices))
        sdnotify.notify("READY=1")

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        self.ingest.stop()
        for reader in self.serial:
            reader.stop()
        self.pipeline.stop()
        if self.uplink is not None:
            self.uplink.stop()
        self.store.close()
        log.info("gateway stopped cleanly")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._signal)
        self.start()
        try:
            while not self._stop.wait(1.0):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if not self.watchdog.check() and self.watchdog.stalled:
                    log.error("watchdog: no progress in %s; not pinging systemd",
                              ", ".join(self.watchdog.stalled))
        finally:
            self.shutdown()
