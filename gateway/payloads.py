"""Cloud payloads: a verified Frame as a JSON-ready dict with readable keys and SI units.

The wire carries scaled integers (mV, mA, mW, …); backends want volts and watts with names
they can read. ``reading_dict`` is the one place that conversion happens; the uplink
serialises its result as JSON (default) or CBOR. The identity (device, boot, seq) is always
included so a backend can de-duplicate.
"""

from __future__ import annotations

import time
from typing import Any

from gridedge.gateway.protocol import Frame, Stat

# quantity -> (JSON name, divisor from the wire unit to the JSON unit)
JSON_UNITS: dict[str, tuple[str, int]] = {
    "voltage": ("voltage_v", 1000),
    "current": ("current_a", 1000),
    "power": ("power_w", 1000),
    "reactive_power": ("reactive_power_var", 1000),
    "apparent_power": ("apparent_power_va", 1000),
    "power_factor": ("power_factor", 1000),
    "frequency": ("frequency_hz", 1000),
    "energy": ("energy_wh", 1),
    "energy_delta": ("energy_delta_wh", 1000),
    "samples": ("samples", 1),
    "errors": ("errors", 1),
}


def iso_ms(unix_ms: int) -> str:
    """RFC 3339 UTC with milliseconds (time.gmtime: twice as fast as datetime here)."""
    s, ms = divmod(unix_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{ms:03d}Z"


def reading_dict(
    frame: Frame, site: str | None = None, feeder: str | None = None,
    channel_names: dict[int, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": frame.device_id,
        "boot": frame.boot,
        "seq": frame.seq,
        "uptime_ms": frame.uptime_ms,
    }
    if frame.unix_ms is not None:
        out["time"] = iso_ms(frame.unix_ms)
    out["period_ms"] = frame.period_ms
    if site is not None:
        out["site"] = site
    if feeder is not None:
        out["feeder"] = feeder
    if frame.dropped:
        out["dropped"] = frame.dropped
    channels = []
    for ch in frame.channels:
        c: dict[str, Any] = {"channel": ch.index}
        if channel_names and ch.index in channel_names:
            c["name"] = channel_names[ch.index]
        c["status"] = ch.flags
        for name, v in ch.values.items():
            key, div = JSON_UNITS[name]
            if isinstance(v, Stat):
                c[key] = {"mean": v.mean / div, "min": v.min / div, "max": v.max / div}
            else:
                c[key] = v if div == 1 else v / div
        channels.append(c)
    out["channels"] = channels
    return out
