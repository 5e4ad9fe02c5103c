"""Feeder outages: many meters of one feeder silent together, told apart from dropouts.

A meter that stops reporting on its own (Wi-Fi, its supply, a reboot loop) is a *dropout*:
one ``offline`` alarm for that device. When the supply of a feeder fails, every meter on it
stops at once: that is one *outage* of the feeder, the input of SAIDI/SAIFI (start, end,
duration, meters affected), and it must not arrive as dozens of unrelated offline alarms.

Meters of one feeder report at different moments of their period, so they cross the
offline threshold up to one period apart. A meter found silent is therefore *pending*
for one of its periods before its own ``offline`` alarm is raised; if, meanwhile, at least
``min_meters`` meters and ``share`` of the feeder's meters are silent (pending) when the
first of them has waited that long, the feeder's ``outage`` is raised instead, naming
them. Meters that fall silent while it lasts
join it. A feeder's line sensor reading less than ``dead_share`` of nominal voltage raises
the outage at once (the line is dead). The outage clears a grace period after half of its
meters report again (or, with no meter silent, when the line sensor's voltage is back);
meters still silent then get their own ``offline`` alarm. Pending only applies to feeders
with at least ``min_meters`` meters: elsewhere an offline alarm is raised when the device
is found silent.

Pure logic: EdgeChecks (checks.py) feeds it silences, returns and line voltages, in the
gateway's time, and turns what it returns into alarms. Memory: one entry per feeder with an
outage, one set of its meters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LISTED = 50  # device ids named in one outage record (the count is always complete)
# How long a silent meter waits for the rest of its feeder, in its reporting periods: the
# meters of a feeder report at different moments of one period, so they are found silent
# up to a period (and a tick) apart.
GRACE_PERIODS = 1.2


@dataclass
class Outage:
    feeder: str
    cause: str  # "meters_silent" or "no_voltage"
    start: float  # gateway time: the earliest last frame of the silent meters, or the 0 V one
    raised_at: float
    meters: set[str] = field(default_factory=set)  # every meter affected
    silent: set[str] = field(default_factory=set)  # those not back yet
    restoring: float | None = None  # when half of them were back
    grace_s: float = 0.0  # how long the rest may take to report once half are back

    def add(self, device: str) -> None:
        """A device silent in this outage."""
        self.meters.add(device)
        self.silent.add(device)

    def evidence(self, now: float | None = None) -> dict[str, object]:
        ev: dict[str, object] = {"cause": self.cause, "start_ms": int(self.start * 1000),
                                 "meters": len(self.meters),
                                 "devices": sorted(self.meters)[:MAX_LISTED]}
        if now is not None:
            ev.update(end_ms=int(now * 1000), duration_s=round(now - self.start, 1),
                      still_silent=len(self.silent))
        return ev


@dataclass
class Silence:
    """A meter found silent, not yet raised as offline nor part of an outage."""

    device: str
    feeder: str
    last_seen: float
    found: float
    grace_s: float  # a little over one reporting period (GRACE_PERIODS)


class Outages:
    def __init__(self, min_meters: int, share: float, dead_voltage: float) -> None:
        self.min_meters = min_meters
        self.share = share
        self.dead_voltage = dead_voltage  # V: below this a line sensor sees a dead line
        self.open: dict[str, Outage] = {}  # feeder -> its outage
        self.pending: dict[str, Silence] = {}  # device -> its silence

    def needs_grace(self, meters_on_feeder: int) -> bool:
        return meters_on_feeder >= self.min_meters

    def silent(self, s: Silence) -> None:
        """A meter found silent: it joins its feeder's outage, or waits (pending)."""
        out = self.open.get(s.feeder)
        if out is not None:
            out.add(s.device)
        else:
            self.pending[s.device] = s

    def decide(self, now: float, meters_on: dict[str, int]) -> tuple[list[Outage], list[Silence]]:
        """(outages raised now, silences whose grace ran out: dropouts to raise offline)."""
        raised: list[Outage] = []
        if not self.pending:  # the usual case, every tick
            return raised, []
        by_feeder: dict[str, list[Silence]] = {}
        for s in self.pending.values():
            by_feeder.setdefault(s.feeder, []).append(s)
        for feeder, group in by_feeder.items():
            first = min(group, key=lambda s: s.found)
            if now - first.found < first.grace_s:
                continue  # the rest of the feeder may still be falling silent
            n = meters_on.get(feeder, 0)
            if len(group) >= self.min_meters and len(group) >= self.share * n:
                out = Outage(feeder, "meters_silent", min(s.last_seen for s in group), now,
                             grace_s=first.grace_s)
                for s in group:
                    out.add(s.device)
                    del self.pending[s.device]
                self.open[feeder] = out
                raised.append(out)
        dropouts = [s for s in self.pending.values() if now - s.found >= s.grace_s]
        for s in dropouts:
            del self.pending[s.device]
        return raised, dropouts

    def back(self, device: str, feeder: str, now: float) -> None:
        """A frame from a device counted silent here (pending, or in its feeder's outage).
        Half of an outage's meters back starts its end."""
        if self.pending.pop(device, None) is not None:
            return
        out = self.open.get(feeder)
        if out is None or device not in out.silent:
            return
        out.silent.discard(device)
        if out.restoring is None and len(out.silent) * 2 <= len(out.meters):
            out.restoring = now

    def ended(self, now: float) -> list[Outage]:
        """Outages over: half their meters back for ``grace_s``, time for the rest of a
        restored feeder to report (those still silent then are dropouts of their own)."""
        done = [o for o in self.open.values()
                if o.restoring is not None and now - o.restoring >= o.grace_s]
        for o in done:
            del self.open[o.feeder]
        return done

    def line_voltage(self, feeder: str, volts: float, when: float,
                     grace_s: float) -> tuple[Outage | None, Outage | None]:
        """A line sensor's mean voltage: (an outage raised, an outage cleared)."""
        out = self.open.get(feeder)
        if volts < self.dead_voltage:
            if out is not None:
                return None, None
            out = Outage(feeder, "no_voltage", when, when, grace_s=grace_s)
            for d, s in list(self.pending.items()):
                if s.feeder == feeder:
                    out.add(d)
                    del self.pending[d]
            self.open[feeder] = out
            return out, None
        if out is not None and out.cause == "no_voltage" and not out.silent:
            del self.open[feeder]
            return None, out
        return None, None
