"""The virtual board's serial bridge: a paced pty passes bytes at the UART's baud rate each
way, as a real line does (make bench measures the serial link at 115200 baud with it)."""

from __future__ import annotations

import contextlib
import os
import time

from tools.vboard import VirtualBoard

LINE_S = 1152 * 10 / 115_200  # 1152 bytes, 8N1: 100 ms on the line


def test_a_paced_bridge_takes_the_lines_time_each_way(vboard: VirtualBoard) -> None:
    uart = vboard.uart("uart1")
    uart.baud = 115_200  # as the firmware's UART init sets it
    tty = vboard.bridge_pty("uart1", paced=True)
    gateway = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        # Down: the gateway writes at once; the board reads it as the line delivers it.
        os.write(gateway, bytes(range(256)) * 4 + bytes(128))
        t0 = time.monotonic()
        early = uart.readable()
        assert time.monotonic() - t0 < LINE_S / 2 and early < 1152 // 2, early
        time.sleep(LINE_S * 3)
        assert uart.read(2000) == bytes(range(256)) * 4 + bytes(128)
        # Up: the board writes a frame; the gateway's end sees it only as it crosses.
        with uart.lock:
            uart.write(bytes(1152))
        t0 = time.monotonic()
        got = b""
        while time.monotonic() - t0 < LINE_S / 2:
            try:
                got += os.read(gateway, 4096)
            except BlockingIOError:
                time.sleep(0.005)
        assert len(got) < 1152 * 3 // 4, len(got)
        time.sleep(LINE_S * 3)
        with contextlib.suppress(BlockingIOError):
            got += os.read(gateway, 4096)
        assert got == bytes(1152)
    finally:
        os.close(gateway)


def test_an_unpaced_bridge_passes_bytes_at_once(vboard: VirtualBoard) -> None:
    uart = vboard.uart("uart1")
    uart.baud = 115_200
    tty = vboard.bridge_pty("uart1")
    gateway = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(gateway, bytes(1152))
        time.sleep(0.01)  # the pty itself
        assert uart.readable() == 1152
    finally:
        os.close(gateway)
