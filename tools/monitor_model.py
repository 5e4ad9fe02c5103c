"""What `gridedge monitor` knows: the cloud topics folded into a state, without any I/O.

``MonitorState.feed(topic, payload, content_type, now)`` takes one message from
``<prefix>/<gateway>/readings|alarms|status|health`` exactly as the uplink sends it (a
JSON array of records, or CBOR with content type ``application/cbor``; a payload that is
not JSON is tried as CBOR, since MQTT 3.1.1 carries no content type). The state keeps:

- per device the latest reading's channels and a bounded history of each channel's mean
  power (for sparklines). Readings are de-duplicated by (device, boot, seq) over a bounded
  window (QoS 1 resends them); one older than what is shown is counted as late and not
  shown. A channel flagged ``invalid`` has no values: it is never shown with the previous
  reading's numbers. A device silent for ``stale_periods`` reporting periods is stale.
- open alarms keyed by (kind, device or feeder, channel, quantity): "raised" opens,
  "cleared" closes. The quantity matters for the anomaly findings (anomaly, stuck_value),
  which the gateway raises and clears per quantity of a channel. Records of type "event"
  (sequence gaps) go to the bounded recent-events list. Every record goes to a bounded
  log; alarm records are de-duplicated by content (QoS 1 resends them too).
- per gateway the retained status (online/offline) and the latest health message.

Times are Unix seconds (``time.time()``), as the records' own ISO timestamps are.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import cbor2

BLOCKS = "▁▂▃▄▅▆▇█"
QUANTITIES = ("voltage_v", "current_a", "power_w", "power_factor", "frequency_hz", "energy_wh")
_ALARM_FIELDS = frozenset({"id", "type", "state", "kind", "device", "feeder", "site",
                           "channel", "time"})

AlarmKey = tuple[str, str, str, str]  # (kind, device or feeder, channel or "", quantity)


def sparkline(values: Sequence[float | None], width: int = 0) -> str:
    """The last ``width`` values (all if 0) as block characters scaled to their own range;
    a missing value is a space, a flat series sits in the middle."""
    if width > 0:
        values = values[-width:]
    nums = [v for v in values if v is not None]
    lo, hi = (min(nums), max(nums)) if nums else (0.0, 0.0)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif hi == lo:
            out.append(BLOCKS[3])
        else:
            out.append(BLOCKS[round((v - lo) / (hi - lo) * (len(BLOCKS) - 1))])
    return "".join(out)


def parse_time(value: object) -> float | None:
    """An RFC 3339 timestamp as Unix seconds (UTC if it names no zone); None if not one."""
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _number(value: object) -> float | None:
    """A quantity's value: the mean of a {mean, min, max} statistic, or a plain number."""
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def decode(payload: bytes, content_type: str | None) -> Any:
    """JSON, or CBOR (one array or map, nothing after it) when the content type says so
    or the payload is not JSON."""
    if content_type != "application/cbor":
        try:
            return json.loads(payload)
        except ValueError:  # includes UnicodeDecodeError
            pass
    fp = io.BytesIO(payload)
    body = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(payload) or not isinstance(body, list | dict):
        raise ValueError("not one CBOR array or map")
    return body


@dataclass
class ChannelState:
    channel: int
    name: str
    flags: list[str]
    values: dict[str, float]  # only what the latest reading carried
    history: deque[float | None]  # mean power per reading; None where invalid

    @property
    def valid(self) -> bool:
        return "invalid" not in self.flags


@dataclass
class DeviceState:
    device: str
    gateway: str = ""
    site: str = ""
    feeder: str = ""
    period_s: float = 10.0
    boot: int = -1
    seq: int = -1
    heard: float = 0.0  # when the latest reading arrived
    data_time: float | None = None  # the latest reading's own time
    channels: dict[int, ChannelState] = field(default_factory=dict)
    relays: dict[str, bool] = field(default_factory=dict)  # name -> closed, as last read

    def age(self, now: float) -> float:
        """Seconds since the latest reading was taken (a backlog replayed is not fresh)."""
        t = self.heard if self.data_time is None else min(self.heard, self.data_time)
        return max(0.0, now - t)


