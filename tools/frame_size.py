"""Frame size report: protocol v1 bytes for one and two channels against readable JSON.

Builds a typical aggregated reading (the sampler's output: V, I, P as mean/min/max, PF,
frequency, energy register and delta, sample counts) with the gateway's frame builder and
compares the COSE_Mac0 message, its serial-line form (COBS + CRC-32 + delimiter), and the
same reading as the uplink's compact JSON with readable keys (unauthenticated, like most
peers send it). ``gridedge frame-size`` prints the table.
"""

from __future__ import annotations

import json
from typing import Any

from gateway import framing
from gateway.payloads import reading_dict
from gateway.protocol import Channel, Frame, Stat, build_frame


def _channel(index: int) -> Channel:
    return Channel(index, 0, {
        "voltage": Stat(230_140, 228_910, 231_380),
        "current": Stat(5_012 + index, 4_120, 6_310),
        "power": Stat(1_152_340, 941_200, 1_452_870),
        "power_factor": 987,
        "frequency": 50_012,
        "energy": 1_234_567,
        "energy_delta": 3_201,
        "samples": 10,
        "errors": 0,
    })


def sample_frame(channels: int) -> Frame:
    return Frame(
        "mtr-000123", boot=42, seq=123_456, uptime_ms=1_234_567_890, period_ms=10_000,
        unix_ms=1_763_776_800_000, channels=tuple(_channel(i) for i in range(channels)),
    )


def sizes() -> list[dict[str, Any]]:
    rows = []
    for n in (1, 2):
        frame = sample_frame(n)
        message = build_frame(frame, bytes(32))
        text = json.dumps(reading_dict(frame), separators=(",", ":"))
        rows.append({
            "channels": n,
            "frame_bytes": len(message),
            "serial_bytes": len(framing.encode(message)),
            "json_bytes": len(text.encode()),
        })
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'channels':>8} {'CBOR+MAC':>9} {'serial':>7} {'JSON':>6} {'ratio':>6}"]
    for r in rows:
        ratio = r["frame_bytes"] / r["json_bytes"]
        lines.append(
            f"{r['channels']:>8} {r['frame_bytes']:>9} {r['serial_bytes']:>7} "
            f"{r['json_bytes']:>6} {ratio:>6.2f}"
        )
    return "\n".join(lines)
