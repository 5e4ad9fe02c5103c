"""The meter application: builds everything from the board file and the config, then loops.

One loop iteration: read every IC (sources), and when a reporting period is complete build
one authenticated frame, queue it in the RAM ring and let the link send what it can; feed
the hardware watchdog (only here, so a hung driver or link resets the board); checkpoint
energy totals within the flash-wear budget; sleep until the next sample is due. The boot
counter is saved before the first frame. ``run`` returns statistics when given a cycle
limit (tests, benchmarks); on a board it runs forever.

Garbage collection is never switched off: after each report the loop collects and notes
the live and free heap (``stats``: heap_live_*, heap_free_min), which measures the meter
without risking it. The console's ``show`` prints the same figures on a board.
"""

import gc
import sys
import time

import machine

from gemeter import board as boardmod
from gemeter import frame
from gemeter.config import Config
from gemeter.drivers.ade7953 import ADE7953, DEFAULT_CALIBRATION
from gemeter.drivers.pzem004t import PZEM004T
from gemeter.keystore import KeyStore
from gemeter.link_serial import SerialLink
from gemeter.ring import FrameRing
from gemeter.sampler import Sampler
from gemeter.sources import ADESource, PZEMSource
from gemeter.state import State
from gemeter.timesync import Clock


class Paths:
    """Where the device's files are. The default, relative to the working directory, is
    the filesystem root on a board; under the unix port it is the device's folder."""

    def __init__(self, root=""):
        self.board = root + "board.json"
        self.config = root + "config.json"
        self.state = root + "state"  # state.a.json and state.b.json (see state.py)
        self.key = root + "key.bin"
        self.ca = root + "ca.der"  # the gateway's CA certificate, DER (MQTT over TLS)


def _calibration(cfg, ch_a, ch_b):
    """ADE7953 calibration from the config's per-channel entries; which channels lack one."""
    entries = (cfg.calibration.get(str(ch_a), {}), cfg.calibration.get(str(ch_b), {}))
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


def build_sources(desc, cfg, state):
    """(sources, channel count, channels without calibration) from the board's meter list."""
    sources = []
    uncalibrated = []
    ch = 0
    for m in desc["meters"]:
        if m["type"] == "pzem004t":
            uart = boardmod.uart(desc, m["uart"])
            for addr in cfg.pzem_addresses(m.get("addresses", [1])):
                dev = PZEM004T(uart, addr, timeout_ms=m.get("timeout_ms", 200),
                               gap_ms=m.get("gap_ms", 5))
                sources.append(PZEMSource(dev, ch))
                ch += 1
        elif m["type"] == "ade7953":
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
    if ch > frame.MAX_CHANNELS:
        raise boardmod.BoardError("%d channels: a frame carries at most %d" % (ch, frame.MAX_CHANNELS))
    return sources, ch, uncalibrated


def open_link(desc, cfg, paths, clock=None):
    if cfg.get("link") == "mqtt":
        from gemeter.link_mqtt import MQTTLink
        from gemeter.wifi import WiFi

        return MQTTLink(cfg, wifi=WiFi(cfg), clock=clock, ca_path=paths.ca)
    spec = desc.get("uart", {}).get("gateway", {})
    if spec.get("id") == "usb":
        return SerialLink(sys.stdout.buffer)
    return SerialLink(boardmod.uart(desc, "gateway", cfg.get("serial_baud")))


def default_device_id():
    import binascii

    return "gm-" + str(binascii.hexlify(machine.unique_id()), "ascii")[-8:]


class App:
    def __init__(self, paths=None):
        self.paths = paths or Paths()
        self.desc = boardmod.load(self.paths.board)
        self.cfg = Config(self.paths.config).load()
        if not self.cfg.get("device_id"):
            self.cfg.values["device_id"] = default_device_id()
        self.state = State(self.paths.state).load()
        if self.state.problem:  # the console's show says it too, until this start repairs it
            print("problem: " + self.state.problem)
        self.key = KeyStore(self.paths.key).load()
        if self.key is None:
            raise RuntimeError("no device key: run the console's 'key generate' or provision")
        self.builder = frame.FrameBuilder(self.cfg.get("device_id"), self.key)
        self.sources, self.channels, uncal = build_sources(self.desc, self.cfg, self.state)
        interval = self.cfg.get("sample_interval_ms")
        per_report = self.cfg.get("report_interval_s") * 1000 // interval
        self.sampler = Sampler(self.sources, self.channels, per_report, self.builder)
        for ch in uncal:
            self.sampler.aggs[ch].flags |= frame.ST_UNCALIBRATED
        self.ring = FrameRing(self.cfg.get("ring_size"))
        self.clock = Clock()
        self.link = None
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
        self.link = open_link(self.desc, self.cfg, self.paths, self.clock)
        wdt = machine.WDT(timeout=self.desc.get("wdt_timeout_ms", 8000)) if watchdog else None
        interval = self.cfg.get("sample_interval_ms")
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
                self.state.checkpoint(self.energy(), self.cfg.get("checkpoint_s"))
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
        self.state.checkpoint(self.energy(), self.cfg.get("checkpoint_s"), force=True)
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
