"""Threshold alarms: limits per site, device and channel, held for a duration, with hysteresis.

The limits (over- and under-voltage around nominal, EN 50160's +-10 % by default;
frequency band; low power factor; optional over-current and over-power) come from
[checks.limits], and a ``[[checks.override]]`` replaces them for a site, a device or one
channel of a device: the most specific override wins, channel over device over site. A
condition must hold for ``min_duration_s`` before it is raised and clears only when the
value is back inside the limit by the hysteresis margin for as long; both are events.
Time is the frame's own clock. Pure logic; memory: one condition per (device, channel,
kind) seen, and the compiled rules per (device, channel).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import ChecksSection, Limits

Rule = tuple[str, str, str, float, float]


def compile_rules(lim: Limits) -> list[Rule]:
    """(kind, quantity, direction, limit in wire units, hysteresis in wire units)."""
    v_hi = lim.nominal_voltage * (1 + lim.voltage_band) * 1000
    v_lo = lim.nominal_voltage * (1 - lim.voltage_band) * 1000
    h = lim.hysteresis
    rules = [
        ("over_voltage", "voltage", "above", v_hi, v_hi * h),
        ("under_voltage", "voltage", "below", v_lo, v_lo * h),
        ("frequency_high", "frequency", "above", lim.frequency_max * 1000, 1000 * h),
        ("frequency_low", "frequency", "below", lim.frequency_min * 1000, 1000 * h),
        ("low_power_factor", "power_factor", "below", lim.min_power_factor * 1000, 1000 * h),
    ]
    if lim.max_current:
        rules.append(("over_current", "current", "above", lim.max_current * 1000,
                      lim.max_current * 1000 * h))
    if lim.max_power:
        rules.append(("over_power", "power", "above", lim.max_power * 1000,
                      lim.max_power * 1000 * h))
    return rules


@dataclass(slots=True)
class Condition:
    active: bool = False
    since_ms: int | None = None  # when the pending change (raise or clear) started



class Thresholds:
    def __init__(self, cfg: ChecksSection) -> None:
        self.cfg = cfg
        self.conditions: dict[tuple[str, int, str], Condition] = {}
        self._rules: dict[tuple[str, int], tuple[Limits, list[Rule]]] = {}

    def forget_places(self) -> None:
        """Devices may have moved to another site: compile their rules again."""
        self._rules.clear()

    def rules_for(self, device: str, site: str, channel: int) -> tuple[Limits, list[Rule]]:
        """The limits and compiled rules of one channel, computed once."""
        key = (device, channel)
        cached = self._rules.get(key)
        if cached is None:
            lim = self.limits_for(device, site, channel)
            cached = self._rules[key] = (lim, compile_rules(lim))
        return cached

    def limits_for(self, device: str, site: str, channel: int) -> Limits:
        best, rank = self.cfg.limits, 0
        for o in self.cfg.override:
            if (o.channel is not None and o.channel != channel) or \
                    (o.device and o.device != device) or (o.site and o.site != site):
                continue
            r = (4 if o.channel is not None else 0) + (2 if o.device else 0) + \
                (1 if o.site else 0)
            if r >= rank:
                best, rank = o.limits, r
        return best

    def check(self, device: str, channel: int, rule: Rule, value: float, t_ms: int,
              min_s: float) -> str | None:
        """One value against one rule: "raised" or "cleared" when the condition changes."""
        kind, _quantity, direction, limit, hyst = rule
        key = (device, channel, kind)
        cond = self.conditions.get(key)
        if cond is None:
            cond = self.conditions[key] = Condition()
        beyond = value > limit if direction == "above" else value < limit
        back = value < limit - hyst if direction == "above" else value > limit + hyst
        wants_change = beyond if not cond.active else back
        if not wants_change:
            cond.since_ms = None
            return None
        if cond.since_ms is None:
            cond.since_ms = t_ms
        if t_ms - cond.since_ms < min_s * 1000:
            return None
        cond.active = not cond.active
        cond.since_ms = None
        return "raised" if cond.active else "cleared"

    def open(self) -> list[tuple[str, str, int]]:
        """(kind, device, channel) of every condition raised and not cleared."""
        # list() copies the dict in one step: the metrics thread calls this while the
        # committer thread updates it.
        return [(kind, device, ch) for (device, ch, kind), c in
                list(self.conditions.items()) if c.active]
