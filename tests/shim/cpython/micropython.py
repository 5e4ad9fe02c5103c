"""CPython stand-in for MicroPython's built-in ``micropython`` module (tests only).

Only what the firmware uses: ``const`` (a compile-time constant on MicroPython, the identity
here) and no-op memory helpers. Never deployed to a board.
"""


def const(value):
    return value


def mem_info(*_args):
    return None
