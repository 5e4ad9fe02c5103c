"""PZEM-004T v3.0 installer operations: the driver (pzem004t.py) plus what only the console
does - scan a bus for modules, give a module a new address, read and set its power alarm
threshold, reset its energy register.

Holding registers (PZEM-004T v3 manual; ../shared/reference/pzem004t-v3.md): 0x0001 is
the power alarm threshold (W, 0..25000), 0x0002 the slave address (0x01..0xF7), read with
function 0x03 and written with 0x06, whose reply echoes the request; the energy reset is
the vendor function 0x42. A subclass in its own module, loaded by the console and unloaded
with it, so that a meter's loop (which only reads) never carries it.
"""

import struct

from micropython import const

from gemeter.drivers import KIND_DESYNC, DriverError
from gemeter.drivers.pzem004t import PZEM004T

_FN_READ_HOLDING = const(0x03)
_FN_WRITE_SINGLE = const(0x06)
_FN_RESET_ENERGY = const(0x42)
_HREG_ALARM_THRESHOLD = const(0x0001)
_HREG_ADDRESS = const(0x0002)
_GENERAL_ADDRESS = const(0xF8)  # answered by any single module: only with one on the bus
_MAX_ALARM_W = const(25000)


class PZEM004TSetup(PZEM004T):
    """A PZEM-004T with the installer's operations; ``of(driver)`` for a meter's driver."""

    @classmethod
    def of(cls, driver):
        """The same module, on the same bus, with the same timing, as driver."""
        return cls(driver.uart, driver.address, timeout_ms=driver.timeout_ms,
                   gap_ms=driver.gap_ms)

    def reset_energy(self):
        self._transact(_FN_RESET_ENERGY, b"", 4)

    def set_power_alarm(self, watts):
        if not 0 <= watts <= _MAX_ALARM_W:
            raise ValueError("power alarm must be 0..%d W" % _MAX_ALARM_W)
        self._write_register(_HREG_ALARM_THRESHOLD, watts)

    def power_alarm(self):
        data = self._transact(_FN_READ_HOLDING, struct.pack(">HH", _HREG_ALARM_THRESHOLD, 1), 7)
        return struct.unpack_from(">H", data, 3)[0]

    def set_address(self, new_address):
        """Give the module a new address. Uses the general address 0xF8: the module must be
        alone on the bus (every module would take the new address)."""
        if not 0x01 <= new_address <= 0xF7:
            raise ValueError("PZEM address must be 0x01..0xF7")
        self.address = _GENERAL_ADDRESS
        self._write_register(_HREG_ADDRESS, new_address)
        self.address = new_address

    def _write_register(self, register, value):
        payload = struct.pack(">HH", register, value)
        data = self._transact(_FN_WRITE_SINGLE, payload, 8)
        if bytes(data[2:6]) != payload:  # MicroPython's memoryview has no ==
            raise self._fail(KIND_DESYNC, "write echo differs from the request")


def scan(uart, addresses=None, timeout_ms=60):
    """Addresses of the PZEM modules answering on uart (default 0x01..0xF7)."""
    found = []
    for addr in addresses or range(0x01, 0xF8):
        dev = PZEM004TSetup(uart, addr, timeout_ms=timeout_ms, gap_ms=5)
        try:
            dev.power_alarm()
            found.append(addr)
        except DriverError:
            pass
    return found
