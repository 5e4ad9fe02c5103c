"""PZEM-004T v3.0 emulator: a Modbus-RTU slave on a UART, per the v3 register map.

Facts followed (../shared/reference/pzem004t-v3.md, cross-checked with public drivers):
9600 8N1; CRC-16/MODBUS (init 0xFFFF, poly 0xA001 reflected) appended low byte first;
addresses 0x01-0xF7, 0xF8 "general" (any single device answers), 0x00 broadcast (acts, no
reply). Function 0x04 reads the 10 input registers (0x0000 voltage 0.1 V, 0x0001/2 current
0.001 A low word first, 0x0003/4 power 0.1 W, 0x0005/6 energy Wh, 0x0007 frequency 0.1 Hz,
0x0008 power factor 0.01, 0x0009 alarm 0xFFFF/0x0000); 0x03/0x06 read/write the holding
registers 0x0001 (power alarm threshold, W) and 0x0002 (slave address); 0x42 resets energy
and echoes the request. Errors are replies with function | 0x80 and an exception code
(0x01 illegal function, 0x02 illegal address, 0x03 illegal data). A request with a bad CRC
gets no reply, as on a real Modbus slave.

Faults for tests: ``fault`` set to one of FAULTS corrupts or withholds replies ("noise":
a reply of line noise with no valid frame in it, as from a module whose UART side is
failing). ``go_silent(seconds)`` makes the module stop answering for a while and then answer
again on its own, as field units do after days of running (``wake`` ends it early).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from tools.emulators import Reply

GENERAL_ADDRESS = 0xF8
BROADCAST = 0x00
FAULTS = ("crc", "silence", "garbage", "late", "short", "exception", "noise")

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_DATA = 0x03
DEVICE_FAILURE = 0x04


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + struct.pack("<H", crc16(frame))


class PZEM004T:
    """One emulated PZEM-004T v3 module."""

    #: typical processing latency of the module before the reply starts, seconds
    LATENCY_S = 0.010
    #: a "late" fault answers after this long (drivers wait 100-250 ms)
    LATE_S = 1.0

    def __init__(self, address: int = 0x01,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.alarm_threshold_w = 23_000
        self.voltage_dv = 2300  # 0.1 V
        self.current_ma = 0  # 0.001 A
        self.power_dw = 0  # 0.1 W
        self.energy_wh = 0
        self.frequency_dhz = 500  # 0.1 Hz
        self.pf_centi = 100  # 0.01
        self.fault: str | None = None
        # One-shot faults by request number (1-based, counting requests addressed to this
        # module), for deterministic tests: {3: "crc"} corrupts only the third reply.
        self.faults_at: dict[int, str] = {}
        self.requests = 0
        self.unanswered = 0  # requests addressed to it that got no reply while silent
        self._clock = clock
        self._silent_until: float | None = None
        self._energy_frac_wh = 0.0

    # -- faults over time ----------------------------------------------------
    def go_silent(self, seconds: float = float("inf")) -> None:
        """Stop answering for `seconds` (default: until ``wake``), then answer again."""
        self._silent_until = self._clock() + seconds

    def wake(self) -> None:
        self._silent_until = None

    @property
    def silent(self) -> bool:
        if self._silent_until is not None and self._clock() >= self._silent_until:
            self._silent_until = None
        return self._silent_until is not None

    # -- physical side -------------------------------------------------------
    def set_reading(
        self, voltage: float, current: float, power: float, frequency: float = 50.0,
        pf: float = 1.0,
    ) -> None:
        """Set the measured quantities in SI units; the module quantises as its registers do."""
        self.voltage_dv = max(0, round(voltage * 10))
        self.current_ma = max(0, round(current * 1000))
        self.power_dw = max(0, round(abs(power) * 10))  # the PZEM reports magnitude only
        self.frequency_dhz = round(frequency * 10)
        self.pf_centi = max(0, min(100, round(abs(pf) * 100)))

    def advance(self, seconds: float) -> None:
        """Let time pass: the energy register integrates the power (whole Wh)."""
        self._energy_frac_wh += self.power_dw / 10 * seconds / 3600
        whole = int(self._energy_frac_wh)
        self.energy_wh = (self.energy_wh + whole) & 0xFFFFFFFF
        self._energy_frac_wh -= whole

    @property
    def alarm(self) -> bool:
        return self.power_dw / 10 >= self.alarm_threshold_w

    def input_registers(self) -> list[int]:
        def split(v: int) -> list[int]:
            return [v & 0xFFFF, (v >> 16) & 0xFFFF]  # 32-bit values: low word first

        return [
            self.voltage_dv & 0xFFFF,
            *split(self.current_ma),
            *split(self.power_dw),
            *split(self.energy_wh),
            self.frequency_dhz & 0xFFFF,
            self.pf_centi & 0xFFFF,
            0xFFFF if self.alarm else 0x0000,
        ]

    # -- bus side ------------------------------------------------------------
    def handle(self, request: bytes) -> Reply | None:
        """Process one request frame from the bus; the reply, or None for silence."""
        if len(request) < 4 or crc16(request[:-2]) != struct.unpack("<H", request[-2:])[0]:
            return None
        addr, fn = request[0], request[1]
        if addr not in (self.address, GENERAL_ADDRESS, BROADCAST):
            return None
        self.requests += 1
        if self.silent:  # hangs before acting on the request
            self.unanswered += 1
            return None
        fault = self.faults_at.pop(self.requests, self.fault)
        body = self._execute(fn, request[2:-2])
        if addr == BROADCAST or fault == "silence":
            return None
        if fault == "exception":
            body = bytes([fn | 0x80, DEVICE_FAILURE])
        reply = with_crc(bytes([addr]) + body)
        delay = self.LATENCY_S
        if fault == "crc":
            reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
        elif fault == "garbage":
            reply = b"\xa5\x00\xff\x13" + reply
        elif fault == "noise":
            reply = self._noise(len(reply))
        elif fault == "short":
            reply = reply[: len(reply) // 2]
        elif fault == "late":
            delay = self.LATE_S
        return Reply(reply, delay, late=fault == "late")

    def _noise(self, n: int) -> bytes:
        """n bytes of line noise, different per request, never holding a valid reply."""
        x = self.requests * 2_654_435_761 & 0xFFFFFFFF
        out = bytearray()
        for _ in range(n):
            x = (1_103_515_245 * x + 12_345) & 0xFFFFFFFF
            out.append((x >> 16) & 0xFF)
        out[0] = self.address ^ 0x80  # never a frame starting at byte 0
        return bytes(out)

    def _execute(self, fn: int, data: bytes) -> bytes:
        if fn == 0x04:
            return self._read(data, self.input_registers(), 0x0000, fn)
        if fn == 0x03:
            holding = [0, self.alarm_threshold_w, self.address]
            return self._read(data, holding, 0x0001, fn)
        if fn == 0x06:
            return self._write(data, fn)
        if fn == 0x42:
            if data:
                return bytes([fn | 0x80, ILLEGAL_DATA])
            self.energy_wh = 0
            self._energy_frac_wh = 0.0
            return bytes([fn])
        return bytes([fn | 0x80, ILLEGAL_FUNCTION])

    @staticmethod
    def _read(data: bytes, regs: list[int], first: int, fn: int) -> bytes:
        if len(data) != 4:
            return bytes([fn | 0x80, ILLEGAL_DATA])
        start, count = struct.unpack(">HH", data)
        if count < 1 or start < first or start + count > len(regs):
            return bytes([fn | 0x80, ILLEGAL_ADDRESS])
        values = regs[start : start + count]
        return bytes([fn, 2 * count]) + struct.pack(f">{count}H", *values)

    def _write(self, data: bytes, fn: int) -> bytes:
        if len(data) != 4:
            return bytes([fn | 0x80, ILLEGAL_DATA])
        reg, value = struct.unpack(">HH", data)
        if reg == 0x0001:
            self.alarm_threshold_w = value
        elif reg == 0x0002:
            if not 0x01 <= value <= 0xF7:
                return bytes([fn | 0x80, ILLEGAL_DATA])
            self.address = value
        else:
            return bytes([fn | 0x80, ILLEGAL_ADDRESS])
        return bytes([fn]) + data  # a successful write is echoed
