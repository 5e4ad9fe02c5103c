"""Feeder energy balance: what the line sensors saw against what the meters reported.

Per feeder and per window (``balance_window_s``), in Wh and signed (import positive,
export negative, as the ADE7953 measures both): ``line_wh`` is the net energy through the
feeder head, ``meters_wh`` the net energy the meters reported (consumption minus rooftop
PV export), ``throughput_wh`` the energy that moved through the meters either way (the sum
of each meter channel's |energy|). The losses are ``loss = (line - meters) / throughput``:
technical losses (the cables' heat: about ``technical_loss`` of the flow through the feeder
head, |line|, per feeder) plus non-technical ones (theft, a bypass, a meter that stopped
counting). Dividing by the throughput rather than by the line's net keeps the ratio finite
when rooftop PV balances the load at the feeder head (net ~0) or the feeder exports.

``excess = loss - technical_loss * |line| / throughput`` is the non-technical share. The
alarm is raised when one window's excess is above ``threshold``, or earlier for a small,
steady loss: a one-sided CUSUM over windows, S = max(0, S + excess - threshold / 2),
raises it when S reaches ``threshold`` (an excess of the threshold itself is caught in two
windows). It clears
when a window's excess is below threshold / 2, and S starts again. A window is judged only
if every device that reported in it or in the window before covered it (``covered``: the
seconds of its frames): a meter's Wi-Fi dropout takes its energy out of one window and its
ring buffer brings it into a later one; neither is a loss (``incomplete_windows`` counts
the windows not judged).

With the alarm, ``suspects`` ranks the feeder's meters whose share of the metered
consumption fell most against their own usual share (an average over earlier windows
without an alarm): a bypass takes part of a meter's consumption off its register while
the others' go on, so the thief's share drops. Each suspect's ``missing_wh`` (its usual
share of the window's consumption less what it reported) can be set against the window's
``lost_wh`` (the non-technical loss): a tap on the line before any meter is lost energy
that no suspect's missing Wh accounts for. The list is a ranking, never empty while some
meter's share fell, not an accusation. Pure logic; memory: a few numbers per feeder and
per meter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHARE_ALPHA = 0.3  # weight of the newest alarm-free window in a meter's usual share
MAX_SUSPECTS = 5


@dataclass
class FeederWindow:
    line: float = 0.0  # Wh, net through the feeder head
    meters: float = 0.0  # Wh, net the meters reported
    throughput: float = 0.0  # Wh, |energy| through the meters' channels
    consumption: dict[str, float] = field(default_factory=dict)  # meter -> Wh imported
    covered: dict[str, list[float]] = field(default_factory=dict)  # device -> [s, period]


@dataclass
class FeederState:
    cusum: float = 0.0
    alarm: bool = False
    usual_share: dict[str, float] = field(default_factory=dict)  # meter -> share
    seen: frozenset[str] = frozenset()  # devices that reported in the window before
    incomplete: int = 0  # windows not judged: a device's readings missing or catching up


@dataclass(frozen=True)
class Verdict:
    feeder: str
    state: str  # "raised" or "cleared"
    evidence: dict[str, object]


class EnergyBalance:
    def __init__(self, threshold: float, technical_loss: float,
                 technical_by_feeder: dict[str, float] | None = None) -> None:
        self.threshold = threshold
        self.technical_loss = technical_loss
        self.technical_by_feeder = technical_by_feeder or {}
        self.window: dict[str, FeederWindow] = {}
        self.state: dict[str, FeederState] = {}

    def add(self, feeder: str, device: str, line_sensor: bool, delta_wh: float) -> None:
        """One channel's energy over one reporting period."""
        w = self._window(feeder)
        if line_sensor:
            w.line += delta_wh
            return
        w.meters += delta_wh
        w.throughput += abs(delta_wh)
        if delta_wh > 0:
            w.consumption[device] = w.consumption.get(device, 0.0) + delta_wh

    def _window(self, feeder: str) -> FeederWindow:
        w = self.window.get(feeder)
        if w is None:
            w = self.window[feeder] = FeederWindow()
        return w

    def covered(self, feeder: str, device: str, seconds: float) -> None:
        """One frame of a device: ``seconds`` of its reporting period are in this window."""
        c = self._window(feeder).covered.get(device)
        if c is None:
            self.window[feeder].covered[device] = [seconds, seconds]
        else:
            c[0] += seconds
            c[1] = max(c[1], seconds)

    def _complete(self, st: FeederState, w: FeederWindow, window_s: float) -> bool:
        """Whether every device that reported in this window or the one before covered it,
        within 1.5 of its periods: a meter whose readings are missing (a dropout) or
        arrive late (its ring buffer after one) would look like a loss, and a gain."""
        for d in st.seen | w.covered.keys():
            seconds, period = w.covered.get(d, (0.0, 0.0))
            if abs(seconds - window_s) > 1.5 * period + 0.01 * window_s:
                return False
        return True

    def open_alarms(self) -> list[str]:
        return [f for f, st in list(self.state.items()) if st.alarm]

    def close(self, window_s: float) -> list[Verdict]:
        """End the window: the alarms raised or cleared."""
        out = []
        for feeder, w in self.window.items():
            if w.throughput <= 0:
                continue
            st = self.state.get(feeder)
            if st is None:
                st = self.state[feeder] = FeederState()
            complete = self._complete(st, w, window_s)
            st.seen = frozenset(w.covered)
            if not complete:
                st.incomplete += 1
                continue
            technical = self.technical_by_feeder.get(feeder, self.technical_loss)
            loss = (w.line - w.meters) / w.throughput
            # The cables' losses grow with the flow through the feeder head, either way.
            excess = loss - technical * abs(w.line) / w.throughput
            st.cusum = max(0.0, st.cusum + excess - self.threshold / 2)
            evidence: dict[str, object] = {
                "line_wh": round(w.line, 1), "meters_wh": round(w.meters, 1),
                "throughput_wh": round(w.throughput, 1), "loss": round(loss, 4),
                "technical_loss": technical, "excess": round(excess, 4),
                "cusum": round(st.cusum, 4), "window_s": window_s,
                "incomplete_windows": st.incomplete}
            if not st.alarm and (excess > self.threshold or st.cusum >= self.threshold):
                st.alarm = True
                evidence["lost_wh"] = round(excess * w.throughput, 1)
                evidence["suspects"] = self._suspects(st, w)
                out.append(Verdict(feeder, "raised", evidence))
            elif st.alarm and excess < self.threshold / 2:
                st.alarm = False
                st.cusum = 0.0
                out.append(Verdict(feeder, "cleared", evidence))
            if not st.alarm and excess < self.threshold / 2:
                self._learn(st, w)
        self.window = {}
        return out

    def _shares(self, w: FeederWindow) -> dict[str, float]:
        total = sum(w.consumption.values())
        return {d: c / total for d, c in w.consumption.items()} if total > 0 else {}

    def _learn(self, st: FeederState, w: FeederWindow) -> None:
        shares = self._shares(w)
        for d in set(shares) | set(st.usual_share):
            now = shares.get(d, 0.0)
            old = st.usual_share.get(d)
            st.usual_share[d] = now if old is None else old + SHARE_ALPHA * (now - old)

    def _suspects(self, st: FeederState, w: FeederWindow) -> list[dict[str, object]]:
        shares = self._shares(w)
        total = sum(w.consumption.values())
        drops = []
        for d, usual in st.usual_share.items():
            if usual > 0:
                drop = (usual - shares.get(d, 0.0)) / usual
                missing = usual * total - w.consumption.get(d, 0.0)  # Wh off its register
                if drop > 0:
                    drops.append((drop, d, missing))
        drops.sort(reverse=True)
        return [{"device": d, "share_drop": round(drop, 3), "missing_wh": round(missing, 1)}
                for drop, d, missing in drops[:MAX_SUSPECTS]]
