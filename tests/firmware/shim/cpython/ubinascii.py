"""CPython alias of MicroPython's ubinascii (tests only)."""

from binascii import *  # noqa: F403
