"""The meter application: builds everything from the board file and the config, then loops.

One loop iteration: read every IC (sources), and when a reporting period is complete build
one authenticated frame, queue it in the RAM ring and let the link send what it can; feed
the hardware watchdog (only here, so a hung driver or link resets the board); checkpoint
energy totals within the flash-wear budget; sleep until the next sample is due. The boot
counter is saved before the first frame. ``run`` returns statistics when given a cycle
limit (tests, benchmarks); on a board it runs forever.

Heap. The start goes in two steps, so that what only the start needs never shares the
heap with the meter: first the board file, the settings and the key are read (modules
board, config and keystore, then unloaded: STARTUP_MODULES), then the meter's modules are
imported and built from plain data (board is loaded again to make the buses, and unloaded
after). A driver is imported only for a board that carries its IC. Garbage collection is
never switched off: after each report the loop collects and notes the live and free heap
(``stats``: heap_live_*, heap_free_min), which measures the meter without risking it. The
console's ``show`` prints the same figures on a board.
"""

import gc
import sys
import time

import machine


class Paths:
    """Where the device's files are. The default, relative to the working directory, is
    the filesystem root on a board; under the unix port it is the device's folder."""

    def __init__(self, root=""):
        self.board = root + "board.json"
        self.config = root + "config.json"
        self.state = root + "state"  # state.a.json and state.b.json (see state.py)
        self.key = root + "key.bin"
        self.ca = root + "ca.der"  # the gateway's CA certificate, DER (MQTT over TLS)


# Modules only the start needs (board file, settings, key): App unloads them once built.
STARTUP_MODULES = ("board", "config", "keystore")


def unload(names):
    """Forget modules of the gemeter package, e.g. ``unload(("console",))``: their heap is
    freed once nothing refers to anything they made."""
    import gemeter

    for name in names:
        sys.modules.pop("gemeter." + name, None)
        if name in dir(gemeter):
            delattr(gemeter, name)


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


class App:
    def __init__(self, paths=None):
        """Everything from the files (see the module docstring for the two steps)."""
        self.paths = paths or Paths()
        desc, settings, key = read_files(self.paths)
        if key is None:
            raise RuntimeError("no device key: run the console's 'key generate' or provision")
        from gemeter import frame
        from gemeter.ring import FrameRing
        from gemeter.sampler import Sampler
        from gemeter.state import State
        from gemeter.timesync import Clock

        self.state = State(self.paths.state).load()
        if self.state.problem:  # the console's show says it too, until this start repairs it
            print("problem: " + self.state.problem)
        self.builder = frame.FrameBuilder(settings["device_id"], key)
        self.sources, self.channels, uncal = build_sources(desc, settings, self.state)
        self.interval_ms = settings["sample_interval_ms"]
        self.checkpoint_s = settings["checkpoint_s"]
        self.wdt_ms = desc.get("wdt_timeout_ms", 8000)
        per_report = settings["report_interval_s"] * 1000 // self.interval_ms
        self.sampler = Sampler(self.sources, self.channels, per_report, self.builder)
        for ch in uncal:
            self.sampler.flag(ch, frame.ST_UNCALIBRATED)
        self.ring = FrameRing(settings["ring_size"])
        self.clock = Clock()
        self.link = open_link(desc, settings, self.paths, self.clock)
        unload(("board",))  # the buses are made
        self.seq = 0
        self.uptime_ms = 0
        # Measurements, in fixed slots (no growth while running): the live heap after the
        # collection at each report (first, then min/max after two warm-up reports), the
        # smallest free heap seen there, and busy time per cycle. Garbage collection is
        # never switched off to measure: a board that ran out of heap in a measuring cycle
        # would stop metering (the watchdog would reset it).
        self.heap_live = [None, None, None]  # first, min after warm-up, max after warm-up
        self.heap_free_min = None
        self.busy_us = [0, 0]  # total, max

    def energy(self):
        totals = dict(self.state.energy_mwh)
        for src in self.sources:
            totals.update(src.energy_mwh())
        return totals

    def run(self, max_cycles=None, watchdog=True):
        self.boot = self.state.next_boot()
        wdt = machine.WDT(timeout=self.wdt_ms) if watchdog else None
        interval = self.interval_ms
        last = time.ticks_ms()
        due = last
        while max_cycles is None or self.sampler.cycles < max_cycles:
            t0 = time.ticks_us()
            self.sampler.sample()
            now = time.ticks_ms()
            self.uptime_ms += time.ticks_diff(now, last)
            last = now
            if self.sampler.due():
                self.ring.push(self.sampler.report(
                    self.boot, self.seq, self.uptime_ms, self.clock.unix_ms(), self.ring.dropped))
                self.seq += 1
                self.state.checkpoint(self.energy(), self.checkpoint_s)
                gc.collect()  # once per report: the heap figures below are then live data
                self._note_heap(gc.mem_alloc(), gc.mem_free())
            self.link.service(self.ring)
            busy = time.ticks_diff(time.ticks_us(), t0)
            self.busy_us[0] += busy
            if busy > self.busy_us[1]:
                self.busy_us[1] = busy
            if wdt is not None:
                wdt.feed()  # only after a complete iteration: a hang anywhere stops feeding
            due = time.ticks_add(due, interval)
            wait = time.ticks_diff(due, time.ticks_ms())
            if wait > 0:
                time.sleep_ms(wait)
            elif wait < -interval:  # far behind (a long stall): do not try to catch up
                due = time.ticks_ms()
        self.state.checkpoint(self.energy(), self.checkpoint_s, force=True)
        return self.stats()

    def _note_heap(self, live, free):
        if self.heap_free_min is None or free < self.heap_free_min:
            self.heap_free_min = free
        h = self.heap_live
        if h[0] is None:
            h[0] = live
        elif self.seq > 2:
            h[1] = live if h[1] is None or live < h[1] else h[1]
            h[2] = live if h[2] is None or live > h[2] else h[2]

    def stats(self):
        cycles = max(1, self.sampler.cycles)
        return {
            "cycles": self.sampler.cycles,
            "frames": self.seq,
            "boot": self.boot,
            "dropped": self.ring.dropped,
            "heap_live_first": self.heap_live[0],
            "heap_live_min": self.heap_live[1],
            "heap_live_max": self.heap_live[2],
            "heap_free_min": self.heap_free_min,
            "busy_us_mean": self.busy_us[0] // cycles,
            "busy_us_max": self.busy_us[1],
            "state_writes": self.state.writes,
            "link_sent": self.link.sent if self.link else 0,
            "link_connects": getattr(self.link, "connects", 0),
            "link_failures": getattr(self.link, "failures", 0),
            "link_error": repr(getattr(self.link, "last_error", None)),
        }
