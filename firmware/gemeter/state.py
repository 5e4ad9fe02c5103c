"""Persistent device state: boot counter and energy totals, with bounded flash writes.

/state.json holds the boot counter (incremented and saved once per boot, before the first
frame, so (device, boot, seq) never repeats) and the energy totals of the channels whose
IC does not keep its own (the ADE7953's read-with-reset accumulators are integrated in
RAM). Energy is checkpointed at most once per ``checkpoint_s`` (flash wear: 900 s is 96
small writes a day, which LittleFS spreads over the whole flash), and on a clean reboot.
A power cut loses at most one checkpoint interval of energy on those channels. Writes are
atomic (config.atomic_write) and counted in ``writes`` for the tests.
"""

import json
import time

from gemeter.config import atomic_write


class State:
    def __init__(self, path="/state.json"):
        self.path = path
        self.boot = 0
        self.energy_mwh = {}  # channel index (str) -> mWh
        self.writes = 0
        self.problem = None
        self._last_save = None

    def load(self):
        try:
            with open(self.path) as f:
                data = json.loads(f.read())
            self.boot = int(data.get("boot", 0))
            energy = data.get("energy_mwh", {})
            self.energy_mwh = {str(k): int(v) for k, v in energy.items()}
        except OSError:
            pass  # first boot
        except (ValueError, TypeError, AttributeError):
            # A corrupt state file must not stop the meter. The boot counter restarts above
            # anything plausible so identities stay unique; the gateway reports the jump.
            self.problem = "%s unreadable: boot counter restarted" % self.path
            self.boot = time.time() & 0x3FFFFFFF
        return self

    def next_boot(self):
        self.boot = (self.boot + 1) & 0xFFFFFFFF
        self.save()
        return self.boot

    def save(self):
        atomic_write(self.path, json.dumps({"boot": self.boot, "energy_mwh": self.energy_mwh}))
        self.writes += 1
        self._last_save = time.ticks_ms()

    def checkpoint(self, energy_mwh, interval_s, force=False):
        """Record energy totals; write to flash only if forced or the interval has passed."""
        self.energy_mwh = energy_mwh
        now = time.ticks_ms()
        if force or self._last_save is None or \
                time.ticks_diff(now, self._last_save) >= interval_s * 1000:
            self.save()
            return True
        return False
