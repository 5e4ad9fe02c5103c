"""PZEM-004T v3.0 driver: Modbus-RTU client on an already-built ``machine.UART`` (9600 8N1).

Register map (PZEM-004T v3 manual; ../shared/reference/pzem004t-v3.md): input registers
0x0000-0x0009 read with function 0x04 - voltage 0.1 V, current 0.001 A and power 0.1 W and
energy 1 Wh as 32-bit values *low word first*, frequency 0.1 Hz, power factor 0.01, alarm
0xFFFF/0x0000; holding registers 0x0001 (power alarm threshold, W) and 0x0002 (slave
address) via 0x03/0x06; energy reset is the vendor function 0x42. CRC-16/MODBUS, low byte
first. Several modules share one UART when each has its own address.

Why not micropython-modbus (umodbus): its RTU master builds its own machine.UART from pin
numbers (this driver must take the board's UART), it has no function for the 0x42 reset,
and importing ``umodbus.serial`` costs 40.7 KB of heap against 10.2 KB for this module
(gc.mem_alloc after import, unix port, 64-bit; a 32-bit board needs roughly half of each).

Robustness: stale bytes are drained before every request; a reply is searched for in what
arrives (garbage in front of it is skipped, "desync"), CRC-checked, and matched against the
address and function asked. Timeouts, CRC errors, exception replies and desyncs raise
``DriverError`` and are counted; nothing from an earlier reply is ever returned again.

A module that stops answering (field units do, after days of running, and come back on
their own or after a supply glitch) must neither stall the loop nor need a reboot. After
three requests in a row without a valid reply (timeout, CRC error or noise) the module
counts as silent (``outages``): further requests wait for a back-off of 1 s, doubling up to
30 s, and each call before then fails at once with kind "timeout" and no bus traffic
(``skipped``), so the channel reads invalid, never zero or stale. The request that ends the
back-off drains the line first, and takes the first valid reply (any late reply to the
last request came long before). The first valid reply after silence counts in
``recoveries`` and ends the back-off.

What only an installer does (scan a bus, set an address or the power alarm, reset the
energy register) is in pzem004t_setup.py, a subclass the console loads: a meter's loop
reads and never writes, so it never carries that code.
"""

import struct
import time

from micropython import const

from gemeter.drivers import (
    KIND_CRC,
    KIND_DESYNC,
    KIND_EXCEPTION,
    KIND_TIMEOUT,
    DriverError,
)

_FN_READ_INPUT = const(0x04)

_REG_VOLTAGE = const(0x0000)
_INPUT_REGISTERS = const(10)

_GENERAL_ADDRESS = const(0xF8)  # answered by any single module: only with one on the bus

_RX_SIZE = const(64)
_DRAIN_READS = const(8)  # reads of stale bytes before a request: a babbling line cannot hold it
_SILENT_AFTER = const(3)  # requests in a row without a valid reply: the module is silent


def crc16(data, n=None):
    """CRC-16/MODBUS over data[:n] (init 0xFFFF, reflected polynomial 0xA001)."""
    crc = 0xFFFF
    for i in range(len(data) if n is None else n):
        crc ^= data[i]
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def request(address, function, payload=b""):
    """A complete request frame with its CRC (low byte first)."""
    frame = bytes([address, function]) + payload
    return frame + struct.pack("<H", crc16(frame))


def _word(data, i):
    # Input register i of a read reply (function 0x04: the words start at byte 3), big-endian.
    return (data[3 + 2 * i] << 8) | data[4 + 2 * i]


def _u32(data, i):
    # A 32-bit value from registers i, i+1: low word first (manual, input registers).
    return _word(data, i) | (_word(data, i + 1) << 16)


