"""Test-only ``machine`` module for the MicroPython unix port (never deployed).

The unix port's built-in ``machine`` lacks UART, SPI, Pin and WDT; this shim keeps what the
built-in has and is the place where the virtual board's bus classes (driven by the device
emulators in tools/) are added. It sits first on MICROPYPATH only in tests.
"""

from umachine import *  # noqa: F403
