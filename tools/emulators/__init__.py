"""Device emulators that follow the datasheets, for the virtual board and the simulator.

Each emulator models one IC at its bus interface (bytes in, bytes out) and exposes its
physical inputs (voltage, current, …) and fault injection to tests and the fleet simulator.
They run in CPython; firmware under MicroPython reaches them through the virtual board
(tools.vboard and its machine.py client).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reply:
    """Bytes a UART device puts on the bus and how long after the request they start."""

    data: bytes
    delay_s: float = 0.0
    late: bool = False  # arrives after any sane driver timeout
