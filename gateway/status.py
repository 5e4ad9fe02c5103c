"""``gridedge-gateway status``: what the store holds, plus the running daemon's live state.

The store part (queue depth, oldest record age, drop counters, each device's last (boot,
seq)) is read from the SQLite file, so it works with the daemon stopped. The live part (the
local broker link: state, since when, last error, accepted and rejected frames; whether the
store can be written, and if not why and since when; uplink connected, reconnects, delivered
records; open alarms; serial ports) lives only in the daemon's memory; it is read as JSON
from the daemon's /status endpoint (beside /metrics, the same snapshot), so the daemon never
writes status files to the SD card. A daemon that does not answer is reported as such, not
as an error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from gateway.config import Config
from gateway.payloads import iso_ms
from gateway.store import Store
from gateway.store_rows import now_ms


def live(host: str, port: int, timeout: float = 2.0) -> dict[str, Any]:
    """The running daemon's snapshot (gateway/stats.py), from its /status endpoint."""
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            answer: dict[str, Any] = json.loads(r.read().decode())
    except (OSError, urllib.error.URLError, ValueError) as e:
        return {"running": False, "detail": f"no answer from {url}: {e}"}
    return answer


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
