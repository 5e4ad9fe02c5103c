"""Wall-clock time for frames: unix ms only while the clock is known to be right.

Boards start at their epoch (2000-01-01 on ESP32 and RP2040) with no idea of the time;
frames then carry no unix time at all rather than a wrong one. Wi-Fi boards set the clock
by NTP (``ntptime``) and are "synced" from then on. The unix port runs on a host whose
clock is kept by the operating system, so it counts as synced.
"""

import sys
import time

# Seconds from 1970-01-01 to the port's epoch (0 where the epoch is 1970, as on unix).
EPOCH_OFFSET_S = 0 if time.gmtime(0)[0] == 1970 else 946684800


class Clock:
    def __init__(self):
        self.synced = sys.platform == "linux"
        self.syncs = 0
        self.failures = 0

    def sync_ntp(self, host):
        """Set the RTC by NTP (Wi-Fi boards, network up). Returns True on success."""
        try:
            import ntptime

            if host:
                ntptime.host = host
            ntptime.settime()
        except (ImportError, OSError, OverflowError):
            self.failures += 1
            return False
        self.synced = True
        self.syncs += 1
        return True

    def unix_ms(self):
        if not self.synced:
            return None
        if hasattr(time, "time_ns"):
            return time.time_ns() // 1000000 + EPOCH_OFFSET_S * 1000
        return (int(time.time()) + EPOCH_OFFSET_S) * 1000
