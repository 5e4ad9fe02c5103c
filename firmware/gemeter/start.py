"""The meter's start: everything built from the files, in a module unloaded once it is done.

``build(app, paths)`` is App's constructor, in steps, so that what only the start needs
never shares the heap with the meter: the board file, the settings and the key are read
(config.read_device, with modules board, config and keystore, then unloaded: READERS); the
state, frame builder, link and buses are made (board loaded again for them, then unloaded,
and the board description dropped); only then are the drivers imported and made, which is
the start's peak, and the sampler and ring last. A driver is imported only for a board
that carries its IC. App unloads this module afterwards: a meter runs for months and
builds itself once, so none of this code stays in its heap. The console uses ``buses``, ``build_sources`` and ``Paths`` too.
"""

import gc
import sys

from gemeter import unload


class Paths:
    """Where the device's files are. The default, relative to the working directory, is
    the filesystem root on a board; under the unix port it is the device's folder."""

    def __init__(self, root=""):
        self.board = root + "board.json"
        self.config = root + "config.json"
        self.state = root + "state"  # state.a.json and state.b.json (see state.py)
        self.key = root + "key.bin"
        self.ca = root + "ca.der"  # the gateway's CA certificate, DER (MQTT over TLS)
        self.ota = root + "ota.json"  # a firmware update's state (boot.py)


# Modules that read the files (board file, settings, key): unloaded once read.
READERS = ("board", "config", "keystore")


def _calibration(cfg, ch_a, ch_b):
    """ADE7953 calibration from the config's per-channel entries; which channels lack one."""
    from gemeter.drivers.ade7953 import DEFAULT_CALIBRATION

    saved = cfg.get("calibration")
    entries = (saved.get(str(ch_a), {}), saved.get(str(ch_b), {}))
    d = DEFAULT_CALIBRATION
    volts = entries[0].get("volts") or entries[1].get("volts") or d["volts"]
    cal = {
        "volts": volts,
        "amps": tuple(e.get("amps") or d["amps"][i] for i, e in enumerate(entries)),
        "watts": tuple(e.get("watts") or d["watts"][i] for i, e in enumerate(entries)),
        "wh": tuple(e.get("wh") or d["wh"][i] for i, e in enumerate(entries)),
    }
    uncalibrated = [ch for ch, e in zip((ch_a, ch_b), entries) if not e]
    return cal, uncalibrated


def pzem_addresses(text, board_default):
    """The pzem_addresses setting (checked by config: "1,2,..." or empty for the board's)."""
    return [int(p) for p in text.split(",")] if text else list(board_default)


def buses(desc):
    """The board file's meters with their buses made: [(meter entry, bus, cs, reset)]
    (bus: a UART for a PZEM, an SPI for an ADE7953 with its chip-select and reset pins).
    The board module is needed up to here and not after: the drivers are imported and
    made once it is unloaded (the start's peak is there)."""
    from gemeter import board as boardmod

    made = []
    for m in desc["meters"]:
        if m["type"] == "pzem004t":
            made.append((m, boardmod.uart(desc, m["uart"]), None, None))
        elif m["type"] == "ade7953":
            made.append((m, boardmod.spi(desc, m["spi"]), boardmod.pin(desc, m["cs"], 1),
                         boardmod.pin(desc, m["reset"], 1) if m.get("reset") else None))
        else:
            raise boardmod.BoardError("unknown meter type %s" % m["type"])
    return made


def build_sources(made, cfg, state):
    """(sources, channel count, channels without calibration) from ``buses(desc)``.
    cfg: the settings, anything with ``get`` (config.Config, or the plain dict App keeps),
    "calibration" included. A driver is imported only for a board that carries its IC."""
    from gemeter.frame import MAX_CHANNELS
    from gemeter.sources import ADESource, PZEMSource

    sources = []
    uncalibrated = []
    ch = 0
    for m, bus, cs, reset in made:
        if m["type"] == "pzem004t":
            from gemeter.drivers.pzem004t import PZEM004T

            for addr in pzem_addresses(cfg.get("pzem_addresses"), m.get("addresses", [1])):
                dev = PZEM004T(bus, addr, timeout_ms=m.get("timeout_ms", 200),
                               gap_ms=m.get("gap_ms", 5))
                sources.append(PZEMSource(dev, ch))
                ch += 1
        else:
            from gemeter.drivers.ade7953 import ADE7953

            cal, missing = _calibration(cfg, ch, ch + 1)
            uncalibrated += missing
            chip = ADE7953(bus, cs, reset=reset, calibration=cal)
            src = ADESource(chip, ch, ch + 1)
            src.configure(m, cfg)  # board file + settings: input map, invert, PHCAL
            src.restore(state.energy_mwh)
            sources.append(src)
            ch += 2
    if ch > MAX_CHANNELS:
        raise ValueError("%d channels: a frame carries at most %d" % (ch, MAX_CHANNELS))
    return sources, ch, uncalibrated


