"""CPython stand-in for MicroPython's built-in ``micropython`` module (tests only).

Provides ``const`` (a compile-time constant on MicroPython, the identity here) and, because
firmware imports this module before it touches the clock, adds MicroPython's tick API to
CPython's ``time`` module: ticks_ms/us (wrapping like a board's 30-bit ticks), ticks_diff,
ticks_add, sleep_ms/us; and gc.mem_alloc/mem_free, which report 0 here (heap figures are
only measured under MicroPython), and gc.threshold, which only keeps its value. Never deployed to a board.
"""

import gc as _gc
import time as _time

_PERIOD = 1 << 30  # boards wrap ticks at 2**30; the firmware must cope (ticks_diff)
_HALF = _PERIOD // 2


def const(value):
    return value


def mem_info(*_args):
    return None


def _ticks_ms():
    return int(_time.monotonic() * 1000) % _PERIOD


def _ticks_us():
    return int(_time.monotonic() * 1_000_000) % _PERIOD


def _ticks_diff(a, b):
    return ((a - b + _HALF) % _PERIOD) - _HALF


def _ticks_add(t, delta):
    return (t + delta) % _PERIOD


for _name, _fn in (
    ("ticks_ms", _ticks_ms),
    ("ticks_us", _ticks_us),
    ("ticks_diff", _ticks_diff),
    ("ticks_add", _ticks_add),
    ("sleep_ms", lambda ms: _time.sleep(ms / 1000)),
    ("sleep_us", lambda us: _time.sleep(us / 1_000_000)),
):
    if not hasattr(_time, _name):
        setattr(_time, _name, _fn)

for _name in ("mem_alloc", "mem_free"):
    if not hasattr(_gc, _name):
        setattr(_gc, _name, lambda: 0)


_threshold = [-1]


def _gc_threshold(amount=None):
    # MicroPython's gc.threshold(): the value (-1 = off) without an argument, else sets it.
    if amount is None:
        return _threshold[0]
    _threshold[0] = amount
    return None


if not hasattr(_gc, "threshold"):
    _gc.threshold = _gc_threshold
