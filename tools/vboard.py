"""The virtual board: serves emulated UART, SPI, Pin and WDT hardware to firmware processes.

Firmware running under the MicroPython unix port (or CPython, in tests) imports the
``machine`` module from tools/mpy_shim/, which connects to a ``VirtualBoard`` over a unix
socket named by the GRIDEDGE_VBOARD environment variable. The board routes bus traffic to
device emulators (tools.emulators) attached to it, in the same process as the
test or simulator that drives the emulators' physical inputs and faults.

Wire protocol (one ASCII line per command; only queries are answered, one line each):

    U <bus> I <baud>        UART init                   S <bus> W <hex>    SPI write
    U <bus> W <hex>         UART write (one frame)      S <bus> X <hex>    SPI full-duplex -> <hex>
    U <bus> A               bytes readable -> <n>       P <pin> V <0|1>    drive a pin
    U <bus> R <n>           read up to n -> <hex>       P <pin> G          read a pin -> <0|1>
    W I <ms> / W F          watchdog init / feed        H                  ping -> OK
    X <hook> <args...>      call a hook the test or simulator registered -> its answer

UART timing: a reply becomes readable after the device's latency plus its transmission
time at the bus's baud rate, both multiplied by ``time_scale`` (1.0 = real time, 0 =
instantly, for fast tests). A device's "late" reply is released at its real delay when
time runs, and at the next write on the bus when it does not (it then sits in front of the
next reply, as a late reply does on a real line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tools.emulators import Reply

log = logging.getLogger(__name__)


class UARTDevice(Protocol):
    def handle(self, request: bytes) -> Reply | None: ...


class SPIDevice(Protocol):
    def select(self) -> None: ...

    def deselect(self) -> None: ...

    def transfer(self, data: bytes) -> bytes: ...


class UARTBus:
    def __init__(self, name: str, clock: Callable[[], float], time_scale: float) -> None:
        self.name = name
        self.baud = 9600
        self.devices: list[UARTDevice] = []
        self.written: list[bytes] = []  # every frame the firmware wrote (for tests)
        self._clock = clock
        self._scale = time_scale
        self._rx: deque[tuple[float, bytes]] = deque()
        self._held: list[bytes] = []  # late replies waiting for the next write
        self.lock = threading.Lock()
        self.pty_fd: int | None = None  # bridged to a real pty: writes go out there
        self.pty_dropped = 0
        # A paced bridge (bridge_pty(paced=True)): bytes cross it at the bus's baud rate,
        # each way, as on a real line; the pty itself has no line time.
        self.paced = False
        self._line_free = [0.0, 0.0]  # when the line is next free: down (to the board), up
        self._up: deque[tuple[float, bytes]] = deque()  # paced bytes on their way up

    def _byte_time(self) -> float:
        return 10 / self.baud  # 8N1: ten bit times per byte

    def write(self, data: bytes) -> None:
        now = self._clock()
        self.written.append(data)
        if self.pty_fd is not None and self.paced:
            self._up.extend(self._on_line(1, now, data))  # the bridge's pacer writes them
        elif self.pty_fd is not None:
            try:  # a line nobody reads loses bytes; it never stalls the sender
                os.write(self.pty_fd, data)
            except BlockingIOError:
                self.pty_dropped += len(data)
        for held in self._held:
            self._rx.append((now, held))
        self._held.clear()
        sent = now + len(data) * self._byte_time() * self._scale
        for dev in self.devices:
            reply = dev.handle(data)
            if reply is None:
                continue
            if reply.late:
                if self._scale == 0:
                    self._held.append(reply.data)
                    continue
                ready = sent + reply.delay_s
            else:
                ready = sent + (reply.delay_s + len(reply.data) * self._byte_time()) * self._scale
            self._rx.append((ready, reply.data))

    def inject(self, data: bytes) -> None:
        """Put bytes on the line now (noise, a device babbling)."""
        self._rx.append((self._clock(), data))

    def _pull(self) -> None:
        """What the gateway wrote to the bridged pty (commands down the serial link)."""
        if self.pty_fd is None:
            return
        try:
            data = os.read(self.pty_fd, 4096)
        except (BlockingIOError, OSError):  # nothing there; EIO: nobody has the pty open
            return
        if data and self.paced:
            self._rx.extend(self._on_line(0, self._clock(), data))
        elif data:
            self._rx.append((self._clock(), data))

    def _on_line(self, way: int, now: float, data: bytes) -> list[tuple[float, bytes]]:
        """``data`` in pieces of 16 bytes, each with the time its last byte has crossed
        the line at the bus's baud rate, after what is already on the line that way."""
        t = max(now, self._line_free[way])
        out = []
        for i in range(0, len(data), 16):
            piece = data[i:i + 16]
            t += len(piece) * self._byte_time()
            out.append((t, piece))
        self._line_free[way] = t
        return out

    def pace_up(self) -> None:
        """Write to the pty what has crossed the line so far (the bridge's pacer)."""
        now = self._clock()
        while self._up and self._up[0][0] <= now and self.pty_fd is not None:
            _t, data = self._up.popleft()
            try:
                os.write(self.pty_fd, data)
            except BlockingIOError:
                self.pty_dropped += len(data)

    def readable(self) -> int:
        self._pull()
        now = self._clock()
        return sum(len(d) for t, d in self._rx if t <= now)

    def read(self, n: int) -> bytes:
        self._pull()
        now = self._clock()
        out = bytearray()
        while self._rx and self._rx[0][0] <= now and len(out) < n:
            t, d = self._rx.popleft()
            take = d[: n - len(out)]
            out += take
            if len(take) < len(d):
                self._rx.appendleft((t, d[len(take) :]))
        return bytes(out)