def open_link(desc, settings, paths, clock=None):
    """The link to the gateway; settings: the config's values (a dict, kept by an MQTT
    link)."""
    if settings.get("link") == "mqtt":
        from gemeter.link_mqtt import MQTTLink
        from gemeter.wifi import WiFi

        return MQTTLink(settings, wifi=WiFi(settings), clock=clock, ca_path=paths.ca)
    spec = desc.get("uart", {}).get("gateway", {})
    from gemeter.link_serial import SerialLink

    if spec.get("id") == "usb":
        return SerialLink(sys.stdout.buffer)
    from gemeter import board as boardmod

    return SerialLink(boardmod.uart(desc, "gateway", settings.get("serial_baud")))


def _parts(app, paths):
    """Read the files; make the state, the frame builder, the clock, the link and the
    buses. Returns (buses, settings): the board description never leaves this function,
    so it is garbage once it returns (a running function's dead temporaries still hold
    what they held)."""
    try:
        from gemeter.config import read_device

        desc, settings, key = read_device(paths)
    finally:
        unload(READERS)
        gc.collect()
    if key is None:
        raise RuntimeError("no device key: run the console's 'key generate' or provision")
    from gemeter import frame
    from gemeter.timesync import Clock

    try:
        from gemeter.state_load import load

        app.state = load(paths.state)
    finally:
        unload(("state_load",))
    if app.state.problem:  # the console's show says it too, until this start repairs it
        print("problem: " + app.state.problem)
    app.builder = frame.FrameBuilder(settings["device_id"], key)
    # Commands and relays, in one list (an attribute less is heap: App's dict stays small):
    # recent command ids, refused, reboot at, relay due, relay states for the frames, and
    # the seconds a new firmware's trial may take (None: no trial). The device id, key
    # and config path are found again when a command comes (cmdrun.py), not kept.
    app.ctl = [[], 0, None, None, None, _trial_s(paths)]
    app.relays = None
    if desc.get("relays"):
        app.relays = _relays(desc["relays"], app.state)
        from gemeter.relaystate import encoded

        app.ctl[4] = encoded(app.relays)
    app.clock = Clock()
    app.link = open_link(desc, settings, paths, app.clock)
    app.wdt_ms = desc.get("wdt_timeout_ms", 8000)
    return buses(desc), settings


def _trial_s(paths):
    """The trial's time, if boot.py switched in an update this firmware is on trial in;
    -1 if boot.py rolled one back and the firmware has not said so yet; else None."""
    import json

    try:
        with open(paths.ota) as f:
            st = json.loads(f.read())
        if st.get("st") == "back" and not st.get("told"):
            return -1
        return st.get("trial_s", 600) if st.get("st") == "trial" else None
    except (OSError, ValueError, AttributeError):
        return None


def _relays(wired, state):
    """The board's relays as relay.py keeps them ([pin, level, on, back, due]), driven as
    the state saved before this start says: closed if it says nothing, and a temporary
    switch that was pending ended at once (the board cannot tell how long it was off; a
    lost restore must never leave a load off for good). Here, not in relay.py: that module
    is loaded only to switch, so its names never take the meter's heap."""
    import machine

    relays = {}
    for name, r in wired.items():
        on, back = state.relay.get(name, (True, None))
        on = on if back is None else back
        level = r.get("on", 1)
        machine.Pin(r["pin"], machine.Pin.OUT, value=level if on else 1 - level)
        relays[name] = [r["pin"], level, on, None, None]
    state.relay = {n: [r[2], None] for n, r in relays.items()}  # the boot's save writes it
    return relays


def build(app, paths):
    """Build App ``app`` from the files under ``paths`` (see the module docstring): its
    attributes are the meter's parts. Nothing made here refers back to this module.
    Returns what App makes the sampler and ring with once this module is unloaded:
    (samples per report, ring size, channels without calibration)."""
    made, settings = _parts(app, paths)
    unload(("board",))  # the buses are made; the board file is gone with _parts
    gc.collect()
    app.sources, app.channels, uncal = build_sources(made, settings, app.state)
    app.interval_ms = settings["sample_interval_ms"]
    app.checkpoint_s = settings["checkpoint_s"]
    per_report = settings["report_interval_s"] * 1000 // app.interval_ms
    return per_report, settings["ring_size"], uncal
