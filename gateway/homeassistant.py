"""Optional Home Assistant MQTT discovery for meters, published on the local broker.

When ``[homeassistant] enabled = true``, the gateway announces every quantity of every
channel a meter reports as a Home Assistant sensor (retained config messages under
``<discovery_prefix>/sensor/<object_id>/config``) the first time it commits a frame of that
device (and again when a new channel or quantity appears), and after each committed batch
publishes the latest reading of each device to ``<state_prefix>/<device>/state`` as flat
JSON (``ch0_voltage_v``...). Bad readings are shown as bad, never as stale numbers: a
channel the meter flagged invalid makes its sensors *unavailable* (per-channel
availability template on ``ch<N>_valid``), and ``expire_after`` (3 report periods) makes
them unavailable when a meter goes silent. State messages are QoS 0 and not stored: Home
Assistant wants the latest value; the durable path is the uplink.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.devices import Device, Devices
from gateway.payloads import JSON_UNITS
from gateway.protocol import Frame, Stat

log = logging.getLogger(__name__)

# quantity -> (device_class, unit, state_class); quantities not listed are not announced.
SENSORS: dict[str, tuple[str | None, str | None, str]] = {
    "voltage": ("voltage", "V", "measurement"),
    "current": ("current", "A", "measurement"),
    "power": ("power", "W", "measurement"),
    "reactive_power": ("reactive_power", "var", "measurement"),
    "apparent_power": ("apparent_power", "VA", "measurement"),
    "power_factor": ("power_factor", None, "measurement"),
    "frequency": ("frequency", "Hz", "measurement"),
    "energy": ("energy", "Wh", "total"),  # net import - export: may go down
}

Publish = Callable[[str, bytes, int, bool], None]  # topic, payload, qos, retain


def state(frame: Frame) -> dict[str, Any]:
    """The flat state document of one frame (values in the JSON payload's units)."""
    out: dict[str, Any] = {"boot": frame.boot, "seq": frame.seq}
    for ch in frame.channels:
        out[f"ch{ch.index}_valid"] = ch.valid
        if not ch.valid:
            continue
        for qty, v in ch.values.items():
            if qty in SENSORS:
                name, div = JSON_UNITS[qty]
                mean = v.mean if isinstance(v, Stat) else v
                out[f"ch{ch.index}_{name}"] = mean if div == 1 else mean / div
    return out


def discovery(frame: Frame, meta: Device, state_topic: str, prefix: str
              ) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) of every sensor this frame's channels carry."""
    dev = frame.device_id
    device = {"identifiers": [f"gridedge_{dev}"], "name": dev, "manufacturer": "gridedge",
              "model": meta.role.replace("_", " ")}
    if meta.site:
        device["suggested_area"] = meta.site
    expire = max(30, 3 * frame.period_ms // 1000)
    out = []
    for ch in frame.channels:
        label = meta.channels[ch.index] if ch.index < len(meta.channels) else f"ch{ch.index}"
        for qty in ch.values if ch.valid else ():
            if qty not in SENSORS:
                continue
            device_class, unit, state_class = SENSORS[qty]
            field = f"ch{ch.index}_{JSON_UNITS[qty][0]}"
            object_id = f"gridedge_{dev}_{field}".replace(".", "_").replace("-", "_")
            cfg: dict[str, Any] = {
                "name": f"{label} {qty.replace('_', ' ')}",
                "unique_id": object_id,
                "object_id": object_id,
                "state_topic": state_topic,
                "value_template": f"{{{{ value_json.get('{field}') }}}}",
                "availability": [{"topic": state_topic, "value_template":
                                  f"{{{{ 'online' if value_json.get('ch{ch.index}_valid') "
                                  "else 'offline' }}"}],
                "expire_after": expire,
                "state_class": state_class,
                "device": device,
            }
            if device_class is not None:
                cfg["device_class"] = device_class
            if unit is not None:
                cfg["unit_of_measurement"] = unit
            out.append((f"{prefix}/sensor/{object_id}/config", cfg))
    return out


class Discovery:
    """Announces meters and publishes their latest state through ``publish``."""

    def __init__(self, publish: Publish, discovery_prefix: str, state_prefix: str,
                 connections: Callable[[], int] = lambda: 0) -> None:
        """``connections``: how many times the local broker connection was made; at a
        new one everything is announced again (the broker may have lost its retained
        messages)."""
        self.publish = publish
        self.discovery_prefix = discovery_prefix
        self.state_prefix = state_prefix
        self.connections = connections
        self._announced: dict[str, set[tuple[int, str]]] = {}
        self._connection = 0

    def committed(self, frames: list[Frame], devices: Devices) -> None:
        """A batch is safe (pipeline.Listener): its meters' latest states."""
        if frames:
            self.frames(frames, devices)

    def frames(self, frames: Iterable[Frame], meta: Mapping[str, Device]) -> None:
        connection = self.connections()
        if connection != self._connection:  # a new connection: announce everything again
            self._connection = connection
            self._announced.clear()
        latest: dict[str, Frame] = {}
        for f in frames:
            latest[f.device_id] = f
        for dev, f in latest.items():
            m = meta.get(dev)
            if m is None or m.role != "meter":
                continue
            topic = f"{self.state_prefix}/{dev}/state"
            pairs = {(c.index, q) for c in f.channels if c.valid for q in c.values
                     if q in SENSORS}
            known = self._announced.setdefault(dev, set())
            if not pairs <= known:  # a new channel or quantity: (re)announce the device
                known |= pairs
                for t, cfg in discovery(f, m, topic, self.discovery_prefix):
                    self.publish(t, json.dumps(cfg).encode(), 1, True)
                log.info("home assistant: announced %s", dev)
            self.publish(topic, json.dumps(state(f)).encode(), 0, False)