class SPIBus:
    def __init__(self, name: str) -> None:
        self.name = name
        self.devices: dict[str, SPIDevice] = {}  # chip-select pin name -> device
        self.selected: set[str] = set()

    def transfer(self, data: bytes) -> bytes:
        if len(self.selected) != 1:
            return bytes(len(data))  # nobody drives MISO: it reads as zeros
        (cs,) = self.selected
        return self.devices[cs].transfer(data)


class VirtualBoard:
    """A board of emulated buses, served on a unix socket; see the module docstring."""

    def __init__(self, socket_path: str | os.PathLike[str], time_scale: float = 0.0) -> None:
        self.path = str(socket_path)
        self.time_scale = time_scale
        self.uarts: dict[str, UARTBus] = {}
        self.spis: dict[str, SPIBus] = {}
        self.pins: dict[str, int] = {}
        self.pin_hooks: dict[str, Callable[[int], None]] = {}
        self.hooks: dict[str, Callable[[list[str]], str]] = {}
        self.wdt_timeout_ms: int | None = None
        self.wdt_feeds = 0
        self.errors: list[str] = []
        self.connections = 0
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ptys: list[tuple[int, int]] = []

    # -- wiring ---------------------------------------------------------------
    def uart(self, name: str) -> UARTBus:
        if name not in self.uarts:
            self.uarts[name] = UARTBus(name, time.monotonic, self.time_scale)
        return self.uarts[name]

    def attach_uart(self, bus: str, device: UARTDevice) -> None:
        self.uart(bus).devices.append(device)

    def attach_spi(self, bus: str, cs_pin: str, device: SPIDevice) -> None:
        self.spis.setdefault(bus, SPIBus(bus)).devices[cs_pin] = device
        self.pins.setdefault(cs_pin, 1)

    def on_pin(self, pin: str, hook: Callable[[int], None]) -> None:
        self.pin_hooks[pin] = hook

    def bridge_pty(self, bus: str, paced: bool = False) -> str:
        """Connect a UART to a new pseudo-terminal, as a USB-serial adapter would connect it
        to the gateway, both ways; returns the terminal's path (open it with pyserial).
        ``paced``: bytes cross at the bus's baud rate (the board's UART init sets it), as
        on a real line; otherwise at once."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        uart = self.uart(bus)
        uart.pty_fd, uart.paced = master, paced
        self._ptys.append((master, slave))
        if paced:
            t = threading.Thread(target=self._pacer, args=(uart,), name="vboard-pacer",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return os.ttyname(slave)

    def _pacer(self, uart: UARTBus) -> None:
        while not self._stop.wait(0.002):
            with uart.lock:
                uart.pace_up()

    # -- serving --------------------------------------------------------------
    def start(self) -> VirtualBoard:
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        srv.listen(8)
        srv.settimeout(0.2)
        self._server = srv
        t = threading.Thread(target=self._accept_loop, name="vboard-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        if self._server is not None:
            self._server.close()
        for fds in self._ptys:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        return {"GRIDEDGE_VBOARD": self.path}

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                out = []
                for line in lines:
                    try:
                        answer = self.command(line.decode("ascii").split())
                    except (ValueError, KeyError, IndexError) as e:
                        self.errors.append(f"{line!r}: {e!r}")
                        log.error("virtual board: bad command %r: %r", line, e)
                        return  # the firmware sees the link drop at its next query
                    if answer is not None:
                        out.append(answer)
                if out:
                    try:
                        conn.sendall(("\n".join(out) + "\n").encode("ascii"))
                    except OSError:  # the firmware process died mid-request (power cut)
                        return

    def command(self, words: list[str]) -> str | None:
        """Execute one protocol line; returns the answer line for queries."""
        kind = words[0]
        if kind == "U":
            bus = self.uarts[words[1]]
            op = words[2]
            with bus.lock:
                if op == "I":
                    bus.baud = int(words[3])
                    return None
                if op == "W":
                    bus.write(bytes.fromhex(words[3]))
                    return None
                if op == "A":
                    return str(bus.readable())
                if op == "R":
                    return bus.read(int(words[3])).hex()
        elif kind == "S":
            spi = self.spis[words[1]]
            data = bytes.fromhex(words[3])
            if words[2] == "W":
                spi.transfer(data)
                return None
            if words[2] == "X":
                return spi.transfer(data).hex()
        elif kind == "P":
            return self._pin(words)
        elif kind == "W":
            if words[1] == "I":
                self.wdt_timeout_ms = int(words[2])
            else:
                self.wdt_feeds += 1
            return None
        elif kind == "H":
            return "OK"
        elif kind == "X":
            return self.hooks[words[1]](words[2:])
        raise ValueError(f"unknown command {' '.join(words)!r}")

    def _pin(self, words: list[str]) -> str | None:
        name = words[1]
        if words[2] == "G":
            return str(self.pins.get(name, 0))
        value = int(words[3])
        old = self.pins.get(name)
        self.pins[name] = value
        for spi in self.spis.values():
            dev = spi.devices.get(name)
            if dev is None or old == value:
                continue
            if value == 0:
                spi.selected.add(name)
                dev.select()
            else:
                spi.selected.discard(name)
                dev.deselect()
        if name in self.pin_hooks and old != value:
            self.pin_hooks[name](value)
        return None
