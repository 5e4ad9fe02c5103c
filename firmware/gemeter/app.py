"""The meter application: built once from the board file and the config, then loops.

One loop iteration: read every IC (sources), and when a reporting period is complete build
one authenticated frame, queue it in the RAM ring and let the link send what it can (the
link is also serviced first, so commands that came while the loop slept run at once and
their results go up in a frame of their own in the same iteration); feed
the hardware watchdog (only here, so a hung driver or link resets the board); checkpoint
energy totals within the flash-wear budget; sleep until the next sample is due. The boot
counter is saved before the first frame. ``run`` returns statistics when given a cycle
limit (tests, benchmarks); on a board it runs forever.

Heap. What builds the meter (gemeter/start.py, and what it reads the files with) is
unloaded once the meter is built, so this module holds only what runs. Garbage
collection is never switched off: after each report the loop collects and notes the live
and free heap (``stats``: heap_live_*, heap_free_min), which measures the meter without
risking it. The console's ``show`` prints the same figures on a board.
"""

import gc
import time

import machine

from gemeter import unload

TRIAL_WDT = "gridedge_trial_wdt"  # where boot.py leaves the watchdog it started (sys.modules)


class App:
    def __init__(self, root=""):
        """Everything from the files in folder ``root`` (gemeter/start.py; "" on a board:
        the filesystem's root), then start's modules unloaded. Nothing start made may
        stay referenced (a function or class of it would keep the whole module)."""
        # Collect often while building: the start's garbage (file text, parsed JSON,
        # unloaded modules) is then freed before the meter's long-lived objects are
        # placed, instead of lying between them as holes afterwards (on the unix port,
        # when this came in: 74 KB with it, 86 KB without).
        threshold = gc.threshold()
        gc.threshold(1024)
        from gemeter import start

        try:
            per_report, ring_size, uncalibrated = start.build(self, start.Paths(root))
        finally:
            unload(("start", "board", "relaystate"))
            gc.collect()
        # The last parts, once start's code is gone: the drivers' making is the peak.
        from gemeter.aggregate import ST_UNCALIBRATED
        from gemeter.ring import FrameRing
        from gemeter.sampler import Sampler

        self.sampler = Sampler(self.sources, self.channels, per_report, self.builder)
        for ch in uncalibrated:
            self.sampler.flag(ch, ST_UNCALIBRATED)
        self.ring = FrameRing(ring_size)
        gc.threshold(threshold)
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
        wdt = None
        if watchdog:
            # During an update's trial boot.py started the watchdog, and a running one
            # cannot be set up again (ESP32: OSError): that one is fed, at its timeout.
            import sys

            wdt = sys.modules.get(TRIAL_WDT) or machine.WDT(timeout=self.wdt_ms)
        interval = self.interval_ms
        last = time.ticks_ms()
        due = last
        while max_cycles is None or self.sampler.cycles < max_cycles:
            t0 = time.ticks_us()
            # The link first, as well as last: a command that came while the loop slept
            # runs in this iteration, and its result goes up in it (not a sample later).
            self.link.service(self.ring)
            self.sampler.sample()
            now = time.ticks_ms()
            self.uptime_ms += time.ticks_diff(now, last)
            last = now
            results = None
            if getattr(self.link, "inbox", None):
                results = self._commands(False)
            if self.sampler.due() or results:  # a command's result goes up at once
                ctl = self.ctl
                if results is None and (ctl[2] is not None or ctl[3] is not None
                                        or ctl[5] is not None):
                    # A reboot, a timed relay switch or a trial is pending: before this
                    # report's frame, so an empty ring says the frames before have gone.
                    results = self._commands(True)  # an update's outcome, if one ended
                self.ring.push(self.sampler.report(
                    self.boot, self.seq, self.uptime_ms, self.clock.unix_ms(), self.ring.dropped,
                    results, self.ctl[4]))
                self.seq += 1
                self.state.checkpoint(self.energy(), self.checkpoint_s)
                gc.collect()  # once per report: the heap figures below are then live data
                self._note_heap(gc.mem_alloc(), gc.mem_free())
            self.link.service(self.ring)
            if self.ctl[2] is not None and self.ring.peek() is None:
                self._commands(True)  # a reboot's result has gone out: restart now
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

    def _commands(self, due=False):
        """Run the commands the link received (cmdrun.py, loaded only while there are
        any: it stays off the heap otherwise); their results, for the frame. ``due``: at
        a report, what a command left pending (a reboot, a timed relay switch)."""
        from gemeter import cmdrun

        try:
            return cmdrun.due(self) if due else cmdrun.run(self)
        finally:
            unload(("cmdrun", "command", "relay", "relaystate", "config", "keystore",
                    "unframe", "ota"))

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
        """The meter's figures (appstats.py: loaded only when asked, at the end of a run)."""
        gc.collect()
        from gemeter import appstats

        try:
            return appstats.stats(self)
        finally:
            unload(("appstats",))
            gc.collect()  # its code freed again, for what the caller makes of the figures
