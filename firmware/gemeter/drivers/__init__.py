"""Metering IC drivers. Each takes already-built bus objects and never reads board files.

Every driver raises ``DriverError`` for anything that went wrong on the bus, with ``kind``
one of the KIND_* names below, so the sampler can turn it into the frame's status bits
without knowing the IC. Drivers count their own errors per kind.

A reading has one shape, whatever the IC: scaled integers in the attributes
``voltage_mv``, ``current_ma``, ``power_mw``, ``reactive_mvar``, ``apparent_mva`` (None
where the IC does not measure it), ``pf_milli`` and ``frequency_mhz``. The sources hand a
driver's readings to the aggregates and the console prints them as they are: nothing
re-packs them into tuples.
"""

KIND_TIMEOUT = "timeout"  # no (complete) reply in time
KIND_CRC = "crc"  # reply failed its checksum
KIND_EXCEPTION = "exception"  # the IC answered with an error
KIND_DESYNC = "desync"  # bytes on the line that are no valid reply
KIND_ABSENT = "absent"  # the IC does not answer at all / reads as zeros
KIND_RESET = "reset"  # the IC lost its configuration (re-initialised)


class DriverError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
