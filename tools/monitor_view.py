"""The frame of `gridedge monitor`: a pure function of a MonitorState, drawn with rich.

``render(state, now, height)`` returns one frame at most ``height`` lines tall: a header
(broker, device and alarm counts), the devices table (one row per channel when they all
fit, else one per device with its first channel; V, A, W, PF, Hz, kWh, a power sparkline,
age and flags; invalid channels as "—", stale devices dimmed; "+k more" past the room),
then the open alarms and the recent alarm log beside one panel per gateway (uplink state,
store depth, delivered and in-flight messages, ingest counts, health age). The frame is
planned for 120 x 40; ``snapshot_text`` renders it as plain text.
"""

from __future__ import annotations

import io
import time

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tools.monitor_model import (
    Alarm,
    ChannelState,
    DeviceState,
    GatewayState,
    MonitorState,
    sparkline,
)

UNITS = {"over_voltage": " V", "under_voltage": " V", "frequency_high": " Hz",
         "frequency_low": " Hz", "over_current": " A", "over_power": " W"}
QUANTITY_UNITS = {"voltage": " V", "current": " A", "power": " W"}  # anomaly findings
GW_WIDTH = 42
STATE_STYLE = {"raised": "bold red", "cleared": "green", "event": "yellow"}


def _age(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _fmt(values: dict[str, float], key: str, digits: int, scale: float = 1.0) -> str:
    v = values.get(key)
    return "—" if v is None else f"{v / scale:.{digits}f}"


def _num(v: object) -> str:
    """A number short: 836.0 as 836, 253.00000000000003 as 253, 49.19712 as 49.1971."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _evidence(a: Alarm) -> str:
    """The evidence an alarm record carries, short; whatever it holds, never an error."""
    raw = a.evidence
    e = {k: _num(v) for k, v in raw.items()}
    qty, loss = str(raw.get("quantity", "")), raw.get("loss")

    def si(key: str) -> str:  # an anomaly finding's figure with its unit
        return f"{e.get(key, '?')}{QUANTITY_UNITS.get(qty, '')}"

    if "threshold" in e:
        return f"{e.get('value')}{UNITS.get(a.kind, '')} (limit {e['threshold']})"
    if a.kind == "gap":
        return f"{e.get('missing')} missing (seq {e.get('seq')})"
    if "silent_s" in e:
        return f"silent {e['silent_s']} s"
    if isinstance(loss, int | float):
        return f"loss {loss * 100:.1f} % of {e.get('line_wh')} Wh"
    if a.kind == "stuck_value":  # (the unit names the quantity)
        return f"stuck at {si('value')}" if a.state == "raised" else \
            f"{si('value')} (was {si('baseline')})"
    if "score" in e:
        return f"{si('value')} vs {si('baseline')} (score {e['score']})"
    return ", ".join(f"{k} {v}" for k, v in e.items())


def _device_row(state: MonitorState, dev: DeviceState, ch: ChannelState | None,
                now: float, spark_width: int, collapsed: bool) -> tuple[list[str | Text], str]:
    """Cells and style of one row: a channel, or (collapsed) a device by its first channel,
    with the other channels' count and any of them that is invalid."""
    name = Text(dev.device)
    others = [c for c in dev.channels.values() if c is not ch]
    if collapsed and others:
        name.append(f" +{len(others)} ch", style="dim")
    elif others and ch is not None:
        name.append(f"/{ch.name or ch.channel}")
    values = ch.values if ch is not None else {}
    cells: list[str | Text] = [
        name, "/".join(x for x in (dev.site, dev.feeder) if x) or "-",
        _fmt(values, "voltage_v", 1), _fmt(values, "current_a", 2),
        _fmt(values, "power_w", 0), _fmt(values, "power_factor", 2),
        _fmt(values, "frequency_hz", 2), _fmt(values, "energy_wh", 3, 1000),
        Text(sparkline(list(ch.history), spark_width).rjust(spark_width) if ch else "",
             style="cyan")]
    age = dev.age(now)
    if state.stale(dev, now):
        return [*cells, Text(f"stale {_age(age)}", style="yellow")], "dim"
    flags = list(ch.flags) if ch else []
    if collapsed:
        flags += [f"{c.name or f'ch{c.channel}'} invalid" for c in others if not c.valid]
    status = Text(_age(age))
    if flags:
        bad = any("invalid" in f for f in flags)
        status.append(" " + " ".join(flags), style="bold red" if bad else "yellow")
    if collapsed or ch is None or ch is next(iter(dev.channels.values()), None):
        for relay, closed in dev.relays.items():  # once per device: its first row
            status.append(f" relay {relay} {'on' if closed else 'OFF'}",
                          style="dim" if closed else "bold magenta")
    return [*cells, status], ""


def _devices(state: MonitorState, now: float, rows: list[tuple[DeviceState,
             ChannelState | None]], max_rows: int, spark_width: int, collapsed: bool) -> Table:
    shown = rows[:max_rows]
    more = len(rows) - len(shown)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold",
              caption=f"+{more} more (first {len(shown)} by device id)" if more else None,
              caption_justify="left")
    t.add_column("device", no_wrap=True, max_width=22)
    t.add_column("site/feeder", no_wrap=True, max_width=14)
    for head in ("V", "A", "W", "PF", "Hz", "kWh"):
        t.add_column(head, justify="right", no_wrap=True)
    t.add_column("power", no_wrap=True, width=spark_width)
    t.add_column("age", no_wrap=True, overflow="ellipsis")
    for dev, ch in shown:
        cells, style = _device_row(state, dev, ch, now, spark_width, collapsed)
        t.add_row(*cells, style=style)
    if not rows:
        t.add_row(Text("waiting for readings…", style="dim"))
    return t


