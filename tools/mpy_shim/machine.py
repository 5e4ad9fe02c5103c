"""Virtual-board ``machine`` module: UART, SPI, Pin and WDT backed by device emulators.

Never deployed to a board. On the MicroPython unix port (and under CPython in tests) this
file stands first on the module path instead of the built-in ``machine``, which has no
UART, SPI, Pin or WDT. It connects to a tools.vboard.VirtualBoard over the unix
socket named by GRIDEDGE_VBOARD and speaks its line protocol. Only queries wait for an
answer; writes and pin changes are pipelined, so an ADE7953 register read costs one round
trip. Bus names follow the ids the firmware passes: UART(2) is "uart2", SPI(1) "spi1",
Pin(5) "pin5" (or the pin's name when given as a string).

Only what the firmware calls is here (its heap is part of every heap figure the tests
measure, and a board has ``machine`` built in, at no heap cost): UART write/any/read,
SPI write/readinto, Pin value, WDT feed, unique_id and reset.
"""

import os
import sys

_IS_MPY = sys.implementation.name == "micropython"
_PIECE = 64  # bytes per UART write message
_link = None


class _Link:
    def __init__(self, path):
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if _IS_MPY:
            import struct

            # MicroPython's unix socket wants a raw struct sockaddr_un.
            self.sock.connect(struct.pack("H", socket.AF_UNIX) + path.encode() + b"\x00")
        else:
            self.sock.connect(path)
        self.buf = b""

    def send(self, line):
        data = line.encode() + b"\n"
        while data:
            n = self.sock.send(data)
            data = data[n:]

    def query(self, line):
        # Small receives: most answers are a few bytes, and the shim's allocations should
        # not dominate the firmware's heap figures. (MicroPython's readinto on a blocking
        # socket waits for the whole buffer, so it is no help here.)
        self.send(line)
        buf = self.buf
        while not buf.endswith(b"\n"):
            chunk = self.sock.recv(64)
            if not chunk:
                raise OSError(5, "virtual board closed the link")
            buf += chunk
        self.buf = b""
        return buf[:-1].decode()


def _board():
    global _link
    if _link is None:
        path = os.getenv("GRIDEDGE_VBOARD")
        if not path:
            raise OSError(19, "GRIDEDGE_VBOARD is not set: no virtual board to talk to")
        _link = _Link(path)
    return _link


def _hex(buf):
    import binascii

    return str(binascii.hexlify(buf), "ascii")


def _unhex(text):
    import binascii

    return binascii.unhexlify(text)


class UART:
    def __init__(self, id, baudrate=9600, **kw):
        self.name = "uart%s" % id
        _board().send("U %s I %d" % (self.name, baudrate))

    def write(self, buf):
        # In pieces: a board's UART.write copies nothing, so the shim's hex text for a
        # whole frame (several copies of twice its size) must not set the firmware's
        # heap figures. The virtual board joins the pieces.
        view = memoryview(buf)
        for i in range(0, len(buf), _PIECE):
            _board().send("U %s W %s" % (self.name, _hex(view[i : i + _PIECE])))
        return len(buf)

    def any(self):
        return int(_board().query("U %s A" % self.name))

    def read(self, nbytes=4096):
        data = _unhex(_board().query("U %s R %d" % (self.name, nbytes)))
        return data if data else None



class SPI:
    def __init__(self, id, baudrate=1000000, polarity=0, phase=0, **kw):
        self.name = "spi%s" % id

    def write(self, buf):
        _board().send("S %s W %s" % (self.name, _hex(buf)))

    def readinto(self, buf, write=0x00):
        buf[:] = _unhex(_board().query("S %s X %s" % (self.name, _hex(bytes([write]) * len(buf)))))


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.name = id if isinstance(id, str) else "pin%d" % id
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return int(_board().query("P %s G" % self.name))
        _board().send("P %s V %d" % (self.name, 1 if v else 0))
        return None


class WDT:
    def __init__(self, id=0, timeout=5000):
        _board().send("W I %d" % timeout)

    def feed(self):
        _board().send("W F")


def unique_id():
    return b"\x00\x11\x22\x33\x44\x55"


def reset():
    # A real board restarts; the virtual one exits, and the simulator starts it again.
    sys.exit(75)
