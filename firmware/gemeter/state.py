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
``energy_mwh``) and a line with its check, the first 4 bytes of the line's SHA-256 in hex;
a copy that fails its check or holds anything else is unreadable. One write per save, as
with a single file (no temporary file and rename: the other copy is the fallback).

``load`` takes the newest readable copy. A boot's own save goes into the older copy, so
while both copies are readable they differ by at most one boot number. When one is lost
(unreadable, or missing after two saves) it may have held the next boot number, already
used for frames, so that number is skipped; the save that follows then writes both
copies, so that they agree again before the first frame (a power cut in between leaves
the newer copy in front, and no frame was sent). Only when no copy is readable although
one exists is the counter lost: it restarts at ``time.time() & 0x3FFFFFFF`` (high on a
board whose clock is set, small on one without; the gateway reports the jump). ``problem``
says what was lost (the console's ``show`` prints it). /state.json, the single file of
earlier firmware, is read when neither copy exists; the first save writes both copies and
removes it.
"""

import hashlib
import json
import os
import time
from binascii import hexlify

from micropython import const

_MAX_BYTES = const(1024)  # of one copy: a longer file is not a copy


def _check(line):
    return hexlify(hashlib.sha256(line).digest()[:4])


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read(path):
    """(n, boot, energy) of one copy, None if there is no such file, False if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError:
        return None
    try:
        line, check, end = data.split(b"\n")
        if end or len(data) > _MAX_BYTES or check != _check(line):
            return False
        rec = json.loads(line)
        n, boot, energy = rec["n"], rec["boot"], _energy(rec["energy_mwh"])
        if _count(n) and _count(boot) and boot <= 0xFFFFFFFF and energy is not None:
            return n, boot, energy
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return False


def _energy(d):
    out = {}
    for k, v in d.items():
        if not isinstance(v, int) or isinstance(v, bool):
            return None
        out[str(k)] = v
    return out


class State:
    def __init__(self, path="state"):
        self.copies = (path + ".a.json", path + ".b.json")
        self.legacy = path + ".json"  # before the two copies
        self.boot = 0
        self.energy_mwh = {}  # channel index (str) -> mWh
        self.writes = 0
        self.problem = None
        self._n = 0  # number of the newest save
        self._next = 0  # the copy the next save writes (0 = a)
        self._both = False  # the next save writes both copies (after a loss, an upgrade)
        self._last_save = None

    def load(self):
        got = [_read(p) for p in self.copies]
        good = [i for i in (0, 1) if got[i]]
        if good:
            new = max(good, key=lambda i: got[i][0])
            self._n, boot, self.energy_mwh = got[new]
            self._next = 1 - new
            self.boot = max(got[i][1] for i in good)
            other = got[1 - new]
            if other is False or (other is None and self._n > 1):
                # the lost copy may have been the newer one, with the next boot number
                self.boot = (self.boot + 1) & 0xFFFFFFFF
                self._both = True
                self.problem = "%s %s: counters from %s, boot numbers go on above %d" % (
                    self.copies[1 - new], "unreadable" if other is False else "missing",
                    self.copies[new], self.boot)
        elif got[0] is None and got[1] is None:
            self._load_legacy()
        else:
            self._restart("%s unreadable" % " and ".join(
                p for p, g in zip(self.copies, got) if g is not None))
        return self

    def _load_legacy(self):
        try:
            with open(self.legacy) as f:
                data = json.loads(f.read())
            self.boot = int(data.get("boot", 0))
            self.energy_mwh = {str(k): int(v) for k, v in data.get("energy_mwh", {}).items()}
            self._both = True
        except OSError:
            pass  # first boot
        except (ValueError, TypeError, AttributeError):
            self._restart("%s unreadable" % self.legacy)

    def _restart(self, why):
        # No readable copy: the counter restarts above anything plausible, so that
        # identities stay unique where the clock is set; the gateway reports the jump.
        self.boot = int(time.time()) & 0x3FFFFFFF
        self.problem = why + ": boot counter restarted at %d" % self.boot
        self._both = True

    def next_boot(self):
        self.boot = (self.boot + 1) & 0xFFFFFFFF
        self.save()
        return self.boot

    def save(self):
        self._write()
        if self._both:  # the copy that was lost first, then the other one
            self._both = False
            self._write()
            try:
                os.remove(self.legacy)
            except OSError:
                pass
        self._last_save = time.ticks_ms()

    def _write(self):
        n = self._n + 1
        line = json.dumps({"n": n, "boot": self.boot, "energy_mwh": self.energy_mwh}).encode()
        with open(self.copies[self._next], "wb") as f:
            f.write(line)
            f.write(b"\n")
            f.write(_check(line))
            f.write(b"\n")
        self._n = n  # only now: after a failed write the newest copy is where it was
        self._next ^= 1
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
