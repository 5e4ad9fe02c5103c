"""The meter's start: everything built from the files, in a module unloaded once it is done.

``build(app, paths)`` is App's constructor, in two steps, so that what only the start
needs never shares the heap with the meter: first the board file, the settings and the key
are read (modules board, config and keystore, then unloaded: STARTUP_MODULES), then the
meter's modules are imported and built from plain data (board is loaded again to make the
buses). A driver is imported only for a board that carries its IC. App unloads this module
and board afterwards: a meter runs for months and builds itself once, so none of this code
stays in its heap. The console uses ``build_sources`` and ``Paths`` too.
"""

import gc
import sys

import machine

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


# Modules only the start needs (board file, settings, key): unloaded once read.
STARTUP_MODULES = ("board", "config", "keystore")


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


def build_sources(desc, cfg, state):
    """(sources, channel count, channels without calibration) from the board's meter list.
    cfg: the settings, anything with ``get`` (config.Config, or the plain dict App keeps),
    "calibration" included. A driver is imported only for a board that carries its IC."""
    from gemeter import board as boardmod
    from gemeter.frame import MAX_CHANNELS
    from gemeter.sources import ADESource, PZEMSource

    sources = []
    uncalibrated = []
    ch = 0
    for m in desc["meters"]:
        if m["type"] == "pzem004t":
            from gemeter.drivers.pzem004t import PZEM004T

            uart = boardmod.uart(desc, m["uart"])
            for addr in pzem_addresses(cfg.get("pzem_addresses"), m.get("addresses", [1])):
                dev = PZEM004T(uart, addr, timeout_ms=m.get("timeout_ms", 200),
                               gap_ms=m.get("gap_ms", 5))
                sources.append(PZEMSource(dev, ch))
                ch += 1
        elif m["type"] == "ade7953":
            from gemeter.drivers.ade7953 import ADE7953

            cal, missing = _calibration(cfg, ch, ch + 1)
            uncalibrated += missing
            chip = ADE7953(
                boardmod.spi(desc, m["spi"]),
                boardmod.pin(desc, m["cs"], 1),
                reset=boardmod.pin(desc, m["reset"], 1) if m.get("reset") else None,
                calibration=cal,
            )
            src = ADESource(chip, ch, ch + 1)
            src.configure(m, cfg)  # board file + settings: input map, invert, PHCAL
            src.restore(state.energy_mwh)
            sources.append(src)
            ch += 2
        else:
            raise boardmod.BoardError("unknown meter type %s" % m["type"])
    if ch > MAX_CHANNELS:
        raise boardmod.BoardError("%d channels: a frame carries at most %d" % (ch, MAX_CHANNELS))
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


def default_device_id():
    import binascii

    return "gm-" + str(binascii.hexlify(machine.unique_id()), "ascii")[-8:]


def read_files(paths):
    """The start's first step: (board description, settings, key) from the files, as plain
    data (the settings: the config's values and "calibration"). Unloads the modules that
    read them (STARTUP_MODULES), also when a file is wrong."""
    try:
        from gemeter import board as boardmod
        from gemeter.config import Config
        from gemeter.keystore import KeyStore

        desc = boardmod.load(paths.board)
        cfg = Config(paths.config).load()
        settings = cfg.values
        settings["calibration"] = cfg.calibration
        if not settings["device_id"]:
            settings["device_id"] = default_device_id()
        return desc, settings, KeyStore(paths.key).load()
    finally:
        unload(STARTUP_MODULES)
        gc.collect()


def build(app, paths):
    """Build App ``app`` from the files under ``paths`` (see the module docstring): its
    attributes are the meter's parts. Nothing made here refers back to this module."""
    desc, settings, key = read_files(paths)
    if key is None:
        raise RuntimeError("no device key: run the console's 'key generate' or provision")
    from gemeter import frame
    from gemeter.ring import FrameRing
    from gemeter.sampler import Sampler
    from gemeter.state import State
    from gemeter.timesync import Clock

    app.state = State(paths.state).load()
    if app.state.problem:  # the console's show says it too, until this start repairs it
        print("problem: " + app.state.problem)
    app.builder = frame.FrameBuilder(settings["device_id"], key)
    app.clock = Clock()
    app.link = open_link(desc, settings, paths, app.clock)
    app.sources, app.channels, uncal = build_sources(desc, settings, app.state)
    # What the board file and the settings still say, as numbers; then they and the board
    # module go before the last parts are made: the start's peak is here, not after them.
    app.interval_ms = settings["sample_interval_ms"]
    app.checkpoint_s = settings["checkpoint_s"]
    app.wdt_ms = desc.get("wdt_timeout_ms", 8000)
    per_report = settings["report_interval_s"] * 1000 // app.interval_ms
    ring_size = settings["ring_size"]
    del desc, settings, key
    unload(("board",))
    gc.collect()
    app.sampler = Sampler(app.sources, app.channels, per_report, app.builder)
    for ch in uncal:
        app.sampler.flag(ch, frame.ST_UNCALIBRATED)
    app.ring = FrameRing(ring_size)