def _alarms_table(alarms: list[list[Alarm]], limit: int, log: bool, now: float) -> Table:
    """The log (newest first), or the open alarms: one row per (kind, where, channel),
    listing the quantities when findings of several quantities are open there."""
    shown = alarms[-limit:] if log else alarms[:limit]
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=True)
    if log:
        t.add_column("time", no_wrap=True)
        t.add_column("state", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("where", no_wrap=True)
    if not log:
        t.add_column("since", no_wrap=True)
    t.add_column("evidence", overflow="ellipsis", no_wrap=True, ratio=1)
    for group in reversed(shown) if log else shown:
        a = group[0]
        if log:
            t.add_row(_clock(a.time), Text(a.state, style=STATE_STYLE.get(a.state, "")),
                      a.kind, a.where, _evidence(a))
            continue
        evidence = _evidence(a) if len(group) == 1 else \
            ", ".join(str(x.evidence.get("quantity", "?")) for x in group)
        since = min(x.time for x in group)
        t.add_row(Text(a.kind, style="red"), a.where,
                  f"{_clock(since)} ({_age(max(0.0, now - since))})", evidence)
    if not log and len(alarms) > len(shown):  # (the log is a rolling one anyway)
        t.add_row(Text(f"+{len(alarms) - len(shown)} more", style="dim"))
    if not alarms:
        t.add_row(Text("none", style="dim"))
    return t


def _gateway(gw: GatewayState, now: float) -> Panel:
    colour = {"online": "green", "offline": "bold red"}.get(gw.status, "yellow")
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(no_wrap=True, overflow="ellipsis")
    since = f" since {_clock(gw.since)}" if gw.since else ""
    t.add_row("uplink", Text.assemble((gw.status, colour), since))
    h = gw.health
    if h is None:
        t.add_row("health", Text("none yet", style="dim"))
        return Panel(t, title=f"gateway {gw.gateway}", title_align="left",
                     border_style=colour, width=GW_WIDTH)

    def n(key: str) -> str:
        return _num(h[key]) if key in h else "?"

    t.add_row("store", f"{n('store.telemetry')} telemetry · {n('store.alarms')} alarms")
    t.add_row("", f"{h.get('store.bytes', 0) / 1024:.1f} KiB · oldest "
              f"{h.get('store.oldest_age_s', 0):.1f} s")
    t.add_row("sent", f"{n('uplink.delivered')} delivered · {n('uplink.inflight')} in flight")
    t.add_row("", f"{n('uplink.connects')} connects")
    t.add_row("ingest", f"{n('ingest.accepted')} accepted · {n('ingest.missing')} missing")
    t.add_row("", Text(f"{_num(sum(gw.rejected.values()))} rejected" + "".join(
        f" · {k} {_num(v)}" for k, v in sorted(gw.rejected.items())),
        style="yellow" if gw.rejected else ""))
    t.add_row("alarms", f"{n('open_alarms')} open · health "
              f"{_age(max(0.0, now - (gw.health_time or now)))} ago")
    return Panel(t, title=f"gateway {gw.gateway}", title_align="left", border_style=colour,
                 width=GW_WIDTH)


def _layout(state: MonitorState, n_open: int, n_log: int, right: int, height: int,
            max_alarms: int, max_log: int) -> tuple[bool, int, int, int]:
    """Fit the frame into ``height`` lines: one row per channel if they all fit, else one
    per device; then fewer alarm and log rows (down to 2); then "+k more" devices.
    Returns (collapsed, device rows, open-alarm rows, log rows)."""
    per_channel, per_device = len(state.rows()), len(state.devices)
    while True:
        shown_open = min(n_open, max_alarms) + (n_open > max_alarms)
        left = 6 + max(1, shown_open) + max(1, min(n_log, max_log))
        room = height - 3 - max(left, right)  # header line, table header and rule
        if per_channel <= room:
            return False, per_channel, max_alarms, max_log
        if per_device <= room:
            return True, per_device, max_alarms, max_log
        if max_log > 2 or max_alarms > 2:
            max_log, max_alarms = (max_log - 1, max_alarms) if max_log > 2 \
                else (max_log, max_alarms - 1)
            continue
        return True, max(3, room - 1), max_alarms, max_log  # and a "+k more" line


def render(state: MonitorState, now: float, height: int = 40, spark_width: int = 20,
           max_alarms: int = 5, max_log: int = 5) -> RenderableType:
    """One frame of the dashboard, ``height`` lines at most: header, devices, then
    open alarms and the recent log beside the gateways."""
    gws = [state.gateways[g] for g in sorted(state.gateways)][:2]
    open_alarms = state.open_groups()
    right_h = sum(10 if g.health else 4 for g in gws) or 3  # lines of the gateway panels
    collapsed, max_rows, max_alarms, max_log = _layout(
        state, len(open_alarms), len(state.log), right_h, height, max_alarms, max_log)
    left = Group(
        Panel(_alarms_table(open_alarms, max_alarms, False, now),
              title=f"open alarms ({len(open_alarms)})", title_align="left",
              border_style="red" if open_alarms else "green"),
        Panel(_alarms_table([[a] for a in state.log], max_log, True, now),
              title="recent alarms and events", title_align="left", border_style="blue"))
    right = Group(*(_gateway(g, now) for g in gws)) if gws else \
        Panel(Text("no gateway heard yet", style="dim"), title="gateway", title_align="left",
              width=GW_WIDTH)
    bottom = Table.grid(expand=True)
    bottom.add_column(ratio=1)
    bottom.add_column(width=GW_WIDTH)
    bottom.add_row(left, right)
    c = state.counts
    stale = sum(state.stale(d, now) for d in state.devices.values())
    bad = c["bad_messages"] + c["bad_records"]
    head = Text.assemble(
        ("gridedge monitor", "bold"), f" {_clock(now)}Z · {state.broker} ",
        ("connected", "green") if state.connected else ("disconnected", "bold red"),
        f" · {len(state.devices)} devices", (f" ({stale} stale)", "yellow") if stale else "",
        f" · {len(open_alarms)} open alarms · {c['readings']} readings",
        f", {c['duplicates']} dup" if c["duplicates"] else "",
        f", {c['late']} late" if c["late"] else "", (f", {bad} bad", "red") if bad else "",
        (f" · {state.problem}", "bold red") if state.problem else "",
        no_wrap=True, overflow="ellipsis")
    rows = state.rows(per_channel=not collapsed)
    return Group(head, _devices(state, now, rows, max_rows, spark_width, collapsed), bottom)


def snapshot_text(state: MonitorState, now: float, width: int = 120, height: int = 40) -> str:
    console = Console(record=True, width=width, height=height, file=io.StringIO(),
                      color_system=None, legacy_windows=False)
    console.print(render(state, now, height=height))
    return console.export_text()
