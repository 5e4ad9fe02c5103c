"""Prometheus metrics on localhost: a collector that reads the daemon's live counters.

Nothing is counted twice: at each scrape the collector turns the daemon's one snapshot
(``Daemon.stats()``, gateway/stats.py) into prometheus_client's text format on
http://HOST:PORT/metrics; the same server answers /status with that snapshot as JSON for
``gridedge-gateway status``.
Store figures come from the store's own bookkeeping; ``gridedge_bytes_written_total`` is
what this process made the kernel write to storage (/proc/self/io write_bytes): the
SD-card wear the gateway causes. Each broker link (``ingest``: the local broker;
``uplink``: the cloud) is exported as ``gridedge_<link>_connected``,
``gridedge_<link>_state_since_seconds`` (unix time of its last change),
``gridedge_<link>_link_info{state,error}`` (why it is down) and
``gridedge_<link>_connect_failures_total``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.link import CONNECTED, Snapshot
from gateway.stats import Stats

if TYPE_CHECKING:
    from gateway.daemon import Daemon


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        yield from stats_metrics(self.d.stats())


def stats_metrics(st: Stats) -> Iterator[Metric]:
    """The daemon's snapshot (gateway/stats.py) as Prometheus metric families."""
    c = CounterMetricFamily("gridedge_frames_accepted", "Frames verified and stored")
    c.add_metric([], st.accepted)
    yield c
    c = CounterMetricFamily("gridedge_frames_rejected", "Frames rejected, by reason",
                            labels=["reason"])
    for reason, n in sorted(st.rejected.items()):
        c.add_metric([reason], n)
    yield c
    c = CounterMetricFamily("gridedge_frames_missing", "Frames found missing (seq gaps)")
    c.add_metric([], st.missing)
    yield c
    store = st.store
    c = CounterMetricFamily("gridedge_store_commit_failures",
                            "Store commits that failed (disk full, I/O errors)")
    c.add_metric([], store.failures)
    yield c
    g = GaugeMetricFamily("gridedge_store_writable", "0 while commits fail (disk full, "
                          "I/O errors): frames wait at the broker, unacknowledged")
    g.add_metric([], 0 if store.blocked else 1)
    yield g
    if store.blocked:
        since, why = store.blocked
        i = InfoMetricFamily("gridedge_store_blocked", "Why commits fail, since when "
                             "(unix time)")
        i.add_metric([], {"error": why[:200], "since": f"{since:.3f}"})
        yield i
    c = CounterMetricFamily("gridedge_hold_readings", "Readings sent from memory (held: "
                            "their local PUBACK waited for the cloud's) or committed "
                            "after all (spilled: a slow or lost cloud, a reconnect)",
                            labels=["fate"])
    c.add_metric(["held"], st.held)
    c.add_metric(["spilled"], st.spilled)
    yield c
    g = GaugeMetricFamily("gridedge_store_records", "Records waiting for the uplink",
                          labels=["priority"])
    g.add_metric(["alarm"], store.alarms)
    g.add_metric(["telemetry"], store.telemetry)
    yield g
    g = GaugeMetricFamily("gridedge_store_bytes", "Bytes of records in the store")
    g.add_metric([], store.bytes)
    yield g
    g = GaugeMetricFamily("gridedge_store_oldest_age_seconds", "Age of the oldest record")
    g.add_metric([], store.oldest_age_s)
    yield g
    c = CounterMetricFamily("gridedge_store_dropped", "Records dropped by the store bounds",
                            labels=["reason"])
    for reason, n in sorted(store.dropped.items()):
        c.add_metric([reason], n)
    yield c
    g = GaugeMetricFamily("gridedge_ingest_subscribed",
                          "1 while the local broker grants the frame subscription")
    g.add_metric([], 1 if st.subscribed else 0)
    yield g
    yield from link_metrics("ingest", "the local broker", st.ingest)
    if st.uplink is not None:
        yield from link_metrics("uplink", "the cloud broker", st.uplink)
    else:
        g = GaugeMetricFamily("gridedge_uplink_connected", "1 while the cloud link is up")
        g.add_metric([], 0)
        yield g
    c = CounterMetricFamily("gridedge_uplink_delivered", "Records acknowledged by the cloud")
    c.add_metric([], st.delivered)
    yield c
    c = CounterMetricFamily("gridedge_uplink_reconnects", "Connections made to the cloud")
    c.add_metric([], st.connects)
    yield c
    g = GaugeMetricFamily("gridedge_alarm_open", "1 per alarm raised and not cleared",
                          labels=["kind", "source", "channel"])
    for kind, source, channel in st.open_alarms:
        g.add_metric([kind, source, channel], 1)
    yield g
    c = CounterMetricFamily("gridedge_alarm_events", "Alarm events stored for the cloud")
    c.add_metric([], st.alarm_events)
    yield c
    g = GaugeMetricFamily("gridedge_serial_open", "1 while a serial port is open",
                          labels=["port"])
    for port, is_open in st.serial.items():
        g.add_metric([port], 1 if is_open else 0)
    yield g
    c = CounterMetricFamily("gridedge_bytes_written",
                            "Bytes this process wrote to storage (SD-card wear)")
    c.add_metric([], st.bytes_written)
    yield c


class MetricsError(Exception):
    """The metrics endpoint cannot listen where the config says; the message says why."""


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (Prometheus text) and /status (the snapshot as JSON, for
    ``gridedge-gateway status``); nothing else."""

    daemon: Daemon
    registry: CollectorRegistry

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, kind = generate_latest(self.registry), CONTENT_TYPE_LATEST
        elif path == "/status":
            body = json.dumps(self.daemon.stats().as_dict()).encode()
            kind = "application/json"
        else:
            self.send_error(404, "only /metrics and /status")
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not news


def serve(daemon: Daemon, host: str, port: int) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    handler = type("Handler", (_Handler,), {"daemon": daemon, "registry": registry})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise MetricsError(f"metrics.host, metrics.port: cannot listen on {host}:{port}: "
                           f"{e.strerror or e} (another gateway running? set another "
                           "metrics.port)") from e
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def link_metrics(name: str, peer: str, snap: Snapshot) -> Iterator[Metric]:
    """A broker link's state (link.py) as gridedge_<name>_connected, _state_since_seconds,
    _link_info{state, error} and _connect_failures_total."""
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
