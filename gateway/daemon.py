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
import time
from http.server import ThreadingHTTPServer
from types import FrameType

from gateway import devices, events, records, sdnotify
from gateway.alarm import Alarm
from gateway.checks import EdgeChecks
from gateway.command_auth import Authority
from gateway.command_queue import CommandQueue
from gateway.commander import Commander
from gateway.config import Config, ConfigError, load
from gateway.dedup import DurableMarks
from gateway.detector_state import DetectorState
from gateway.hold import Hold
from gateway.homeassistant import Discovery
from gateway.inbox import Inbox
from gateway.ingest_mqtt import MQTTIngest
from gateway.ingest_serial import SerialIngest
from gateway.keyring import Keyring
from gateway.pipeline import Listener, Pipeline
from gateway.stats import Stats, StoreFigures, storage_bytes_written
from gateway.store import Store
from gateway.uplink import Uplink

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.store = Store(cfg.store_path, cfg.store.max_bytes, cfg.store.max_age_s)
        # Built in the order a frame travels; each part gets its collaborators here.
        inbox = Inbox()
        self.ingest = MQTTIngest(cfg.local, inbox)
        self.serial = [SerialIngest(p, inbox) for p in cfg.serial]
        listeners: list[Listener] = [self.ingest]  # the PUBACKs first
        hold = durable = None
        if cfg.uplink.enabled and cfg.store.hold_s > 0:
            durable = DurableMarks(self.store.marks())
            hold = Hold(self.store, durable, self.ingest.send_acks, max_age_s=cfg.store.hold_s)
        self.uplink = Uplink(cfg.uplink, cfg.gateway.id, self.store, hold, self.health) \
            if cfg.uplink.enabled else None
        if self.uplink is not None:
            listeners.append(self.uplink)
        if cfg.homeassistant.enabled:
            ingest = self.ingest
            listeners.append(Discovery(ingest.publish, cfg.homeassistant.discovery_prefix,
                                       cfg.homeassistant.state_prefix,
                                       lambda: ingest.connects))
        self.keyring = Keyring(cfg.keys_path)
        if self.keyring.problem is not None:
            log.error("keys: %s", self.keyring.problem)
            self.store.commit([records.alarm(events.keyring_lost(
                self.keyring.problem, int(time.time() * 1000)))])
        registry = self.keyring.apply(devices.from_config(cfg))
        checks = EdgeChecks(cfg.checks, registry) if cfg.checks.enabled else None
        self.commander = self._commander(cfg, registry) if cfg.commands.enabled else None
        if self.commander is not None:  # the devices' results of commands
            listeners.append(self.commander)
        self.pipeline = Pipeline(self.store, registry, inbox,
                                 commit_interval_ms=cfg.store.commit_interval_ms,
                                 checks=checks, hold=hold, durable=durable,
                                 listeners=listeners, keyring=self.keyring,
                                 detector_state=DetectorState(f"{cfg.store_path}.detectors"))
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._http: ThreadingHTTPServer | None = None  # /metrics and /status
        probes = {"committer": lambda: self.pipeline.progress,
                  "ingest-mqtt": self.ingest.progress}
        if self.uplink is not None:
            uplink = self.uplink
            probes["uplink"] = lambda: uplink.progress
        for reader in self.serial:
            probes[reader.source] = (lambda r: lambda: r.progress)(reader)
        self.watchdog = sdnotify.Watchdog(probes)

    def _commander(self, cfg: Config, registry: devices.Devices) -> Commander:
        keys = [bytes.fromhex(k) for k in cfg.commands.operator_keys]
        authority = Authority(cfg.gateway.id, keys, set(registry))

        def record(event: Alarm) -> None:
            self.store.commit([records.alarm(event)])

        queue = CommandQueue(cfg.commands_path)
        if queue.problem is not None:
            record(events.command_queue_lost(queue.problem, int(time.time() * 1000)))
        wired = {r.cfg.device: r for r in self.serial if r.cfg.device}
        return Commander(cfg.uplink, cfg.local, cfg.gateway.id, authority, queue, registry,
                         record, wired, keyring=self.keyring)

    def stats(self) -> Stats:
        """The one snapshot of the daemon's figures (gateway/stats.py)."""
        p, store = self.pipeline, self.store
        depth = store.depth()
        counters = store.counters()
        hold, up = p.hold, self.uplink
        return Stats(
            accepted=p.accepted, rejected=dict(p.rejected), missing=p.missing,
            store=StoreFigures(
                alarms=int(depth["alarms"]), telemetry=int(depth["telemetry"]),
                bytes=int(depth["bytes"]), oldest_age_s=depth["oldest_age_s"],
                dropped={k.removeprefix("dropped_"): n for k, n in counters.items()
                         if k.startswith("dropped_")},
                failures=p.writer.failures, blocked=p.writer.blocked),
            held=hold.held if hold is not None else 0,
            spilled=hold.spilled if hold is not None else 0,
            ingest=self.ingest.link.snapshot(), subscribed=self.ingest.subscribed,
            uplink=up.link.snapshot() if up is not None else None,
            delivered=up.delivered if up is not None else 0,
            connects=up.connects if up is not None else 0,
            open_alarms=p.checks.open_alarms() if p.checks is not None else [],
            alarm_events=p.alarms,
            serial={r.cfg.port: r.is_open for r in self.serial},
            bytes_written=storage_bytes_written())

    def health(self) -> dict[str, object]:
        return self.stats().health()

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
        registry = self.keyring.apply(devices.from_config(new))
        self.pipeline.set_devices(registry)
        if self.pipeline.checks is not None:
            self.pipeline.checks.set_devices(registry)
        if self.commander is not None:
            self.commander.set_devices(registry)
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        for section in ("local", "uplink", "store", "serial", "metrics", "homeassistant"):
            if getattr(new, section) != getattr(self.cfg, section):
                log.warning("reload: [%s] changed; it takes effect at the next restart",
                            section)
        self.cfg.devices = new.devices
        self.cfg.gateway.log_level = new.gateway.log_level
        log.info("reloaded %s: %d devices", self.config_path, len(new.devices))

    def start(self) -> None:
        if self.cfg.metrics.enabled:  # first: a port that is taken stops nothing half-started
            from gateway.metrics import serve

            self._http = serve(self, self.cfg.metrics.host, self.cfg.metrics.port)
        self.pipeline.start()
        self.ingest.start()
        for reader in self.serial:
            reader.start()
        if self.uplink is not None:
            self.uplink.start()
        if self.commander is not None:
            self.commander.start()
        log.info("gateway %s running: store %s, %d devices", self.cfg.gateway.id,
                 self.cfg.store_path, len(self.cfg.devices))
        sdnotify.notify("READY=1")

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        self.ingest.stop()
        for reader in self.serial:
            reader.stop()
        self.pipeline.stop()
        if self.commander is not None:
            self.commander.stop()
        if self.uplink is not None:
            self.uplink.stop()
        if self._http is not None:
            self._http.shutdown()
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