class Reading:
    """One measurement, as scaled integers (exact) with SI-unit properties for people.
    A driver keeps one and fills it at each read, in place (drivers/__init__.py)."""

    reactive_mvar = None  # not measured by this IC (see drivers/__init__.py)
    apparent_mva = None

    def __init__(self):
        self.voltage_mv = self.current_ma = self.power_mw = self.energy_wh = 0
        self.frequency_mhz = self.pf_milli = 0
        self.alarm = False

    def fill(self, data):
        """From a validated read reply (input registers 0x0000-0x0009, manual's scaling)."""
        self.voltage_mv = _word(data, 0) * 100  # 0.1 V
        self.current_ma = _u32(data, 1)  # 0.001 A
        self.power_mw = _u32(data, 3) * 100  # 0.1 W
        self.energy_wh = _u32(data, 5)  # 1 Wh
        self.frequency_mhz = _word(data, 7) * 100  # 0.1 Hz
        self.pf_milli = _word(data, 8) * 10  # 0.01
        self.alarm = _word(data, 9) == 0xFFFF
        return self

    voltage = property(lambda self: self.voltage_mv / 1000)
    current = property(lambda self: self.current_ma / 1000)
    power = property(lambda self: self.power_mw / 1000)
    energy = property(lambda self: self.energy_wh)
    frequency = property(lambda self: self.frequency_mhz / 1000)
    power_factor = property(lambda self: self.pf_milli / 1000)


