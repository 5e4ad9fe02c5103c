"""Edge checks on every reading: thresholds, anomalies, offline devices, energy balance.

``EdgeChecks.observe(frame)`` runs on each accepted frame (in the committer thread) and
``tick(now)`` about every 200 ms; both return alarm events, which the pipeline stores
with alarm priority in the same transaction as the readings.

- Thresholds per site/device/channel (thresholds.py): over- and under-voltage, frequency,
  power factor, over-current and over-power, held for a duration, with hysteresis.
- Anomalies per series (anomaly.py), with their evidence and a [0, 1] score; a line
  sensor's current and power only on a feeder without meters (otherwise the energy
  balance judges them).
- A device silent for ``offline_after_periods`` of its reporting periods is offline;
  its next frame clears that. Many devices of one feeder silent together, or its line
  sensor at ~0 V, are one feeder ``outage`` instead (outages.py).
- Energy balance per feeder over ``balance_window_s`` (balance.py): signed energy the
  line sensors saw against what the meters reported, less a technical-loss allowance, as a
  share of the energy through the meters; above ``balance_threshold`` (or a CUSUM of small
  excesses reaching it) it is a non-technical-loss alarm naming suspect meters.
- Supply voltage over time (voltage_quality.py): EN 50160's 10-minute means per device
  and the weekly 95 % figure, as events.

Memory is bounded by the number of series: a few numbers per (device, channel, quantity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.alarm import Alarm
from gateway.anomaly import AnomalyConfig, SeriesDetector
from gateway.balance import EnergyBalance
from gateway.config import ChecksSection, Limits
from gateway.devices import Device, Devices
from gateway.outages import GRACE_PERIODS, Outage, Outages, Silence
from gateway.protocol import Frame, Stat
from gateway.seasonal import DAY_S
from gateway.thresholds import Thresholds
from gateway.voltage_quality import Record as VoltageRecord
from gateway.voltage_quality import VoltageQuality


def _mean(v: Stat | int | None) -> float | None:
    if v is None:
        return None
    return float(v.mean) if isinstance(v, Stat) else float(v)


NOWHERE = Device(b"")  # a device the registry does not (yet) know: no place, a meter


@dataclass
class DeviceState:
    period_ms: int = 10_000
    last_seen: float = 0.0
    offline: bool = False  # an offline alarm is raised
    offline_since: float = 0.0  # gateway time of the raise
    silent: bool = False  # found silent but counted in a feeder's outage, or pending
    info: Device = NOWHERE  # site, feeder, role (the key is not used here)


def anomaly_config(cfg: ChecksSection, max_rate: float | None = None) -> AnomalyConfig:
    """One quantity's detector settings from [checks] (``max_rate`` in wire units per
    second); ``make eval`` (tools/evaluate.py) measures the detector with these too."""
    return AnomalyConfig(cfg.anomaly_sensitivity, cfg.anomaly_warmup, max_rate=max_rate,
                         learn_s=cfg.anomaly_profile_days * DAY_S,
                         stuck_after=cfg.stuck_periods)


class EdgeChecks:
    def __init__(self, cfg: ChecksSection, devices: Devices) -> None:
        self.cfg = cfg
        self.devices = {d: DeviceState(info=info) for d, info in devices.items()}
        self.thresholds = Thresholds(cfg)
        self.detectors: dict[tuple[str, int, str], SeriesDetector] = {}
        # One detector configuration per quantity: the rate limits are per unit (the
        # detectors see wire units: mV, mA, mW).
        self.anomaly_cfg = {
            qty: anomaly_config(cfg, rate * 1000 or None)
            for qty, rate in (("voltage", cfg.max_rate_v_per_s),
                              ("current", cfg.max_rate_a_per_s),
                              ("power", cfg.max_rate_w_per_s))}
        self.outages = Outages(cfg.outage_min_meters, cfg.outage_share,
                               cfg.limits.nominal_voltage * cfg.outage_voltage_share)
        self._meters_on = self._count_meters()
        self.balance = EnergyBalance(
            cfg.balance_threshold, cfg.balance_technical_loss,
            {f.name: f.technical_loss for f in cfg.feeder})
        self.balance_start: float | None = None
        self.voltage = VoltageQuality(cfg.limits.nominal_voltage, cfg.limits.voltage_band)
        self.raised = 0
        self.findings_open: set[tuple[str, str, int, str]] = set()  # anomalies, stuck

    def restore(self, detectors: dict[tuple[str, int, str], SeriesDetector]) -> None:
        """Detectors saved before a restart (detector_state.py), with today's settings."""
        for (device, channel, qty), det in detectors.items():
            if qty in self.anomaly_cfg:
                det.cfg = self.anomaly_cfg[qty]
                self.detectors[device, channel, qty] = det

    def anomaly_config(self, qty: str) -> AnomalyConfig:
        return self.anomaly_cfg.get(qty, self.anomaly_cfg["voltage"])

    def set_devices(self, devices: Devices) -> None:
        for d, info in devices.items():
            self.devices.setdefault(d, DeviceState()).info = info
        self.thresholds.forget_places()
        self._meters_on = self._count_meters()

    def _count_meters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.devices.values():
            if st.info.feeder and st.info.role == "meter":
                out[st.info.feeder] = out.get(st.info.feeder, 0) + 1
        return out

    def limits_for(self, device: str, channel: int) -> Limits:
        site = self.devices.get(device, DeviceState()).info.site
        return self.thresholds.limits_for(device, site, channel)

    def _event(self, state: str, kind: str, device: str, channel: int | None, t_ms: int,
               feeder: str | None = None, **evidence: Any) -> Alarm:
        info = self.devices.get(device, DeviceState()).info
        self.raised += state == "raised"
        return Alarm(kind, state, device, t_ms, info.site,
                     info.feeder if feeder is None else feeder, channel, evidence)

    def open_alarms(self) -> list[tuple[str, str, str]]:
        """(kind, device or feeder, channel) of every alarm raised and not yet cleared."""
        # list() copies each dict in one step: the metrics thread calls this while the
        # committer thread updates the dicts.
        out = [(kind, device, str(ch)) for kind, device, ch in self.thresholds.open()]
        out += [("offline", d, "") for d, st in list(self.devices.items()) if st.offline]
        out += [(kind, d, str(ch)) for kind, d, ch, _q in list(self.findings_open)]
        out = list(set(out))  # one anomaly per channel, whichever quantities show it
        out += [("non_technical_loss", f, "") for f in self.balance.open_alarms()]
        out += [("outage", f, "") for f in list(self.outages.open)]
        return sorted(out)

    def observe(self, frame: Frame, now: float | None = None) -> list[Alarm]:
        now = time.time() if now is None else now
        t_ms = frame.unix_ms if frame.unix_ms is not None else int(now * 1000)
        st = self.devices.setdefault(frame.device_id, DeviceState())
        st.period_ms = frame.period_ms or st.period_ms
        st.last_seen = now
        events: list[Alarm] = []
        if st.offline:
            # Both ends of an outage are the gateway's observations, in its own time: a
            # frame the meter buffered meanwhile carries its (earlier) sampling time.
            st.offline = False
            events.append(self._event("cleared", "offline", frame.device_id, None,
                                      int(now * 1000),
                                      offline_s=round(now - st.offline_since, 1)))
        elif st.silent:  # pending, or part of its feeder's outage: no alarm of its own
            st.silent = False
            self.outages.back(frame.device_id, st.info.feeder, now)
        if st.info.role == "line_sensor" and st.info.feeder:
            events += self._line_voltage(st.info.feeder, frame, now)
        events += self._voltage_quality(frame, t_ms)
        # A line sensor's flow is its meters' sum plus losses (clouds over the feeder's
        # PV swing it by tens of kW): the balance judges what the meters do not explain.
        judged_by_balance = st.info.role == "line_sensor" and \
            self._meters_on.get(st.info.feeder, 0) > 0
        for ch in frame.channels:
            if not ch.valid:
                continue
            lim, rules = self.thresholds.rules_for(frame.device_id, st.info.site, ch.index)
            means = {q: _mean(v) for q, v in ch.values.items()}
            pf = means.get("power_factor")
            if pf is not None:  # signed by the power's direction: -0.95 is exporting at 0.95
                means["power_factor"] = abs(pf)
            for rule in rules:
                value = means.get(rule[1])
                if value is None:
                    continue
                state = self.thresholds.check(frame.device_id, ch.index, rule, value, t_ms,
                                              lim.min_duration_s)
                if state is not None:
                    events.append(self._event(state, rule[0], frame.device_id, ch.index, t_ms,
                                              value=value / 1000,
                                              threshold=round(rule[3] / 1000, 6)))
            for qty in ("voltage", "current", "power"):
                value = means.get(qty)
                if value is None or (qty != "voltage" and judged_by_balance):
                    continue
                key = (frame.device_id, ch.index, qty)
                det = self.detectors.get(key)
                if det is None:
                    det = self.detectors[key] = SeriesDetector(self.anomaly_cfg[qty])
                for f in det.observe(value, frame.period_ms / 1000, t_ms / 1000):
                    key3 = (f.kind, frame.device_id, ch.index, qty)
                    if f.state == "raised":
                        self.findings_open.add(key3)
                    else:
                        self.findings_open.discard(key3)
                    scored: dict[str, Any] = {"anomaly_score": det.anomaly_score()} \
                        if f.kind in ("anomaly", "level_shift") else {}
                    events.append(self._event(f.state, f.kind, frame.device_id, ch.index,
                                              t_ms, quantity=qty, value=f.value / 1000,
                                              baseline=round(f.baseline / 1000, 6),
                                              score=round(f.score, 2), **scored))
            delta = ch.values.get("energy_delta")
            if isinstance(delta, int) and st.info.feeder:
                self.balance.add(st.info.feeder, frame.device_id,
                                 st.info.role == "line_sensor", delta / 1000)
        if st.info.feeder:
            self.balance.covered(st.info.feeder, frame.device_id, frame.period_ms / 1000)
        return events

    def tick(self, now: float | None = None) -> list[Alarm]:
        now = time.time() if now is None else now
        events: list[Alarm] = []
        for device, st in self.devices.items():
            if st.last_seen and not st.offline and not st.silent and \
                    now - st.last_seen > self.cfg.offline_after_periods * st.period_ms / 1000:
                feeder = st.info.feeder
                if feeder and self.outages.needs_grace(self._meters_on.get(feeder, 0)):
                    st.silent = True  # pending for a period, or it joins the outage
                    self.outages.silent(Silence(device, feeder, st.last_seen, now,
                                                GRACE_PERIODS * st.period_ms / 1000))
                    continue
                events.append(self._offline(device, st, now))
        raised, dropouts = self.outages.decide(now, self._meters_on)
        for out in raised:
            events.append(self._event("raised", "outage", "", None, int(now * 1000),
                                      out.feeder, **out.evidence()))
        for s in dropouts:
            events.append(self._offline(s.device, self.devices[s.device], now))
        for out in self.outages.ended(now):
            events += self._outage_cleared(out, now)
        events += self._voltage_events(self.voltage.tick(int(now * 1000)))
        if self.balance_start is None:
            self.balance_start = now
        elif now - self.balance_start >= self.cfg.balance_window_s:
            events += self._close_balance(now)
        return events

    def _voltage_quality(self, frame: Frame, t_ms: int) -> list[Alarm]:
        """EN 50160's 10-minute means and weeks (voltage_quality.py), from the device's first
        channel that measures voltage: its channels share one supply voltage."""
        for ch in frame.channels:
            v = ch.values.get("voltage") if ch.valid else None
            if v is None:
                continue
            low, mean, high = (v.min, v.mean, v.max) if isinstance(v, Stat) else (v, v, v)
            return self._voltage_events(self.voltage.add(
                frame.device_id, ch.index, t_ms, mean / 1000, low / 1000, high / 1000,
                frame.period_ms))
        return []

    def _voltage_events(self, records: list[VoltageRecord]) -> list[Alarm]:
        return [self._event("event", r.kind, r.device, r.channel, r.time_ms, None,
                            **r.evidence) for r in records]

    def _offline(self, device: str, st: DeviceState, now: float) -> Alarm:
        st.silent = False
        st.offline, st.offline_since = True, now
        return self._event("raised", "offline", device, None, int(now * 1000),
                           silent_s=round(now - st.last_seen, 1))

    def _outage_cleared(self, out: Outage, now: float) -> list[Alarm]:
        """The outage's end, then an offline alarm for each of its devices still silent."""
        events = [self._event("cleared", "outage", "", None, int(now * 1000), out.feeder,
                              **out.evidence(now))]
        for d in sorted(out.silent):
            st = self.devices.get(d)
            if st is not None and st.silent:
                events.append(self._offline(d, st, now))
        return events

    def _line_voltage(self, feeder: str, frame: Frame, now: float) -> list[Alarm]:
        volts = [v for ch in frame.channels if ch.valid
                 for v in [_mean(ch.values.get("voltage"))] if v is not None]
        if not volts:
            return []
        st = self.devices[frame.device_id]
        raised, cleared = self.outages.line_voltage(feeder, max(volts) / 1000, now,
                                                    GRACE_PERIODS * st.period_ms / 1000)
        if raised is not None:
            return [self._event("raised", "outage", "", None, int(now * 1000), feeder,
                                **raised.evidence())]
        if cleared is not None:
            return self._outage_cleared(cleared, now)
        return []

    def _close_balance(self, now: float) -> list[Alarm]:
        self.balance_start = now
        return [self._event(v.state, "non_technical_loss", "", None, int(now * 1000),
                            v.feeder, **v.evidence)
                for v in self.balance.close(self.cfg.balance_window_s)]
