"""Persistent device state: boot counter and energy totals, in two copies that alternate.

The boot counter is incremented and saved once per boot, before the first frame, so
(device, boot, seq) never repeats; the gateway rejects frames whose boot is below one it
has seen (``replayed``), so the counter must never go backwards. The energy totals are
those of the channels whose IC does not keep its own (the ADE7953's read-with-reset
accumulators are integrated in RAM). Energy is checkpointed at most once per
``checkpoint_s`` (flash wear: 900 s is 96 small writes a day, which LittleFS spreads over
the whole flash), and on a clean reboot. A power cut loses at most one checkpoint interval
of energy on those channels. Writes are counted in ``writes`` for the tests.

Two copies, /state.a.json and /state.b.json. Each save writes the whole state, numbered
one above the newest copy, into the *other* copy: the newest copy is never the one being
written, so a write torn by a power cut, or a copy corrupted on the flash, loses at most
that one save. A copy is a line of JSON (``n``, the save's number; ``boot``;
``energy_mwh``; ``cmd``, the last command counter accepted; ``relay``, relay.py's) and a line with its check, the first 4 bytes of the line's SHA-256 in hex;
a copy that fails its check or holds anything else is unreadable. One write per save, as
with a single file (no temporary file and rename: the other copy is the fallback).

Reading the copies back is the start's business (state_load.py, unloaded once the meter
is built): it finds the newest readable copy and what was lost, and hands this class the
counters, so that a meter carries only the writing half while it runs.
"""

import hashlib
import json
import os
import time
from binascii import hexlify


def check(line):
    """The check line of a copy's line: the first 4 bytes of its SHA-256, in hex."""
    return hexlify(hashlib.sha256(line).digest()[:4])


class State:
    def __init__(self, path="state"):
        self.copies = (path + ".a.json", path + ".b.json")
        self.legacy = path + ".json"  # before the two copies
        self.boot = 0
        self.energy_mwh = {}  # channel index (str) -> mWh
        self.cmd = 0  # the counter of the last command accepted (command.py)
        self.relay = {}  # relay name -> [on, state a pending timed switch restores]
        self.writes = 0
        self.problem = None
        self.n = 0  # number of the newest save
        self.next = 0  # the copy the next save writes (0 = a)
        self.both = False  # the next save writes both copies (after a loss, an upgrade)
        self._last_save = None

    def next_boot(self):
        self.boot = (self.boot + 1) & 0xFFFFFFFF
        self.save()
        return self.boot

    def save(self):
        self._write()
        if self.both:  # the copy that was lost first, then the other one
            self.both = False
            self._write()
            try:
                os.remove(self.legacy)
            except OSError:
                pass
        self._last_save = time.ticks_ms()

    def _write(self):
        n = self.n + 1
        line = json.dumps({"n": n, "boot": self.boot, "energy_mwh": self.energy_mwh,
                           "cmd": self.cmd, "relay": self.relay}).encode()
        with open(self.copies[self.next], "wb") as f:
            f.write(line)
            f.write(b"\n")
            f.write(check(line))
            f.write(b"\n")
        self.n = n  # only now: after a failed write the newest copy is where it was
        self.next ^= 1
        self.writes += 1

    def checkpoint(self, energy_mwh, interval_s, force=False):
        """Record energy totals; write to flash only if forced or the interval has passed."""
        self.energy_mwh = energy_mwh
        now = time.ticks_ms()
        if force or self._last_save is None or \
                time.ticks_diff(now, self._last_save) >= interval_s * 1000:
            self.save()
            return True
        return False
