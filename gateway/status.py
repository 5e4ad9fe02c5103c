"""``gridedge-gateway status``: what the store holds, plus the running daemon's live state.

The store part (queue depth, oldest record age, drop counters, each device's last
(boot, seq)) is read from the SQLite file, so it works with the daemon stopped. The live
part (the local broker link: state, since when, last error, accepted and rejected frames;
whether the store can be written, and if not why and since when; uplink connected,
reconnects, delivered records; open alarms; serial ports) lives only
in the daemon's memory; it is read from the daemon's own metrics endpoint on
localhost, so the daemon never writes status files to the SD card. A daemon that does not
answer is reported as such, not as an error.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config
from gateway.payloads import iso_ms
from gateway.store import Store, now_ms


def live(host: str, port: int, timeout: float = 2.0) -> dict[str, Any]:
    url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError) as e:
        return {"running": False, "detail": f"no answer from {url}: {e}"}
    ingest: dict[str, Any] = {"state": None, "since": None, "for_s": None, "error": "",
                              "subscribed": False, "connect_failures": 0, "accepted": 0,
                              "rejected": {}}
    store: dict[str, Any] = {"writable": True}
    out: dict[str, Any] = {"running": True, "ingest": ingest, "store": store, "uplink": {},
                           "open_alarms": [], "serial": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "gridedge_ingest_link_info":
                ingest["state"], ingest["error"] = labels["state"], labels["error"]
            elif name == "gridedge_ingest_state_since_seconds":
                ingest["since"] = iso_ms(int(value * 1000))
                ingest["for_s"] = round(max(0.0, time.time() - value), 1)
            elif name == "gridedge_ingest_subscribed":
                ingest["subscribed"] = bool(value)
            elif name == "gridedge_ingest_connect_failures_total":
                ingest["connect_failures"] = int(value)
            elif name == "gridedge_store_writable":
                store["writable"] = bool(value)
            elif name == "gridedge_store_blocked_info":
                since = float(labels["since"])
                store.update(error=labels["error"], since=iso_ms(int(since * 1000)),
                             for_s=round(max(0.0, time.time() - since), 1))
            elif name == "gridedge_uplink_connected":
                out["uplink"].setdefault("state", "connected" if value else "disconnected")
            elif name == "gridedge_uplink_link_info":
                out["uplink"]["state"], out["uplink"]["error"] = labels["state"], labels["error"]
            elif name == "gridedge_uplink_state_since_seconds":
                out["uplink"]["since"] = iso_ms(int(value * 1000))
            elif name == "gridedge_uplink_reconnects_total":
                out["uplink"]["connects"] = int(value)
            elif name == "gridedge_uplink_delivered_total":
                out["uplink"]["delivered"] = int(value)
            elif name == "gridedge_alarm_open":
                out["open_alarms"].append(dict(labels))
            elif name == "gridedge_serial_open":
                out["serial"][labels["port"]] = "open" if value else "closed"
            elif name == "gridedge_frames_accepted_total":
                ingest["accepted"] = int(value)
            elif name == "gridedge_frames_rejected_total":
                ingest["rejected"][labels["reason"]] = int(value)
    return out


def collect(cfg: Config) -> dict[str, Any]:
    store = Store(cfg.store_path, cfg.store.max_bytes, cfg.store.max_age_s, repair=False)
    try:
        seen = store.last_seen()
        status: dict[str, Any] = {
            "store": str(cfg.store_path), **store.depth(), "counters": store.counters(),
            "devices": {d: {"boot": m.boot, "seq": m.seq,
                            "last_seen": iso_ms(seen.get(d, 0)),
                            "silent_s": round(max(0, now_ms() - seen.get(d, 0)) / 1000, 1)}
                        for d, m in store.marks().items()},
        }
    finally:
        store.close()
    if cfg.metrics.enabled:
        status["daemon"] = live(cfg.metrics.host, cfg.metrics.port)
    else:
        status["daemon"] = {"running": None, "detail": "metrics disabled: live state unknown"}
    return status