@dataclass(frozen=True)
class Alarm:
    kind: str
    state: str  # "raised" | "cleared" | "event"
    device: str
    feeder: str
    channel: str  # "" when the alarm is about the whole device or a feeder
    gateway: str
    time: float  # the record's own time, else when it arrived
    evidence: dict[str, Any]

    @property
    def key(self) -> AlarmKey:
        return (self.kind, self.device or self.feeder, self.channel,
                str(self.evidence.get("quantity", "")))

    @property
    def where(self) -> str:
        base = self.device or (f"feeder {self.feeder}" if self.feeder else "?")
        return f"{base} ch{self.channel}" if self.channel else base


@dataclass
class GatewayState:
    gateway: str
    status: str = "unknown"
    since: float | None = None
    # The health message's numbers by path ("store.telemetry", "uplink.delivered", ...).
    health: dict[str, float] | None = None
    rejected: dict[str, float] = field(default_factory=dict)  # ingest.rejected by reason
    health_time: float | None = None


def _figures(body: dict[Any, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested JSON object by dotted path; anything else is left out."""
    out: dict[str, float] = {}
    for k, v in body.items():
        if isinstance(v, dict):
            out.update(_figures(v, f"{prefix}{k}."))
        elif (n := _number(v)) is not None:
            out[f"{prefix}{k}"] = n
    return out


class _Window:
    """Membership over the last ``size`` keys added."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[object, None] = OrderedDict()

    def add(self, key: object) -> bool:
        """False if the key is already in the window."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


class MonitorState:
    def __init__(self, history: int = 40, dedup_window: int = 20_000, log_size: int = 50,
                 events_size: int = 50, stale_periods: float = 3.0) -> None:
        self.history = history
        self.stale_periods = stale_periods
        self.devices: dict[str, DeviceState] = {}
        self.gateways: dict[str, GatewayState] = {}
        self.open_alarms: dict[AlarmKey, Alarm] = {}
        self.log: deque[Alarm] = deque(maxlen=log_size)
        self.events: deque[Alarm] = deque(maxlen=events_size)
        self.counts: Counter[str] = Counter()
        self.broker = ""  # set by the MQTT side, for the header
        self.connected = False
        self.problem = ""  # e.g. a subscription the broker refused
        self._readings = _Window(dedup_window)
        self._alarm_ids = _Window(dedup_window)

    # -- input ---------------------------------------------------------------------
    def feed(self, topic: str, payload: bytes, content_type: str | None = None,
             now: float = 0.0) -> None:
        parts = topic.rsplit("/", 2)
        if len(parts) != 3 or not parts[1]:
            self.counts["ignored"] += 1
            return
        gw, kind = parts[1], parts[2]
        self.counts["messages"] += 1
        gateway = self.gateways.get(gw) or self.gateways.setdefault(gw, GatewayState(gw))
        if not payload and kind in ("status", "health"):  # a retained message removed
            if kind == "status":
                gateway.status, gateway.since = "unknown", None
            else:
                gateway.health = gateway.health_time = None
            return
        try:
            body = decode(payload, content_type)
        except Exception:  # any garbage: count it, never stop the dashboard
            self.counts["bad_messages"] += 1
            return
        if kind in ("readings", "alarms"):
            records = body if isinstance(body, list) else [body]
            for r in records:
                ok = (self._reading if kind == "readings" else self._alarm)(gw, r, now)
                if not ok:
                    self.counts["bad_records"] += 1
        elif kind in ("status", "health") and isinstance(body, dict):
            if kind == "status":
                gateway.status = str(body.get("state", "unknown"))
                since = body.get("since")  # RFC 3339; older gateways sent Unix seconds
                gateway.since = float(since) if isinstance(since, int | float) \
                    and not isinstance(since, bool) else parse_time(since)
            else:
                gateway.health = figures = _figures(body)
                gateway.rejected = {k.removeprefix("ingest.rejected."): v for k, v in
                                    figures.items() if k.startswith("ingest.rejected.")}
                gateway.health_time = parse_time(body.get("time")) or now
        else:
            self.counts["ignored"] += 1

    def _reading(self, gw: str, r: object, now: float) -> bool:
        if not isinstance(r, dict):
            return False
        device, boot, seq = r.get("device"), r.get("boot"), r.get("seq")
        if not isinstance(device, str) or not isinstance(boot, int) \
                or not isinstance(seq, int):
            return False
        if not self._readings.add((device, boot, seq)):
            self.counts["duplicates"] += 1
            return True
        self.counts["readings"] += 1
        dev = self.devices.get(device) or self.devices.setdefault(device, DeviceState(device))
        if (boot, seq) < (dev.boot, dev.seq):
            self.counts["late"] += 1
            return True
        dev.gateway, dev.boot, dev.seq, dev.heard = gw, boot, seq, now
        dev.site, dev.feeder = str(r.get("site") or ""), str(r.get("feeder") or "")
        period = _number(r.get("period_ms"))
        if period and period > 0:
            dev.period_s = period / 1000
        dev.data_time = parse_time(r.get("time"))
        relays = r.get("relays")
        dev.relays = {str(n)[:16]: v for n, v in list(relays.items())[:8]
                      if isinstance(v, bool)} if isinstance(relays, dict) else {}
        channels: dict[int, ChannelState] = {}
        raw_channels = r.get("channels")
        for c in raw_channels if isinstance(raw_channels, list) else []:
            if not isinstance(c, dict) or not isinstance(c.get("channel"), int):
                continue
            index: int = c["channel"]
            status = c.get("status")
            flags = [str(f) for f in status] if isinstance(status, list) else []
            values = {} if "invalid" in flags else {
                q: v for q in QUANTITIES if (v := _number(c.get(q))) is not None}
            old = dev.channels.get(index)
            history = old.history if old else deque(maxlen=self.history)
            history.append(values.get("power_w"))
            channels[index] = ChannelState(index, str(c.get("name") or ""), flags, values,
                                           history)
        dev.channels = channels
        return True

    def _alarm(self, gw: str, r: object, now: float) -> bool:
        if not isinstance(r, dict) or not isinstance(r.get("kind"), str):
            return False
        # By content (a resend is the same record again), not by "id": gateways before
        # the unique ids gave several findings of one frame the same id.
        body = json.dumps([gw, r], sort_keys=True, default=str).encode()
        if not self._alarm_ids.add(hashlib.blake2b(body, digest_size=16).digest()):
            self.counts["duplicates"] += 1
            return True
        state = str(r.get("state", ""))
        if r.get("type") == "event":
            state = "event"
        if state not in ("raised", "cleared", "event"):
            return False
        channel = r.get("channel")
        alarm = Alarm(r["kind"], state, str(r.get("device") or ""),
                      str(r.get("feeder") or ""), "" if channel is None else str(channel), gw,
                      parse_time(r.get("time")) or now,
                      {k: v for k, v in r.items() if k not in _ALARM_FIELDS})
        self.counts["alarms"] += 1
        self.log.append(alarm)
        if state == "event":
            self.events.append(alarm)
        elif state == "raised":
            earlier = self.open_alarms.get(alarm.key)  # raised again (a gateway restart)
            self.open_alarms[alarm.key] = replace(alarm, time=earlier.time) if earlier \
                else alarm
        else:
            self.open_alarms.pop(alarm.key, None)
        return True

    # -- derived -------------------------------------------------------------------
    def stale(self, dev: DeviceState, now: float) -> bool:
        return dev.age(now) > self.stale_periods * dev.period_s

    def rows(self, per_channel: bool = True) -> list[tuple[DeviceState, ChannelState | None]]:
        """By device id: one row per channel, or per device with its first channel (a
        device without channels: one row either way)."""
        out: list[tuple[DeviceState, ChannelState | None]] = []
        for name in sorted(self.devices):
            dev = self.devices[name]
            chans = [dev.channels[i] for i in sorted(dev.channels)]
            if not per_channel:
                chans = chans[:1]
            out += [(dev, c) for c in chans] if chans else [(dev, None)]
        return out

    def open_groups(self) -> list[list[Alarm]]:
        """Open alarms grouped by (kind, device or feeder, channel), as the gateway counts
        them: the findings of several quantities of one channel are one group. The oldest
        group first; in a group, by quantity."""
        groups: dict[tuple[str, str, str], list[Alarm]] = {}
        for key in sorted(self.open_alarms):
            groups.setdefault(key[:3], []).append(self.open_alarms[key])
        return sorted(groups.values(), key=lambda g: (min(a.time for a in g), g[0].key))
