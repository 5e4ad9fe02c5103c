"""Prometheus metrics on localhost: a collector that reads the daemon's live counters.

Nothing is counted twice: the collector asks the pipeline, readers, store and uplink for
their figures at scrape time (prometheus_client's text format on http://HOST:PORT/metrics).
Store figures come from the store's own bookkeeping; ``gridedge_bytes_written_total`` is
what this process made the kernel write to storage (/proc/self/io write_bytes): the
SD-card wear the gateway causes. Each broker link (``ingest``: the local broker;
``uplink``: the cloud) is exported as ``gridedge_<link>_connected``,
``gridedge_<link>_state_since_seconds`` (unix time of its last change),
``gridedge_<link>_link_info{state,error}`` (why it is down) and
``gridedge_<link>_connect_failures_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.link import CONNECTED, Link

if TYPE_CHECKING:
    from gateway.daemon import Daemon


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.d
        p = d.pipeline
        c = CounterMetricFamily("gridedge_frames_accepted", "Frames verified and stored")
        c.add_metric([], p.accepted)
        yield c
        c = CounterMetricFamily("gridedge_frames_rejected", "Frames rejected, by reason",
                                labels=["reason"])
        for reason, n in sorted(p.rejected.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("gridedge_frames_missing", "Frames found missing (seq gaps)")
        c.add_metric([], p.missing)
        yield c
        c = CounterMetricFamily("gridedge_store_commit_failures",
                                "Store commits that failed (disk full, I/O errors)")
        c.add_metric([], p.store_failures)
        yield c
        g = GaugeMetricFamily("gridedge_store_writable", "0 while commits fail (disk full, "
                              "I/O errors): frames wait at the broker, unacknowledged")
        g.add_metric([], 0 if p.store_blocked else 1)
        yield g
        if p.store_blocked:
            since, why = p.store_blocked
            i = InfoMetricFamily("gridedge_store_blocked", "Why commits fail, since when "
                                 "(unix time)")
            i.add_metric([], {"error": why[:200], "since": f"{since:.3f}"})
            yield i
        hold = p.hold
        c = CounterMetricFamily("gridedge_hold_readings", "Readings sent from memory (held: "
                                "their local PUBACK waited for the cloud's) or committed "
                                "after all (spilled: a slow or lost cloud, a reconnect)",
                                labels=["fate"])
        c.add_metric(["held"], hold.held if hold is not None else 0)
        c.add_metric(["spilled"], hold.spilled if hold is not None else 0)
        yield c
        depth = d.store.depth()
        g = GaugeMetricFamily("gridedge_store_records", "Records waiting for the uplink",
                              labels=["priority"])
        g.add_metric(["alarm"], depth["alarms"])
        g.add_metric(["telemetry"], depth["telemetry"])
        yield g
        g = GaugeMetricFamily("gridedge_store_bytes", "Bytes of records in the store")
        g.add_metric([], depth["bytes"])
        yield g
        g = GaugeMetricFamily("gridedge_store_oldest_age_seconds", "Age of the oldest record")
        g.add_metric([], depth["oldest_age_s"])
        yield g
        c = CounterMetricFamily("gridedge_store_dropped", "Records dropped by the store bounds",
                                labels=["reason"])
        for name, n in sorted(d.store.counters().items()):
            if name.startswith("dropped_"):
                c.add_metric([name.removeprefix("dropped_")], n)
        yield c
        g = GaugeMetricFamily("gridedge_ingest_subscribed",
                              "1 while the local broker grants the frame subscription")
        g.add_metric([], 1 if d.ingest.subscribed else 0)
        yield g
        yield from link_metrics("ingest", "the local broker", d.ingest.link)
        up = d.uplink
        if up is not None:
            yield from link_metrics("uplink", "the cloud broker", up.link)
        else:
            g = GaugeMetricFamily("gridedge_uplink_connected", "1 while the cloud link is up")
            g.add_metric([], 0)
            yield g
        c = CounterMetricFamily("gridedge_uplink_delivered", "Records acknowledged by the cloud")
        c.add_metric([], up.delivered if up is not None else 0)
        yield c
        c = CounterMetricFamily("gridedge_uplink_reconnects", "Connections made to the cloud")
        c.add_metric([], up.connects if up is not None else 0)
        yield c
        g = GaugeMetricFamily("gridedge_alarm_open", "1 per alarm raised and not cleared",
                              labels=["kind", "source", "channel"])
        for kind, source, channel in (p.checks.open_alarms() if p.checks else []):
            g.add_metric([kind, source, channel], 1)
        yield g
        c = CounterMetricFamily("gridedge_alarm_events", "Alarm events stored for the cloud")
        c.add_metric([], p.alarms)
        yield c
        g = GaugeMetricFamily("gridedge_serial_open", "1 while a serial port is open",
                              labels=["port"])
        for reader in d.serial:
            g.add_metric([reader.cfg.port], 1 if reader.is_open else 0)
        yield g
        c = CounterMetricFamily("gridedge_bytes_written",
                                "Bytes this process wrote to storage (SD-card wear)")
        c.add_metric([], storage_bytes_written())
        yield c


def storage_bytes_written() -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MetricsError(Exception):
    """The metrics endpoint cannot listen where the config says; the message says why."""


def serve(daemon: Daemon, host: str, port: int) -> None:
    REGISTRY.register(DaemonCollector(daemon))
    try:
        start_http_server(port, addr=host)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise MetricsError(f"metrics.host, metrics.port: cannot listen on {host}:{port}: "
                           f"{e.strerror or e} (another gateway running? set another "
                           "metrics.port)") from e


def link_metrics(name: str, peer: str, link: Link) -> Iterator[Metric]:
    """A broker link's state (link.py) as gridedge_<name>_connected, _state_since_seconds,
    _link_info{state, error} and _connect_failures_total."""
    snap = link.snapshot()
    g = GaugeMetricFamily(f"gridedge_{name}_connected", f"1 while connected to {peer}")
    g.add_metric([], 1 if snap.state == CONNECTED else 0)
    yield g
    g = GaugeMetricFamily(f"gridedge_{name}_state_since_seconds",
                          f"Unix time of the {name} link's last change of state")
    g.add_metric([], snap.since)
    yield g
    i = InfoMetricFamily(f"gridedge_{name}_link", f"The link to {peer}: state (connecting, "
                         "connected, disconnected, refused), last error")
    i.add_metric([], {"state": snap.state, "error": snap.error})
    yield i
    c = CounterMetricFamily(f"gridedge_{name}_connect_failures",
                            f"Failed or lost connections to {peer}")
    c.add_metric([], snap.failures)
    yield c
