"""The sampler: reads every source each sample and turns each reporting period into a frame.

A period is ``samples_per_report`` samples (report_interval_s * 1000 / sample_interval_ms),
so its length follows the samples actually taken, also when the loop runs late; the frame
carries the period's measured length in ms. Driver errors only mark channels (see
aggregate.py); sampling goes on.
"""

import time

from gemeter.aggregate import ChannelAggregate


class Sampler:
    def __init__(self, sources, channel_count, samples_per_report, builder):
        self.sources = sources
        self.aggs = [ChannelAggregate(i) for i in range(channel_count)]
        self.samples_per_report = max(1, samples_per_report)
        self.builder = builder
        self.samples = 0
        self.cycles = 0
        self._period_start = time.ticks_ms()

    def flag(self, channel, bits):
        """Status bits that hold for a channel in every period (e.g. uncalibrated)."""
        self.aggs[channel].flags |= bits

    def sample(self):
        for src in self.sources:
            src.sample(self.aggs)
        self.samples += 1
        self.cycles += 1

    def due(self):
        return self.samples >= self.samples_per_report

    def report(self, boot, seq, uptime_ms, unix_ms=None, dropped=0, results=None,
               relays=None):
        """Close the period: the authenticated frame (bytes), with the results of the
        commands handled in it, if any."""
        now = time.ticks_ms()
        period = time.ticks_diff(now, self._period_start)
        self._period_start = now
        self.samples = 0
        # Each aggregate writes its channel map into the frame and starts a new period.
        return self.builder.build(boot, seq, uptime_ms, period, self.aggs, unix_ms, dropped,
                                  results, relays)