class PZEM004T:
    """One PZEM-004T v3 module at ``address`` on ``uart``."""

    def __init__(self, uart, address=0x01, timeout_ms=200, gap_ms=5, backoff_ms=1000,
                 backoff_max_ms=30000):
        if not 0x01 <= address <= 0xF7 and address != _GENERAL_ADDRESS:
            raise ValueError("PZEM address must be 0x01..0xF7 (or 0xF8 alone on the bus)")
        self.uart = uart
        self.address = address
        self.timeout_ms = timeout_ms
        self.gap_ms = gap_ms  # bus quiet time between requests: Modbus RTU wants 3.5 chars (4 ms)
        self._rx = bytearray(_RX_SIZE)
        self._reading = Reading()  # filled at each read: no allocation per sample
        self._read_request = None  # (address, the read request's bytes): made once
        self._last = time.ticks_ms()
        self.errors = {KIND_TIMEOUT: 0, KIND_CRC: 0, KIND_EXCEPTION: 0, KIND_DESYNC: 0}
        self.stale_bytes = 0
        self._after_timeout = False
        self.backoff_ms = backoff_ms  # first wait once silent; doubles up to backoff_max_ms
        self.backoff_max_ms = backoff_max_ms
        self.outages = 0  # times the module fell silent
        self.recoveries = 0  # times it answered again after that
        self.skipped = 0  # calls refused without bus traffic while backing off
        self._misses = 0  # requests in a row without a valid reply
        self._wait_ms = 0  # current back-off
        self._retry_at = 0  # ticks_ms of the next request allowed while silent

    @property
    def silent(self):
        return self._misses >= _SILENT_AFTER

    # -- public API -----------------------------------------------------------
    def read(self):
        """All measurements; raises DriverError. Never returns an earlier reading: the
        Reading returned is the driver's own, valid until its next read."""
        req = self._read_request
        if req is None or req[0] != self.address:  # the console may give a new address
            req = self._read_request = (self.address, request(
                self.address, _FN_READ_INPUT, struct.pack(">HH", _REG_VOLTAGE,
                                                          _INPUT_REGISTERS)))
        data = self._transact(_FN_READ_INPUT, None, 3 + 2 * _INPUT_REGISTERS + 2, req[1])
        if data[2] != 2 * _INPUT_REGISTERS:
            raise self._fail(KIND_DESYNC, "reply holds %d bytes, expected 20" % data[2])
        return self._reading.fill(data)

    # -- bus traffic ----------------------------------------------------------
    def _fail(self, kind, message):
        self.errors[kind] += 1
        return DriverError(kind, "PZEM 0x%02X: %s" % (self.address, message))

    def _transact(self, function, payload, reply_len, frame=None):
        """One request and its validated reply (a memoryview of _rx), with the silence
        bookkeeping of the module docstring. frame: the request's bytes, when made
        beforehand (the read's, made once per address)."""
        if self._misses >= _SILENT_AFTER:
            wait = time.ticks_diff(self._retry_at, time.ticks_ms())
            if wait > 0:
                self.skipped += 1
                raise DriverError(KIND_TIMEOUT, "PZEM 0x%02X: silent, next try in %d ms" % (
                    self.address, wait))
            self._after_timeout = False  # a late reply to the last request is long drained
        try:
            data = self._exchange(function, payload, reply_len, frame)
        except DriverError as e:
            if e.kind == KIND_EXCEPTION:  # an error reply is still an answer
                self._answered()
            else:
                self._missed()
            raise
        self._answered()
        return data

    def _answered(self):
        if self._misses >= _SILENT_AFTER:
            self.recoveries += 1
        self._misses = 0
        self._wait_ms = 0

    def _missed(self):
        self._misses += 1
        if self._misses < _SILENT_AFTER:
            return
        if self._misses == _SILENT_AFTER:
            self.outages += 1
        w = self._wait_ms
        self._wait_ms = self.backoff_ms if w == 0 else min(2 * w, self.backoff_max_ms)
        self._retry_at = time.ticks_add(time.ticks_ms(), self._wait_ms)

    def _exchange(self, function, payload, reply_len, frame=None):
        """Send one request and return the validated reply as a memoryview of _rx."""
        uart = self.uart
        wait = self.gap_ms - time.ticks_diff(time.ticks_ms(), self._last)
        if wait > 0:
            time.sleep_ms(wait)
        for _ in range(_DRAIN_READS):  # stale bytes from a late reply or line noise
            if not uart.any():
                break
            junk = uart.read()
            self.stale_bytes += len(junk) if junk else 0
        uart.write(frame or request(self.address, function, payload))
        # Modbus RTU has no transaction id: after a timeout, the late reply to that request
        # may arrive just after this one was sent. Then the reply is the *last* valid frame.
        want = 2 if self._after_timeout else 1
        rx = self._rx
        n = 0
        frames = 0
        found = None
        start = time.ticks_ms()
        try:
            while True:
                k = uart.any()
                if k and n < _RX_SIZE:
                    chunk = uart.read(min(k, _RX_SIZE - n))
                    if chunk:
                        rx[n : n + len(chunk)] = chunk
                        n += len(chunk)
                    while True:  # every complete frame in what has arrived so far
                        at = 0 if found is None else found[0] + found[1]
                        nxt = self._find_reply(function, reply_len, n, at)
                        if nxt is None:
                            break
                        found = nxt
                        frames += 1
                        if frames >= want:
                            return self._accept(found)
                    if n == _RX_SIZE and found is None:
                        raise self._fail(KIND_DESYNC, "no valid reply in %d bytes" % n)
                elif time.ticks_diff(time.ticks_ms(), start) > self.timeout_ms:
                    if found is not None:  # no second frame: the first one was the reply
                        return self._accept(found)
                    self._after_timeout = True
                    raise self._timeout(function, reply_len, n)
                else:
                    time.sleep_ms(1)
        finally:
            self._last = time.ticks_ms()

    def _accept(self, found):
        self._after_timeout = False
        i, length = found
        mv = memoryview(self._rx)[i : i + length]
        if i:
            self.errors[KIND_DESYNC] += 1  # counted, but the reply is good
        if mv[1] & 0x80:
            raise self._fail(KIND_EXCEPTION, "exception code %d" % mv[2])
        return mv

    def _find_reply(self, function, reply_len, n, at):
        # (offset, length) of the first frame from `at` with our address, the function asked
        # (or function | 0x80) and a valid CRC; bytes before it are noise or a late reply.
        rx = self._rx
        addr = self.address
        for i in range(at, n - 3):  # the shortest reply (0x42 echo) is 4 bytes
            if rx[i] != addr or rx[i + 1] not in (function, function | 0x80):
                continue
            length = 5 if rx[i + 1] & 0x80 else reply_len
            if i + length > n:
                continue
            crc = rx[i + length - 2] | (rx[i + length - 1] << 8)  # low byte first
            if crc16(memoryview(rx)[i:], length - 2) == crc:
                return (i, length)
        return None

    def _timeout(self, function, reply_len, n):
        if n == 0:
            return self._fail(KIND_TIMEOUT, "no reply within %d ms" % self.timeout_ms)
        rx = self._rx
        for i in range(n):  # a reply header was there: its CRC did not match
            if rx[i] == self.address and i + 1 < n and rx[i + 1] in (function, function | 0x80):
                if n - i >= reply_len or (rx[i + 1] & 0x80 and n - i >= 5):
                    return self._fail(KIND_CRC, "CRC error in reply")
                return self._fail(KIND_TIMEOUT, "short reply (%d bytes)" % (n - i))
        return self._fail(KIND_DESYNC, "%d bytes, none a reply" % n)
